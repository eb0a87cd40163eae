"""CoPE (De Lange and Tuytelaars, 2021): continually evolving prototypes and the PPP-loss."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.buffers import check_memory_size
from lightning_cl.methods.distributed import all_reduce_tensors
from lightning_cl.methods.er_ace import check_online, updates_per_step
from lightning_cl.methods.features import capture_features, resolve_layer
from lightning_cl.methods.icarl import nearest_mean_scores, refuse_task_aware
from lightning_cl.methods.replay import Replay, check_one_replay_loader
from lightning_cl.methods.selection import check_layer_name, check_temperature
from lightning_cl.models.eval_classifier import EvalClassifier

__all__ = ["CoPE", "ppp_loss", "update_prototypes"]


def update_prototypes(
    prototypes: Tensor, sums: Tensor, counts: Tensor, momentum: float
) -> tuple[Tensor, Tensor]:
    r"""CoPE's prototype update, :math:`p_c \leftarrow \mathrm{norm}(\alpha p_c + (1-\alpha)\,\bar f_c)`.

    :math:`\bar f_c` is the mean of the batch's (normalised) embeddings of class :math:`c`
    (``sums[c] / counts[c]``), :math:`\alpha` the momentum; classes without samples in the batch
    keep their prototype. Rows of ``prototypes`` that are all zero (not yet initialised) start at
    :math:`\mathrm{norm}(\bar f_c)`.

    Args:
        prototypes: ``(C, D)`` unit prototypes (a zero row: none yet).
        sums: ``(C, D)`` sums of the batch's embeddings per class.
        counts: ``(C,)`` samples per class in the batch.
        momentum: :math:`\alpha` in [0, 1].

    Returns:
        The new prototypes ``(C, D)`` and which rows hold one (a ``bool`` ``(C,)``).

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        >>> sums = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
        >>> new, held = update_prototypes(p, sums, torch.tensor([2.0, 3.0]), momentum=0.5)
        >>> [round(v, 4) for v in new[0].tolist()], new[1].tolist(), held.tolist()
        ([0.7071, 0.7071], [1.0, 0.0], [True, True])
    """
    present = counts > 0
    batch_mean = F.normalize(sums / counts.clamp_min(1).unsqueeze(1), dim=1)
    held = prototypes.abs().sum(1) > 0
    moved = F.normalize(momentum * prototypes + (1 - momentum) * batch_mean, dim=1)
    new = torch.where((present & held).unsqueeze(1), moved, prototypes)
    new = torch.where((present & ~held).unsqueeze(1), batch_mean, new)
    return new, held | present


def ppp_loss(
    features: Tensor, targets: Tensor, prototypes: Tensor, classes: list[int], temperature: float
) -> Tensor:
    r"""The pseudo-prototypical proxy loss (PPP-loss) of CoPE, averaged over the batch.

    On unit embeddings :math:`f`, for each class :math:`c` of the batch with samples
    :math:`B_c`, its prototype :math:`p_c`, the other prototypes :math:`p_k` and the other
    samples :math:`B_{\neg c}`; a proxy :math:`q` of class :math:`c` (the prototype, or another
    sample of :math:`B_c`: a pseudo-prototype) gives

    .. math:: P(c \mid f; q) = \frac{e^{\langle q, f\rangle/\tau}}{e^{\langle q, f\rangle/\tau}
              + \sum_{k \ne c} e^{\langle p_k, f\rangle/\tau}}

    - attractor, for :math:`x_i \in B_c`: :math:`\log \frac1{|B_c|}\big(P(c \mid f_i; p_c) +
      \sum_{j \in B_c, j \ne i} P(c \mid f_i; f_j)\big)`;
    - repellor, for :math:`x_j \in B_{\neg c}` and each :math:`x_i \in B_c`:
      :math:`\log\big(1 - \tfrac12 (P(c \mid f_j; p_c) + P(c \mid f_j; f_i))\big)`;

    and the loss is minus the sum of both over the classes, divided by the batch size. Proxies
    (prototypes and pseudo-prototypes) carry no gradient: each term moves the embedding it
    classifies, as in Avalanche's ``PPPloss``.

    Args:
        features: ``(B, D)`` embeddings (normalised here).
        targets: ``(B,)`` classes; every one must be in ``classes``.
        prototypes: ``(len(classes), D)`` unit prototypes, one per entry of ``classes``.
        classes: the class of each prototype row.
        temperature: :math:`\tau > 0`.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(ppp_loss(f, torch.tensor([0, 0, 1]), p, [0, 1], 0.1)) < 1e-3
        True
    """
    z = F.normalize(features.float(), dim=1)
    rows = {c: i for i, c in enumerate(classes)}
    protos = prototypes.to(z.device).float().detach()
    total = z.new_zeros(())
    for c in torch.unique(targets).tolist():
        own = targets == c
        bc, bk = z[own], z[~own]
        row = rows[int(c)]
        others = torch.cat([protos[:row], protos[row + 1 :]])
        proxies = torch.cat([bc.detach(), protos[row : row + 1]])  # pseudo-prototypes, then p_c
        # Attractor: every proxy of c for every sample of c (itself left out).
        near = torch.exp(proxies @ bc.T / temperature)  # (n_c + 1, n_c)
        away = torch.exp(others @ bc.T / temperature).sum(0)  # (n_c,)
        prob = near / (near + away)
        self_mask = torch.zeros_like(prob, dtype=torch.bool)
        self_mask[: len(bc)] = torch.eye(len(bc), dtype=torch.bool, device=z.device)
        attract = torch.log(prob.masked_fill(self_mask, 0.0).sum(0) / len(bc)).sum()
        total = total - attract
        if len(bk):
            near_k = torch.exp(proxies @ bk.T / temperature)  # (n_c + 1, n_k)
            away_k = torch.exp(others @ bk.T / temperature).sum(0)
            prob_k = near_k / (near_k + away_k)
            expected = (prob_k[:-1] + prob_k[-1:]) / 2
            total = total - torch.log((1 - expected).clamp_min(1e-12)).sum()
    return total / len(z)


class CoPE(ContinualCallback, EvalClassifier):
    r"""CoPE, Continual Prototype Evolution (De Lange and Tuytelaars, 2021): class prototypes
    that follow the embedding by momentum, learnt with the PPP-loss, classified by the nearest one.

    - **Embedding**: the L2-normalised output of layer ``feature_layer``.
    - **Memory**: a class-balanced :class:`Replay` memory of ``mem_size`` indices; every step
      after the first experience holds a memory batch next to the current one (the paper's
      balanced replay).
    - **Training**: the task loss becomes :func:`ppp_loss` (temperature ``0.1``) on the merged
      batch's embeddings against the prototypes. After every step the prototypes of the step's
      classes move: :math:`p_c \leftarrow \mathrm{norm}(\alpha p_c + (1 - \alpha)\,\bar f_c)`
      (:func:`update_prototypes`, :math:`\alpha = 0.99`), :math:`\bar f_c` the normalised mean
      embedding of class :math:`c` in the step's batch, summed over all DDP ranks (all-reduced,
      so every rank holds the same prototypes). The output layer is not trained.
    - **Classifier**: at validation and test (an :class:`~lightning_cl.models.EvalClassifier`),
      the class of the nearest prototype.

    Choices, stated:

    - A class's prototype starts at its first batch's mean embedding, before that batch's loss
      (Avalanche starts every prototype at a random unit vector).
    - The paper is online (one pass, a class-balanced memory updated per batch, prototypes
      updated per batch). The memory (``online``) is updated after every step on online streams
      (:func:`~lightning_cl.data.split_online`, with or without known boundaries), when an
      experience ends otherwise; ``online=True`` / ``False`` forces one or the other. The
      prototypes move after every step of any number of epochs.
    - The embedding is a named layer's output (the paper and Avalanche normalise the network's
      last layer, whose width is then the prototypes').
    - Class-incremental only (the paper's setting): the nearest prototype is over all classes
      seen, so a multi-head model or task labels other than 0 are refused at set-up
      (:func:`~lightning_cl.methods.icarl.refuse_task_aware`), as for iCaRL and SCR.

    Args:
        mem_size: memory size in samples.
        feature_layer: the layer whose output is the embedding (a ``named_modules()`` name).
        momentum: :math:`\alpha` in [0, 1].
        temperature: :math:`\tau > 0`.
        mem_batch_size: memory samples per step (default: the experience's batch size).
        seed: seed of the memory's selection (``None``: torch's initial seed on rank 0).
        online: when the memory is updated (``None``: per step on online streams, at experience
            end otherwise; ``True`` / ``False``: always per step / at experience end).

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, a ``momentum`` outside [0, 1], a
            temperature that is not > 0, a ``seed`` that is not an int or an ``online`` that is
            not ``None`` or a bool; at set-up, a ``feature_layer`` the model does not have.
        MisconfigurationException: at set-up, a multi-head model or an experience with task
            labels other than 0, or another callback feeding the ``"replay"`` loader.

    Example:
        >>> cope = CoPE(mem_size=200)
        >>> cope.momentum, cope.temperature, cope.classes
        (0.99, 0.1, [])
    """

    def __init__(
        self,
        mem_size: int = 200,
        feature_layer: str = "features",
        momentum: float = 0.99,
        temperature: float = 0.1,
        mem_batch_size: int | None = None,
        seed: int | None = None,
        online: bool | None = None,
    ):
        check_memory_size(mem_size, "CoPE")
        self.online = check_online(online)
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        check_temperature(temperature)
        check_layer_name(feature_layer, "feature_layer")
        self.replay = Replay(
            mem_size=mem_size, policy="class_balanced", mem_batch_size=mem_batch_size, seed=seed
        )
        self.feature_layer = feature_layer
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.prototypes = torch.zeros(0, 0)
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            mem_size=self.replay.buffer.mem_size, feature_layer=self.feature_layer
        )

    @property
    def classes(self) -> list[int]:
        """The classes that have a prototype."""
        if self.prototypes.numel() == 0:
            return []
        return torch.nonzero(self.prototypes.abs().sum(1) > 0).flatten().tolist()

    feeds_replay_loader = True
    """Its memory's batches come under the loader name ``"replay"`` (one such callback per trainer)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_one_replay_loader(trainer)
            resolve_layer(pl_module.model, self.feature_layer)  # type: ignore[arg-type]
        super().setup(trainer, pl_module, stage)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        refuse_task_aware("CoPE", module, experience)
        self.replay.online = updates_per_step(self.online, experience)
        self.replay.on_experience_start(trainer, module, experience)

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self.replay.on_experience_end(trainer, module, experience)

    def train_dataloaders(self, experience: Experience, current: Sized) -> dict[str, Iterable[Any]]:
        return self.replay.train_dataloaders(experience, current)

    def _embed(self, module: Any, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        with capture_features(module.model, self.feature_layer) as out:
            logits = module(x, t)
        return F.normalize(out[-1].float(), dim=1), logits

    def _grown(self, width: int, dim: int, device: torch.device) -> Tensor:
        p = self.prototypes.to(device)
        if p.numel() == 0:
            return torch.zeros(width, dim, device=device)
        if len(p) < width:
            p = torch.cat([p, p.new_zeros(width - len(p), p.shape[1])])
        return p

    def task_loss(self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]) -> Tensor:
        x, y, t = batch
        z, _ = self._embed(module, x, t)
        width = max(logits.shape[1], int(y.max()) + 1)
        prototypes = self._grown(width, z.shape[1], z.device)
        sums = torch.zeros_like(prototypes).index_add_(0, y, z.detach())
        counts = torch.zeros(width, device=z.device).index_add_(0, y, torch.ones_like(y, dtype=torch.float))
        reduced = all_reduce_tensors(module.trainer, {"sums": sums, "counts": counts})
        # Classes seen for the first time start at their batch mean, before this batch's loss.
        held = prototypes.abs().sum(1) > 0
        fresh = (reduced["counts"] > 0) & ~held
        start = F.normalize(reduced["sums"] / reduced["counts"].clamp_min(1).unsqueeze(1), dim=1)
        prototypes = torch.where(fresh.unsqueeze(1), start, prototypes)
        # Applied after the optimizer step: a failed step leaves the prototypes as they were.
        self._pending = (prototypes, reduced["sums"], reduced["counts"])
        classes = torch.nonzero(prototypes.abs().sum(1) > 0).flatten().tolist()
        loss = ppp_loss(z, y, prototypes[classes], classes, self.temperature)
        # The output layer stays in the graph with a zero gradient (DDP expects every parameter).
        return loss + logits.float().sum() * 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.replay.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._pending is None:
            return
        prototypes, sums, counts = self._pending
        self._pending = None
        self.prototypes, _ = update_prototypes(prototypes, sums, counts, self.momentum)

    def eval_logits(self, module: Any, x: Tensor, t: Tensor) -> Tensor | None:
        classes = self.classes
        if not classes:
            return None
        z, logits = self._embed(module, x, t)
        width = max(len(self.prototypes), int(logits.shape[1]))
        return nearest_mean_scores(z, self.prototypes[classes].to(z.device), classes, width)

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.replay.state_dict(), "prototypes": self.prototypes.detach().cpu().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.replay.load_state_dict(state_dict["replay"])
        self.prototypes = state_dict["prototypes"].float()
        self._pending = None
