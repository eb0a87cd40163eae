"""Statistics by class: the labels each experience trained on, and the scores of new against old classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics import MeanMetric

__all__ = ["LabelRepartition", "NewOldScores"]


def _targets(batch: Any) -> Tensor:
    if isinstance(batch, Mapping):  # current data plus replay: every label trained on
        return torch.cat([b[1] for b in batch.values() if b is not None])
    return batch[1]


class LabelRepartition(Callback):
    """Counts the labels each experience trained on (replayed samples included), per class.

    Opt-in. At the end of each fit the counts (summed over processes) are kept in
    :attr:`counts` (``{experience: {class: count}}``) and logged on rank 0 through the trainer's
    loggers as ``labels/class<c>`` with the stream-wide ``step``.

    Example:
        >>> LabelRepartition().counts
        {}
    """

    def __init__(self) -> None:
        self.counts: dict[int, dict[int, int]] = {}
        self._running: Tensor | None = None

    @property
    def state_key(self) -> str:
        return "LabelRepartition"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._running = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        counts = torch.bincount(_targets(batch).reshape(-1))
        if self._running is None:
            self._running = counts
            return
        if len(counts) > len(self._running):
            counts, self._running = self._running, counts
        self._running[: len(counts)] += counts

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        running = self._running if self._running is not None else torch.zeros(0, dtype=torch.long)
        if trainer.world_size > 1:
            width = int(trainer.strategy.reduce(torch.tensor(float(len(running))), reduce_op="max"))
            padded = torch.zeros(width, dtype=torch.long, device=trainer.strategy.root_device)
            padded[: len(running)] = running.to(padded.device)
            running = trainer.strategy.reduce(padded, reduce_op="sum")
        counts = {c: int(n) for c, n in enumerate(running.tolist()) if n}
        experience = getattr(pl_module, "current_experience", None)
        self.counts[int(experience) if experience is not None else len(self.counts)] = counts
        step = int(getattr(pl_module, "global_step_all", trainer.global_step))
        for logger in trainer.loggers:
            logger.log_metrics({f"labels/class{c}": float(n) for c, n in counts.items()}, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {e: dict(c) for e, c in self.counts.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = {
            int(e): {int(k): int(v) for k, v in c.items()} for e, c in state_dict["counts"].items()
        }


class NewOldScores(Callback):
    """Mean score (logit) of the true class on test samples of new classes and of old classes.

    Opt-in. New classes are those of the experience trained last (its datamodule's
    ``classes_in_this_experience``), old ones those of the experiences trained before it. Each
    test sample's logit of its true class is averaged over the samples of new classes and of
    old classes; the two means are logged as ``test/mean_score/new`` and ``test/mean_score/old``
    (synchronised over processes by torchmetrics). A growing gap between them is the
    classifier's bias towards the latest classes.

    Example:
        >>> NewOldScores().new_classes
        set()
    """

    def __init__(self) -> None:
        self.new_classes: set[int] = set()
        self.old_classes: set[int] = set()
        self._new = MeanMetric()
        self._old = MeanMetric()

    @property
    def state_key(self) -> str:
        return "NewOldScores"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        classes = getattr(getattr(trainer, "datamodule", None), "classes_in_this_experience", None)
        if classes is None:
            return
        self.old_classes |= self.new_classes
        self.new_classes = {int(c) for c in classes}
        self.old_classes -= self.new_classes

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._new, self._old = self._new.to(pl_module.device), self._old.to(pl_module.device)
        self._new.reset()
        self._old.reset()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Tensor):
            return  # the module's test_step returns the logits
        y = _targets(batch)
        scores = outputs.gather(1, y.clamp_max(outputs.shape[1] - 1).unsqueeze(1)).squeeze(1).float()
        scores = torch.where(y < outputs.shape[1], scores, torch.full_like(scores, float("nan")))
        for classes, metric in ((self.new_classes, self._new), (self.old_classes, self._old)):
            if classes:
                mask = torch.isin(y, torch.tensor(sorted(classes), device=y.device)) & ~scores.isnan()
                metric.update(scores[mask])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, metric, classes in (
            ("new", self._new, self.new_classes),
            ("old", self._old, self.old_classes),
        ):
            if classes:
                pl_module.log(f"test/mean_score/{name}", metric.compute(), add_dataloader_idx=False)

    def state_dict(self) -> dict[str, Any]:
        return {"new_classes": sorted(self.new_classes), "old_classes": sorted(self.old_classes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.new_classes = set(state_dict["new_classes"])
        self.old_classes = set(state_dict["old_classes"])
