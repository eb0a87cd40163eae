"""Deep streaming LDA (Hayes and Kanan, 2020): class means and a shared covariance on frozen features."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.features import capture_features, resolve_layer
from lightning_cl.methods.from_scratch import refuse_beside
from lightning_cl.models.eval_classifier import EvalClassifier
from lightning_cl.models.heads import MASK_VALUE
from lightning_cl.models.module import merge_batch

__all__ = ["SLDA_COVARIANCE_UPDATES", "StreamingLDA", "lda_scores", "modules_up_to"]

SLDA_COVARIANCE_UPDATES = ("paper", "exact")


def lda_scores(features: Tensor, means: Tensor, counts: Tensor, sigma: Tensor, shrinkage: float) -> Tensor:
    r"""Linear discriminant scores of ``features`` for every class.

    With :math:`\Lambda = \big((1 - \epsilon)\Sigma + \epsilon I\big)^{-1}` (Hayes and Kanan, 2020,
    Sec. 3), class :math:`k` scores :math:`z^\top \Lambda \mu_k - \tfrac12 \mu_k^\top \Lambda \mu_k`.
    Classes with no sample score :data:`~lightning_cl.models.MASK_VALUE`.

    Args:
        features: ``(B, D)``.
        means: ``(C, D)`` class means.
        counts: ``(C,)`` samples per class.
        sigma: ``(D, D)`` shared covariance.
        shrinkage: :math:`\epsilon`, in [0, 1].

    Returns:
        ``(B, C)`` scores, in the dtype of ``means``.

    Example:
        >>> means = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
        >>> z = torch.tensor([[1.8, 0.1]], dtype=torch.float64)
        >>> lda_scores(z, means, torch.tensor([3, 3]), torch.eye(2, dtype=torch.float64), 0.0).argmax(1)
        tensor([1])
    """
    eye = torch.eye(sigma.shape[0], dtype=sigma.dtype, device=sigma.device)
    precision = torch.linalg.inv((1.0 - shrinkage) * sigma + shrinkage * eye)
    weights = means @ precision  # (C, D): rows Λ μ_k (Λ is symmetric)
    bias = -0.5 * (weights * means).sum(dim=1)
    scores = features.to(means.dtype) @ weights.T + bias
    return scores.masked_fill(counts.to(scores.device) == 0, MASK_VALUE)


class StreamingLDA(ContinualCallback, EvalClassifier):
    r"""Deep SLDA: a streaming linear discriminant on a frozen layer's features, the classifier at evaluation.

    The layer ``feature_layer`` of the model (and everything before it) is frozen. Each training
    sample's features :math:`z` (its output, flattened, the layer in eval mode), with label
    :math:`y`, update the class mean, the class count and one covariance shared by all classes
    (Hayes and Kanan, 2020, Sec. 3, Eq. 1-2; :math:`t` samples so far):

    .. math::
        \Delta = \frac{t\,(z - \mu_y)(z - \mu_y)^\top}{t + 1}, \qquad
        \Sigma \leftarrow \frac{t\,\Sigma + \Delta}{t + 1}, \qquad
        \mu_y \leftarrow \frac{c_y \mu_y + z}{c_y + 1}, \qquad c_y \mathrel{+}= 1 .

    At validation and test the scores of :func:`lda_scores` (with shrinkage :math:`\epsilon`)
    replace the model's logits (through :class:`~lightning_cl.models.EvalClassifier`): the
    accuracy matrix records the LDA's predictions.

    Choices, stated:

    - ``covariance="paper"``: the update above, one sample at a time in the order of the batches
      (the paper's and its code's, and Avalanche's ``StreamingLDA``; computed here per batch in
      closed form, the same values up to rounding). Its :math:`t/(t+1)` weights
      by the count of all samples, not the class's, so :math:`\Sigma` is close to, not equal
      to, the pooled within-class covariance of the samples seen. ``"exact"``: the streaming
      update that equals it exactly, whatever the order (Welford's, per class, merged batch by
      batch): the batch LDA of the same features, computed in a stream.
    - ``shrinkage=1e-4`` (the paper's). Classes with no sample are never predicted (the paper's
      code scores them as if their mean were zero).
    - Statistics in float64; the features are learnt once, in the first epoch of each
      experience (a single pass, as the paper streams); later epochs train only what follows the
      frozen layer (the model's own head, which evaluation does not use).
    - The frozen layer runs in eval mode during training (batch-norm statistics fixed), and its
      parameters get ``requires_grad=False`` (set before DDP wraps the model; the layers after
      it keep theirs, so DDP has parameters to synchronise).
    - Under DDP every rank gathers the step's features and labels from all ranks (rank order)
      and applies the same updates, so the statistics are identical on every rank.
    - It classifies where it is a callback of the evaluating trainer (as ``fit_stream`` tests);
      a trainer without it evaluates the model's own head.

    Args:
        feature_layer: the name (in ``model.named_modules()``) of the frozen feature extractor's
            last layer.
        shrinkage: :math:`\epsilon`, in [0, 1].
        covariance: ``"paper"`` or ``"exact"``.

    Raises:
        ValueError: for a shrinkage outside [0, 1] or an unknown ``covariance``; at set-up, for
            a model without ``feature_layer``, or a ``feature_layer`` that leaves nothing to train
            (the output layer, or the last layer).
        MisconfigurationException: at set-up, beside ``PackNet`` or ``CWRStar`` (their output
            weights would go unused: the LDA classifies).

    Example:
        >>> StreamingLDA(covariance="exact").shrinkage
        0.0001
    """

    def __init__(self, feature_layer: str = "features", shrinkage: float = 1e-4, covariance: str = "paper"):
        if (
            isinstance(shrinkage, bool)
            or not isinstance(shrinkage, int | float)
            or not 0.0 <= shrinkage <= 1.0
        ):
            raise ValueError(f"shrinkage must be a number in [0, 1], got {shrinkage!r}")
        if covariance not in SLDA_COVARIANCE_UPDATES:
            raise ValueError(f"covariance must be one of {SLDA_COVARIANCE_UPDATES}, got {covariance!r}")
        self.feature_layer = feature_layer
        self.shrinkage = float(shrinkage)
        self.covariance = covariance
        self.means: Tensor | None = None  # (C, D)
        self.counts: Tensor | None = None  # (C,)
        self.sigma: Tensor | None = None  # (D, D); with "exact", the pooled scatter (sum, not mean)
        self.n_seen = 0
        self._hook: RemovableHandle | None = None
        self._features: Tensor | None = None
        self._capturing = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(feature_layer=self.feature_layer, covariance=self.covariance)

    # ------------------------------------------------------------------ training: the updates
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        from lightning_cl.methods.cwr import CWRStar
        from lightning_cl.methods.packnet import PackNet

        refuse_beside(
            trainer,
            self,
            (PackNet, CWRStar),
            "StreamingLDA replaces the model's classifier at evaluation, so the output weights they "
            "consolidate or mask would never be used; use one or the other",
        )
        layer = resolve_layer(module.model, self.feature_layer)
        frozen = modules_up_to(module.model, self.feature_layer)
        frozen_ids = {id(p) for part in frozen for p in part.parameters(recurse=False)}
        if not any(p.requires_grad and id(p) not in frozen_ids for p in module.model.parameters()):
            raise ValueError(
                f"StreamingLDA freezes feature_layer={self.feature_layer!r} and every layer before it, "
                "which leaves no trainable parameter of the model (training would fail): name the "
                "feature extractor's last layer, before the output layer (e.g. 'features')"
            )
        for part in frozen:
            for param in part.parameters(recurse=False):
                param.requires_grad_(False)
        self._remove_hook()
        self._hook = layer.register_forward_hook(self._record)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for part in modules_up_to(pl_module.model, self.feature_layer):  # type: ignore[arg-type]
            part.training = False  # this module only: the layers after it train as usual

    def _record(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self._capturing and self._features is None:
            self._features = output.detach().flatten(1)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._features, self._capturing = None, trainer.current_epoch == 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._capturing = False
        if self._features is None:
            return
        z, (_, y, _) = self._features, merge_batch(batch)
        self._features = None
        if trainer.world_size > 1:
            z = trainer.strategy.all_gather(z).flatten(0, 1)
            y = trainer.strategy.all_gather(y).flatten(0, 1)
        self.update(z, y)

    def update(self, features: Tensor, targets: Tensor) -> None:
        """Learn from a batch of features ``(B, D)`` with labels ``(B,)``, in order (the update above)."""
        z = features.detach().to(torch.float64).cpu()
        y = targets.detach().long().cpu()
        n_classes, dim = int(y.max()) + 1, z.shape[1]
        if self.means is None or self.counts is None or self.sigma is None:
            self.means = torch.zeros(n_classes, dim, dtype=torch.float64)
            self.counts = torch.zeros(n_classes, dtype=torch.long)
            self.sigma = torch.zeros(dim, dim, dtype=torch.float64)
        elif n_classes > len(self.counts):
            grow = n_classes - len(self.counts)
            self.means = torch.cat([self.means, torch.zeros(grow, dim, dtype=torch.float64)])
            self.counts = torch.cat([self.counts, torch.zeros(grow, dtype=torch.long)])
        if self.covariance == "paper":
            self._paper_update(z, y)
            return
        for c in torch.unique(y).tolist():
            zc = z[y == c]
            nb, na = len(zc), int(self.counts[c])
            mean_b = zc.mean(dim=0)
            centred = zc - mean_b
            delta = mean_b - self.means[c]
            self.sigma += centred.T @ centred + (na * nb / (na + nb)) * torch.outer(delta, delta)
            self.means[c] += delta * (nb / (na + nb))
            self.counts[c] += nb
        self.n_seen += len(y)

    def _paper_update(self, z: Tensor, y: Tensor) -> None:
        r"""The per-sample updates of the paper for the batch in order, in closed form.

        With :math:`S_t = t\,\Sigma_t` the update reads :math:`S_{t+1} = S_t + \frac{t}{t+1} d_t d_t^\top`,
        :math:`d_t` the sample minus its class mean before it (the mean of the class's earlier
        samples, those of this batch included). So a batch adds :math:`D^\top \mathrm{diag}(w) D`:
        one product instead of one outer product per sample; the same values up to rounding.
        """
        assert self.means is not None and self.counts is not None and self.sigma is not None
        t0, n = self.n_seen, len(y)
        d = torch.empty_like(z)
        for c in torch.unique(y).tolist():
            rows = (y == c).nonzero().flatten()
            zc = z[rows]
            before = torch.cumsum(zc, dim=0) - zc  # the batch's earlier samples of class c
            count = int(self.counts[c]) + torch.arange(len(rows), dtype=torch.float64)
            known = count.clamp(min=1).unsqueeze(1)
            mean = torch.where(
                count.unsqueeze(1) > 0, (self.counts[c] * self.means[c] + before) / known, self.means[c]
            )
            d[rows] = zc - mean
            self.means[c] = (self.counts[c] * self.means[c] + zc.sum(dim=0)) / (
                int(self.counts[c]) + len(rows)
            )
            self.counts[c] += len(rows)
        t = t0 + torch.arange(n, dtype=torch.float64)
        scatter = t0 * self.sigma + d.T @ (d * (t / (t + 1.0)).unsqueeze(1))
        self.sigma = scatter / (t0 + n)
        self.n_seen += n

    @property
    def covariance_matrix(self) -> Tensor | None:
        """The shared covariance :math:`\\Sigma` (``None`` before any sample)."""
        if self.sigma is None:
            return None
        if self.covariance == "exact":
            return self.sigma / max(1, self.n_seen)
        return self.sigma

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._remove_hook()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ------------------------------------------------------------------ evaluation
    def eval_logits(self, module: Any, x: Tensor, t: Tensor) -> Tensor | None:
        """The LDA's scores for the batch (``None`` before any training sample: the model's logits)."""
        sigma = self.covariance_matrix
        if sigma is None or self.means is None or self.counts is None:
            return None
        with capture_features(module.model, self.feature_layer) as outputs:
            module(x, t)
        scores = lda_scores(outputs[0], self.means, self.counts, sigma, self.shrinkage)
        return scores.to(device=x.device, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"means": self.means, "counts": self.counts, "sigma": self.sigma, "n_seen": self.n_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.means = state_dict.get("means")
        self.counts = state_dict.get("counts")
        self.sigma = state_dict.get("sigma")
        self.n_seen = int(state_dict.get("n_seen", 0))


def modules_up_to(model: nn.Module, layer: str) -> list[nn.Module]:
    """The modules that compute ``layer``'s output: itself, what is inside it, and the leaf modules
    registered before it (for the reference backbones and any ``nn.Sequential``, the layers before it).

    Their own parameters (``parameters(recurse=False)``) are what freezing "up to ``layer``" freezes.

    Raises:
        ValueError: if ``model`` has no layer ``layer``.

    Example:
        >>> from lightning_cl.models import MLP
        >>> [type(m).__name__ for m in modules_up_to(MLP(input_size=4, hidden_size=3), "features.1")]
        ['Flatten', 'Linear']
    """
    resolve_layer(model, layer)
    names = [name for name, _ in model.named_modules()]
    position = names.index(layer)
    return [
        m
        for i, (name, m) in enumerate(model.named_modules())
        if name == layer
        or name.startswith(f"{layer}.")
        or (i < position and next(m.children(), None) is None)
    ]
