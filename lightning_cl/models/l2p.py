"""L2P's model (Wang et al., 2022): a pool of learnable prompts on a frozen timm vision transformer.

``timm`` is an optional dependency (``pip install "lightning-cl[vit]"``), imported only when a
:class:`PromptedViT` is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cl.models.heads import DynamicModule, IncrementalClassifier

__all__ = [
    "PROMPT_INITS",
    "PromptPool",
    "PromptSelection",
    "PromptedViT",
    "key_matching_loss",
]

PROMPT_INITS = ("uniform", "zero")
"""How prompts and keys start: ``"uniform"`` in [-1, 1] (the PyTorch reproduction's and
Avalanche's), or ``"zero"``."""

_VIT_PARTS = ("patch_embed", "_pos_embed", "blocks", "norm", "forward_features", "forward_head")


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'PromptedViT builds its vision transformer with timm: pip install "lightning-cl[vit]" '
            '(or pip install "timm>=0.9")'
        ) from err
    return timm


def _vit_from_file(timm: Any, model_name: str, path: str | os.PathLike[str], options: dict[str, Any]) -> Any:
    """``model_name`` built with ``options``, its weights read from the local file ``path``.

    timm's own route for local weights: the file's state dict handed over as the model's
    pretrained configuration (``pretrained_cfg_overlay``), so timm's checkpoint filter of the
    architecture applies (a ViT's position embeddings resampled to another ``img_size``, its
    patch embedding to another ``patch_size``; a 3-channel stem adapted to ``in_chans``). The
    file's classifier (timm's ``head``) is dropped, as the prompted model has its own; every
    other weight of the transformer must be in the file, with its shape (a strict load).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"pretrained_file {str(file)!r} is not a file: give the path of a saved state dict of "
            f"{model_name!r} (torch.save(model.state_dict(), path), or a .safetensors file)"
        )
    try:
        state = dict(timm.models.load_state_dict(str(file)))
    except Exception as err:  # torch.load / safetensors raise many kinds
        raise ValueError(
            f"pretrained_file {str(file)!r} could not be read as a state dict ({type(err).__name__}: {err})"
        ) from err
    cfg = timm.models.get_pretrained_cfg(model_name)
    classifier = (cfg.classifier if cfg is not None else None) or "head"
    for name in (classifier,) if isinstance(classifier, str) else classifier:
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    overlay: dict[str, Any] = dict(state_dict=state, num_classes=0)
    stem = state.get("patch_embed.proj.weight")
    if isinstance(stem, Tensor) and stem.ndim == 4 and cfg is not None and cfg.input_size:
        overlay["input_size"] = (int(stem.shape[1]), *cfg.input_size[1:])  # the file's channels
    try:
        return timm.create_model(
            model_name,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            pretrained_strict=True,
            num_classes=0,
            **options,
        )
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        shown = "; ".join(line[:300] for line in lines[:3]) + ("; ..." if len(lines) > 3 else "")
        raise ValueError(
            f"pretrained_file {str(file)!r} does not fit {model_name!r} built with {options}: "
            f"{shown or err} (give the architecture the weights were saved from: embed_dim, depth, "
            f"num_heads, ...)"
        ) from err


@dataclass(frozen=True)
class PromptSelection:
    """What a :class:`PromptPool` chose for one batch.

    Attributes:
        indices: ``(B, N)`` the pool rows selected for each sample (long).
        query: ``(B, D)`` the L2-normalised queries (no gradient: the query model is frozen).
        keys: ``(M, D)`` the L2-normalised keys of the whole pool (part of the graph).
        similarity: ``(B, M)`` cosine similarity of every query with every key.
    """

    indices: Tensor
    query: Tensor
    keys: Tensor
    similarity: Tensor


def key_matching_loss(selection: PromptSelection) -> Tensor:
    r"""L2P's surrogate loss pulling the selected keys towards their queries (Wang et al., 2022, Eq. 5).

    .. math::
        \frac1B \sum_{b=1}^{B} \sum_{i \in K_{x_b}} \gamma(q(x_b), k_i),
        \qquad \gamma(q, k) = 1 - \cos(q, k)

    with :math:`K_x` the :math:`N` keys chosen for :math:`x`: a sum over the selected keys, a mean
    over the batch, as in the authors' code (which subtracts the summed cosine instead: the
    same gradients). Gradients reach the keys only; the query comes from the frozen model.

    Args:
        selection: the pool's choice for the batch.

    Returns:
        A float32 scalar.

    Example:
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> sel = PromptSelection(torch.tensor([[0, 1]]), q, keys, q @ keys.T)
        >>> float(key_matching_loss(sel))  # (1 - 1) + (1 - 0)
        1.0
    """
    chosen = selection.keys.float()[selection.indices]  # (B, N, D)
    cosine = (chosen * selection.query.float()[:, None, :]).sum(-1)  # (B, N)
    return (1.0 - cosine).sum(1).mean()


class PromptPool(nn.Module):
    r"""A pool of :math:`M` prompts of :math:`L_p` tokens, each with a learnable key (L2P, Sec. 4.1-4.2).

    For a query :math:`q(x)` (the frozen model's [CLS] feature) the pool picks the :math:`N`
    keys of largest cosine similarity (Eq. 3: :math:`K_x = \operatorname{argmin}_{\{s_i\}}
    \sum_i \gamma(q(x), k_{s_i})`, :math:`\gamma = 1 - \cos`); their prompts are prepended to the
    input's embedding (:meth:`PromptedViT.embed`).

    Two options of the paper and its code change the choice:

    - ``batchwise=True`` (the authors' code, ``batchwise_prompt``): every sample of a batch uses
      the :math:`N` prompts chosen most often over the batch (a majority vote; ties go to the
      lower index). Off by default, as in Avalanche: the choice then is per instance, and a
      test sample's prediction does not depend on the rest of its batch.
    - :attr:`frequency` (Sec. 4.2, Eq. 4, "diversifying prompt-selection"): in training mode,
      once it holds the normalised frequency :math:`h_i` of each prompt over the earlier
      experiences, the choice minimises :math:`\sum_i \gamma(q(x), k_{s_i}) \, h_{s_i}`, so prompts
      used less before are preferred; at evaluation the plain rule holds. It stays zero (no
      effect) unless :class:`~lightning_cl.methods.L2P` with ``diversify=True`` fills it.

    Args:
        embed_dim: :math:`D`, the transformer's token width.
        pool_size: :math:`M`.
        prompt_length: :math:`L_p`.
        top_n: :math:`N`, prompts per sample.
        init: ``"uniform"`` (in [-1, 1]) or ``"zero"``, for prompts and keys.
        batchwise: the batch-wise majority vote above.

    Raises:
        ValueError: for a non-positive size, ``top_n > pool_size`` or an unknown ``init``.

    Example:
        >>> pool = PromptPool(embed_dim=4, pool_size=3, prompt_length=2, top_n=2)
        >>> sel = pool(torch.randn(5, 4))
        >>> tuple(sel.indices.shape), tuple(pool.prompts_of(sel).shape)
        ((5, 2), (5, 4, 4))
    """

    frequency: Tensor

    def __init__(
        self,
        embed_dim: int,
        pool_size: int = 10,
        prompt_length: int = 5,
        top_n: int = 5,
        init: str = "uniform",
        batchwise: bool = False,
    ):
        super().__init__()
        for name, value in (
            ("embed_dim", embed_dim),
            ("pool_size", pool_size),
            ("prompt_length", prompt_length),
            ("top_n", top_n),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if top_n > pool_size:
            raise ValueError(f"top_n must be at most pool_size={pool_size}, got {top_n}")
        if init not in PROMPT_INITS:
            raise ValueError(f"init must be one of {PROMPT_INITS}, got {init!r}")
        self.pool_size, self.prompt_length, self.top_n = pool_size, prompt_length, top_n
        self.batchwise = bool(batchwise)
        self.prompts = nn.Parameter(torch.zeros(pool_size, prompt_length, embed_dim))
        self.keys = nn.Parameter(torch.zeros(pool_size, embed_dim))
        if init == "uniform":
            nn.init.uniform_(self.prompts, -1.0, 1.0)
            nn.init.uniform_(self.keys, -1.0, 1.0)
        self.register_buffer("frequency", torch.zeros(pool_size))

    @property
    def n_tokens(self) -> int:
        """Prompt tokens prepended to each sample: :math:`N L_p`."""
        return self.top_n * self.prompt_length

    def forward(self, query: Tensor) -> PromptSelection:
        """Choose :math:`N` prompts for each of the ``(B, D)`` queries."""
        query = F.normalize(query.detach().float(), dim=-1)
        keys = F.normalize(self.keys.float(), dim=-1)
        similarity = query @ keys.T  # (B, M)
        if self.training and bool(self.frequency.sum() > 0):
            # Eq. 4: the distance weighted by each prompt's frequency so far; the smallest win.
            score = -(1.0 - similarity) * self.frequency.to(similarity)
        else:
            score = similarity
        indices = score.detach().topk(self.top_n, dim=1).indices
        if self.batchwise:
            counts = torch.bincount(indices.flatten(), minlength=self.pool_size)
            # Most frequent first; a stable sort gives ties to the lower index.
            major = torch.sort(counts, descending=True, stable=True).indices[: self.top_n]
            indices = major.expand(len(query), -1)
        return PromptSelection(indices, query, keys, similarity)

    def prompts_of(self, selection: PromptSelection) -> Tensor:
        """The selected prompts, concatenated per sample: ``(B, N L_p, D)``."""
        chosen = self.prompts[selection.indices]  # (B, N, L_p, D)
        return chosen.flatten(1, 2)


class PromptedViT(DynamicModule):
    """A frozen timm vision transformer prompted from a :class:`PromptPool`, with a growing head (L2P).

    The model of Wang et al. (2022, Sec. 4): the query :math:`q(x)` is the frozen pretrained
    model's pre-logit feature of ``x`` without prompts (its [CLS] token after the last norm, for
    timm's default ``global_pool="token"``); the pool picks :math:`N` prompts by key matching;
    they are prepended to the embedded input (patch embeddings with position embeddings and the
    [CLS] token, as in the paper and the authors' code; Avalanche puts them after the [CLS] token
    with a copy of its position embedding, which, the blocks being equivariant to the order of
    tokens, differs only in that constant offset of the prompts); the same frozen transformer runs
    on the sequence, and the classifier (an :class:`~lightning_cl.models.IncrementalClassifier`,
    grown to the classes seen) reads the average of the prompt tokens' outputs (the paper's
    choice, Avalanche's ``head_type="prompt"``). Every weight of the transformer is frozen
    (``requires_grad=False``); the prompts, keys and head learn. The query model is the
    transformer itself (frozen, it is the pretrained model), so no second copy is kept; a step
    costs two forward passes.

    Train it with :class:`~lightning_cl.methods.L2P`, which adds the key-matching loss and masks
    the logits of classes outside the experience. At test no task label is used: each sample
    picks its prompts by its query.

    Args:
        model_name: a timm vision transformer (``timm.list_models("vit_*")``); the default is the
            paper's ViT-B/16 (Avalanche's default too).
        pretrained: load timm's pretrained weights (needs the network, or timm's cache); the paper
            uses an ImageNet-pretrained backbone. ``False`` keeps timm's random initialisation.
        pretrained_file: load the transformer's weights from this local file instead (a state
            dict saved with ``torch.save(model.state_dict(), path)``, a checkpoint holding one
            under ``"state_dict"`` or ``"model"``, or a ``.safetensors`` file), whatever
            ``pretrained`` says; no network is needed. timm loads it as pretrained weights
            (``pretrained_cfg_overlay``): its classifier is dropped, position embeddings are
            resampled to another ``img_size``; every other weight must be in the file with its
            shape.
        pool_size: :math:`M` (the paper: 10; Avalanche: 20).
        prompt_length: :math:`L_p` (the paper: 5).
        top_n: :math:`N`, prompts per sample (the paper: 5).
        prompt_init: ``"uniform"`` or ``"zero"`` (:data:`PROMPT_INITS`).
        batchwise_prompt: the batch-wise majority vote of :class:`PromptPool`.
        initial_out_features: initial width of the head.
        vit_kwargs: arguments of ``timm.create_model`` (``img_size``, ``patch_size``,
            ``in_chans``, ``embed_dim``, ``depth``, ``num_heads``, ``drop_rate``, ...), the way a
            YAML config gives them; ``**kwargs`` add to them.

    Raises:
        ImportError: without timm, naming ``pip install "lightning-cl[vit]"``.
        FileNotFoundError: for a ``pretrained_file`` that does not exist.
        ValueError: for a name timm does not know (``timm.is_model``), a timm model that is not a
            vision transformer with a token sequence, bad pool sizes, or a ``pretrained_file``
            that is not a state dict or does not fit the architecture (a missing weight or a wrong
            shape, named). At the first forward, for images whose channels or size are not the
            transformer's (``in_chans``, ``img_size``).

    Example:
        A small randomly initialised ViT for 8x8 grey images (where timm is installed):

        >>> import pytest
        >>> _ = pytest.importorskip("timm")
        >>> vit = PromptedViT("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4,
        ...                   in_chans=1, embed_dim=16, depth=1, num_heads=2, pool_size=4,
        ...                   prompt_length=2, top_n=2)
        >>> sequence, selection = vit.embed(torch.randn(3, 1, 8, 8))
        >>> tuple(sequence.shape)  # 2 prompts of 2 tokens, [CLS], 4 patches
        (3, 9, 16)
        >>> vit(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224",
        pretrained: bool = True,
        pretrained_file: str | os.PathLike[str] | None = None,
        pool_size: int = 10,
        prompt_length: int = 5,
        top_n: int = 5,
        prompt_init: str = "uniform",
        batchwise_prompt: bool = False,
        initial_out_features: int = 2,
        vit_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        timm = _timm()
        options = {**dict(vit_kwargs or {}), **kwargs}
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(
                f"model_name must name a timm vision transformer (timm.list_models('vit_*')), got "
                f"{model_name!r}, which timm does not know"
            )
        if pretrained_file is not None:
            backbone = _vit_from_file(timm, model_name, pretrained_file, options)
        else:
            backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **options)
        missing = [name for name in _VIT_PARTS if not hasattr(backbone, name)]
        if missing:
            raise ValueError(
                f"model_name must name a timm vision transformer (timm.list_models('vit_*')); "
                f"{model_name!r} builds a {type(backbone).__name__}, which lacks {missing}"
            )
        self.model_name = model_name
        self.backbone = backbone.requires_grad_(False)
        embed_dim = int(getattr(backbone, "embed_dim", backbone.num_features))
        self.pool = PromptPool(embed_dim, pool_size, prompt_length, top_n, prompt_init, batchwise_prompt)
        self.head = IncrementalClassifier(embed_dim, initial_out_features)

    def adaptation(
        self, classes: Iterable[int], task_labels: Tensor | None = None, targets: Any = None
    ) -> None:
        """Grow the head to the experience's classes."""
        self.head.adaptation(classes)

    def check_input(self, x: Tensor) -> None:
        """Refuse images the transformer cannot embed, naming both sizes (timm would only assert).

        Raises:
            ValueError: if ``x`` is not ``(B, C, H, W)`` with the transformer's ``in_chans`` and,
                unless the model was built with ``dynamic_img_size``, its ``img_size``.
        """
        patch_embed = self.backbone.patch_embed
        proj = getattr(patch_embed, "proj", None)
        channels = getattr(proj, "in_channels", None)
        if x.ndim != 4:
            raise ValueError(f"PromptedViT takes images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(
                f"PromptedViT's transformer takes {channels}-channel images (in_chans={channels}), got "
                f"{x.shape[1]} channels in a batch of shape {tuple(x.shape)}"
            )
        size = getattr(patch_embed, "img_size", None)
        if size is not None and getattr(patch_embed, "strict_img_size", False):
            expected, got = tuple(int(v) for v in size), tuple(int(v) for v in x.shape[-2:])
            if got != expected:
                raise ValueError(
                    f"PromptedViT's transformer takes {expected[0]}x{expected[1]} images "
                    f"(img_size={expected[0] if expected[0] == expected[1] else expected}), got "
                    f"{got[0]}x{got[1]}: build it with img_size={got[0] if got[0] == got[1] else got} "
                    f"(vit_kwargs) or resize the input"
                )

    def query(self, x: Tensor) -> Tensor:
        """:math:`q(x)`: the frozen model's pre-logit features of ``x`` without prompts, ``(B, D)``."""
        self.check_input(x)
        with torch.no_grad():
            return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def embed(self, x: Tensor) -> tuple[Tensor, PromptSelection]:
        """The prompted token sequence of ``x`` and the pool's choice.

        Returns:
            ``(sequence, selection)``: ``sequence`` is ``(B, N L_p + T, D)``, the selected
            prompts (:meth:`PromptPool.prompts_of`) followed by the ``T`` tokens the
            transformer's embedding gives ``x`` (``[CLS]`` and patches, position embeddings
            added).
        """
        selection = self.pool(self.query(x))
        backbone = self.backbone
        tokens = backbone._pos_embed(backbone.patch_embed(x))
        tokens = getattr(backbone, "patch_drop", nn.Identity())(tokens)
        tokens = getattr(backbone, "norm_pre", nn.Identity())(tokens)
        prompts = self.pool.prompts_of(selection).to(tokens.dtype)
        return torch.cat([prompts, tokens], dim=1), selection

    def features(self, x: Tensor) -> Tensor:
        """The classifier's input: the mean of the prompt tokens' outputs, ``(B, D)``."""
        sequence, _ = self.embed(x)
        out = self.backbone.norm(self.backbone.blocks(sequence))
        return out[:, : self.pool.n_tokens].mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, n_classes)``; classes not seen yet are masked by the head."""
        return self.head(self.features(x))
