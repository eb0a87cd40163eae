"""ER-AML (Caccia et al., 2022): replay with an asymmetric metric-learning loss on the incoming data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_cl.methods.base import Batch, step_generator
from lightning_cl.methods.er_ace import _check_common, _ReplayLoss
from lightning_cl.methods.features import resolve_layer
from lightning_cl.methods.selection import check_layer_name, check_temperature

__all__ = ["ERAML", "asymmetric_metric_loss"]


def asymmetric_metric_loss(
    features: Tensor,
    targets: Tensor,
    incoming: slice,
    memory: slice,
    temperature: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""ER-AML's incoming-data loss (Caccia et al., 2022, Sec. 4, Eq. 4).

    Each incoming sample :math:`x` is an anchor; its positive :math:`x_p` is one sample of its
    class drawn from the whole batch (incoming and memory rows, :math:`x` itself excluded); its
    negatives :math:`N(x)` are the memory rows of other classes:

    .. math::
        -\frac1{|A|} \sum_{x \in A} \log
        \frac{e^{s(x, x_p)}}{e^{s(x, x_p)} + \sum_{x_n \in N(x)} e^{s(x, x_n)}},
        \qquad s(a, b) = \frac{\cos(f(a), f(b))}{\tau}

    Only memory samples are pushed away, so the incoming classes move their own features and not
    the old classes' (the asymmetry). :math:`A`: the anchors that have a positive and a negative
    (no term, a zero loss, when none has).

    Args:
        features: ``(B, D)`` features of the merged batch (part of the graph).
        targets: ``(B,)`` classes.
        incoming: the rows of the incoming batch.
        memory: the rows of the memory batch.
        temperature: :math:`\tau`.
        generator: draws the positives (CPU).

    Returns:
        A float32 scalar.

    Example:
        Incoming rows 0 and 1 (classes 0 and 1), memory rows 2 and 3 (classes 0 and 1):

        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [0.2, 1.0]])
        >>> y = torch.tensor([0, 1, 0, 1])
        >>> loss = asymmetric_metric_loss(f, y, slice(0, 2), slice(2, 4), temperature=1.0)
        >>> round(float(loss), 4)
        0.3759
    """
    f = F.normalize(features.float(), dim=1)
    rows = torch.arange(len(f), device=f.device)
    anchors = rows[incoming]
    in_memory = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    in_memory[memory] = True
    y_anchor = targets[anchors]
    same = y_anchor[:, None] == targets[None, :]
    same[torch.arange(len(anchors), device=f.device), anchors] = False
    negative = (y_anchor[:, None] != targets[None, :]) & in_memory[None, :]
    valid = same.any(1) & negative.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    draw = torch.rand(same.shape, generator=generator).to(f.device)
    positive = draw.masked_fill(~same, -1.0).argmax(1)
    sim = f[anchors] @ f.T / temperature
    s_pos = sim.gather(1, positive[:, None])
    s_all = torch.cat([s_pos, sim.masked_fill(~negative, float("-inf"))], dim=1)
    per_anchor = torch.logsumexp(s_all, dim=1) - s_pos.squeeze(1)
    return per_anchor[valid].mean()


class ERAML(_ReplayLoss):
    r"""ER-AML (Caccia et al., 2022, "New insights on reducing abrupt representation change in
    online continual learning", Sec. 4): experience replay whose incoming data learns by metric
    learning against the memory.

    Every training step after the first experience holds the current batch :math:`X_{in}` and a
    memory batch :math:`X_{bf}` (a :class:`Replay` memory). The task loss becomes

    .. math:: \mathcal L = \mathcal L_{AML}(X_{in}; X_{in} \cup X_{bf}) + \mathrm{CE}(X_{bf})

    :math:`\mathcal L_{AML}` (:func:`asymmetric_metric_loss`) pulls each incoming sample's
    features towards one sample of its class and pushes them away from the memory samples of
    other classes, on the cosine similarity of the features of layer ``feature_layer`` divided
    by the temperature :math:`\tau`. The classifier is trained by the memory's cross-entropy
    alone, as in the paper. Without memory rows the loss is the cross-entropy
    of the incoming data, since there are no negatives.

    Choices, stated:

    - One positive per anchor, drawn from the batch (incoming and memory rows), and every
      memory sample of another class in the batch as a negative (the paper's sets); Avalanche's
      ``ER_AML`` draws one positive and one negative per anchor from the memory.
    - ``temperature=0.1``, Avalanche's default; the paper tunes :math:`\tau` per benchmark.
    - The features are those of the forward pass that gave the step's logits (a hook on the
      layer), so no second forward pass is run.
    - The memory is a reservoir (the paper's); Avalanche uses a class-balanced memory:
      ``policy="class_balanced"``. It is updated as :class:`ERACE`'s (``online``): after every
      step on online streams (the paper), else when an experience ends, with memory batches drawn
      from the memory as that end will leave it, the experience's own samples included, since
      the memory's cross-entropy alone trains the classifier.

    Args:
        mem_size: memory size in samples.
        feature_layer: the layer whose output are the features (a ``named_modules()`` name; the
            reference backbones' ``"features"``).
        temperature: :math:`\tau` (> 0).
        mem_batch_size: memory samples per step (default: the experience's batch size).
        policy: the memory's selection policy (see :data:`~lightning_cl.methods.BUFFER_POLICIES`).
        seed: seed of the memory's selection and of the positives drawn (``None``: torch's
            initial seed on rank 0 for the memory; 0 for the positives).
        online: when the memory is updated, as :class:`ERACE`'s (``None``: per step on online
            streams, at experience end otherwise).

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, a temperature that is not > 0, a non-positive
            ``mem_batch_size``, an unknown policy or a ``seed`` that is not an int; at set-up, a
            ``feature_layer`` the model does not have.

    Example:
        >>> aml = ERAML(mem_size=200, temperature=0.2)
        >>> aml.temperature, aml.feature_layer
        (0.2, 'features')
    """

    def __init__(
        self,
        mem_size: int = 200,
        feature_layer: str = "features",
        temperature: float = 0.1,
        mem_batch_size: int | None = None,
        policy: str = "reservoir",
        seed: int | None = None,
        online: bool | None = None,
    ):
        _check_common(mem_size, seed, "ERAML")
        check_temperature(temperature)
        check_layer_name(feature_layer, "feature_layer")
        super().__init__(mem_size, policy, mem_batch_size, seed, online)
        self.feature_layer = feature_layer
        self.temperature = float(temperature)
        self._features: Tensor | None = None
        self._hook: RemovableHandle | None = None

    replays_current = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._remove_hook()
        layer = resolve_layer(pl_module.model, self.feature_layer)  # type: ignore[arg-type]
        self._hook = layer.register_forward_hook(self._record)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            resolve_layer(pl_module.model, self.feature_layer)  # type: ignore[arg-type]
        super().setup(trainer, pl_module, stage)

    def _record(self, _: nn.Module, __: Any, output: Tensor) -> None:
        self._features = output

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._features = None, None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hook()
        super().on_fit_end(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._remove_hook()

    def task_loss(
        self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        _, y, _ = batch
        replay = parts.get("replay")
        if replay is None or replay.stop == replay.start or self._features is None:
            return None  # the first experience: the incoming data's cross-entropy
        generator = step_generator(self.replay.seed or 0, int(module.draw_index))
        features = self._features.flatten(1)
        metric = asymmetric_metric_loss(features, y, parts["current"], replay, self.temperature, generator)
        return metric + F.cross_entropy(logits[replay].float(), y[replay])
