"""iCaRL (Rebuffi et al., 2017): herding exemplars, distillation of old outputs, nearest mean of exemplars."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback, experience_generator, stream_seed
from lightning_cl.methods.buffers import check_memory_size
from lightning_cl.methods.features import capture_features, resolve_layer
from lightning_cl.methods.selection import (
    HerdingSelection,
    SelectionStrategy,
    check_layer_name,
    check_selection,
)
from lightning_cl.models.eval_classifier import EvalClassifier
from lightning_cl.models.heads import MASK_VALUE, MultiHeadClassifier, copy_at_state

__all__ = ["ICARL_REDUCTIONS", "ICaRL", "icarl_loss", "nearest_mean_scores", "refuse_task_aware"]

ICARL_REDUCTIONS = ("class_sum", "mean")


def icarl_loss(
    logits: Tensor,
    targets: Tensor,
    classes: list[int],
    old_classes: list[int],
    teacher_logits: Tensor | None,
    reduction: str = "class_sum",
) -> Tensor:
    r"""iCaRL's classification and distillation loss (Rebuffi et al., 2017, Sec. 2.2, Alg. 3).

    Binary cross-entropy on the sigmoid outputs :math:`g_y(x)` of the classes seen so far: a
    new class's target is :math:`\delta_{y = y_i}`, an old class's target is the old network's
    output :math:`q_i^y = \sigma(z^{old}_y(x_i))` (for every sample, exemplars included):

    .. math::
        \ell(x_i) = -\sum_{y \in \text{new}} \big[\delta_{y=y_i} \log g_y + \delta_{y \ne y_i}
        \log (1 - g_y)\big] - \sum_{y \in \text{old}} \big[q_i^y \log g_y + (1 - q_i^y)
        \log (1 - g_y)\big]

    Args:
        logits: ``(B, n)`` outputs of the network being trained.
        targets: ``(B,)`` classes.
        classes: the classes seen so far (old and new): the units the loss covers.
        old_classes: the classes of earlier experiences (distilled).
        teacher_logits: ``(B, n_old)`` outputs of the old network, or ``None`` (no old classes).
        reduction: ``"class_sum"`` (the paper's sum over classes, averaged over the batch) or
            ``"mean"`` (Avalanche's mean over samples and classes).

    Returns:
        A float32 scalar.

    Example:
        >>> z = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
        >>> round(float(icarl_loss(z, torch.tensor([0, 1]), [0, 1], [], None)), 4)
        0.0363
    """
    z = logits.float()
    target = F.one_hot(targets, z.shape[1]).float()
    if old_classes and teacher_logits is not None:
        old = torch.as_tensor(old_classes, device=z.device)
        target[:, old] = torch.sigmoid(teacher_logits.float()[:, old])
    columns = torch.as_tensor(classes, device=z.device)
    terms = F.binary_cross_entropy_with_logits(z[:, columns], target[:, columns], reduction="none")
    return terms.sum(1).mean() if reduction == "class_sum" else terms.mean()


def refuse_task_aware(method: str, module: Any, experience: Experience) -> None:
    """Refuse a multi-head model or task-labelled data for a nearest-mean classifier over all classes.

    The nearest mean of exemplars (iCaRL, SCR) is taken over every class seen, whatever the
    sample's task label: on a task-incremental stream it would answer with another task's class,
    which a per-task head never does. So set-ups where the task label matters are refused.

    Raises:
        MisconfigurationException: for a model with a
            :class:`~lightning_cl.models.MultiHeadClassifier`, or an experience whose samples carry
            a task label other than 0.
    """
    if any(isinstance(m, MultiHeadClassifier) for m in module.model.modules()):
        raise MisconfigurationException(
            f"{method} classifies by the nearest class mean over all classes seen and ignores task labels; "
            "the model has a MultiHeadClassifier (one head per task): use a single head on a "
            "class-incremental stream"
        )
    labels = experience.task_labels
    if any(label != 0 for label in labels):
        raise MisconfigurationException(
            f"{method} classifies by the nearest class mean over all classes seen and ignores task labels; "
            f"experience {experience.index} has task labels {labels}: use a class-incremental stream "
            "(task label 0)"
        )


def nearest_mean_scores(features: Tensor, means: Tensor, classes: list[int], width: int) -> Tensor:
    r"""Nearest-mean-of-exemplars scores (Rebuffi et al., 2017, Sec. 2.1, Alg. 1).

    :math:`y^* = \arg\min_y \|\varphi(x) - \mu_y\|` on L2-normalised features; the score of class
    :math:`y` is :math:`-\|\varphi(x) - \mu_y\|^2` (its argmax is the nearest mean), and classes
    without a mean get :data:`~lightning_cl.models.MASK_VALUE`.

    Args:
        features: ``(B, D)`` features (normalised here).
        means: ``(C, D)`` normalised class means, one row per entry of ``classes``.
        classes: the class of each row of ``means``.
        width: number of score columns (at least ``max(classes) + 1``).

    Example:
        >>> means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> scores = nearest_mean_scores(torch.tensor([[0.2, 0.9]]), means, [3, 1], 4)
        >>> int(scores.argmax()), float(scores[0, 0])
        (1, -1000.0)
    """
    phi = F.normalize(features.float(), dim=1)
    distance = torch.cdist(phi, means.to(phi.device).float()).pow(2)
    scores = torch.full((len(phi), width), MASK_VALUE, device=phi.device)
    scores[:, torch.as_tensor(classes, device=phi.device)] = -distance
    return scores


class ICaRL(ContinualCallback, EvalClassifier):
    """iCaRL (Rebuffi et al., 2017): exemplars chosen by herding, a distilled binary
    cross-entropy, and classification by the nearest mean of exemplars.

    - **Training data** (Alg. 2): each experience trains on its own data joined with the
      exemplars of all earlier classes (one shuffled set, through
      :meth:`~lightning_cl.data.TrainDataSource.current_dataloader`).
    - **Loss** (Alg. 3, :func:`icarl_loss`): in place of the task loss, a binary cross-entropy
      over the classes seen so far, the old classes' targets being the old network's sigmoid
      outputs. The old network is the model as the previous experience left it, kept frozen.
    - **Exemplars** (Alg. 4 and 5): at the end of an experience each class keeps
      ``m = mem_size // (classes seen)`` exemplars: the old classes their first ``m`` (herding
      orders them by priority), each new class the ``m`` that ``selection`` chooses
      (:class:`~lightning_cl.methods.HerdingSelection` on the features of ``feature_layer``).
    - **Classifier** (Alg. 1, :func:`nearest_mean_scores`): at validation and test, through
      :class:`~lightning_cl.models.EvalClassifier`, the class of the nearest mean of the
      exemplars' normalised features; the accuracy matrix records these predictions. Before the
      first experience ends there are no exemplars, and the network's outputs classify.

    Choices, stated:

    - The loss sums over classes and averages over the batch (``reduction="class_sum"``, the
      paper); Avalanche's ``ICaRLLossPlugin`` averages over both: ``reduction="mean"``.
    - The distilled (old) classes are those of earlier experiences less the running
      experience's: a class that comes back (or an experience fitted twice) is learnt from its
      labels, not from the old network's outputs (the paper's classes never come back).
    - The class means are computed once per experience, when its exemplars are chosen (the
      paper's means of the exemplars, without its horizontally flipped copies).
    - The old network runs in eval mode; its weights are part of the checkpointed state (one
      copy of the model, like :class:`LwF`'s teacher), and the exemplars are indices.
    - Class-incremental only: the nearest mean is taken over all classes seen, so a multi-head
      model or task labels other than 0 are refused at set-up (:func:`refuse_task_aware`).
    - Exemplars and means are computed on every DDP rank from the same data and the same
      synchronised weights, so they are the same everywhere.

    Args:
        mem_size: total number of exemplars ``K``.
        feature_layer: the layer whose output is the feature map :math:`\\varphi` (a
            ``named_modules()`` name; ``"features"`` for the reference backbones).
        selection: how a new class's exemplars are chosen (default: herding on ``feature_layer``).
        reduction: ``"class_sum"`` or ``"mean"`` (see above).
        seed: seed given to the selection (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, an unknown ``reduction``, a ``selection``
            that is not a selection strategy or a ``seed`` that is not an int; at set-up, a
            ``feature_layer`` the model does not have, or a ``mem_size`` below the number of
            classes seen by the end of the experience (no exemplar per class).
        MisconfigurationException: at set-up, for a multi-head model or task-labelled data
            (:func:`refuse_task_aware`: the nearest mean is over all classes, task labels unused).

    Example:
        >>> icarl = ICaRL(mem_size=200)
        >>> len(icarl), icarl.reduction
        (0, 'class_sum')
    """

    def __init__(
        self,
        mem_size: int = 200,
        feature_layer: str = "features",
        selection: SelectionStrategy | None = None,
        reduction: str = "class_sum",
        seed: int | None = None,
    ):
        check_memory_size(mem_size, "ICaRL")
        if reduction not in ICARL_REDUCTIONS:
            raise ValueError(f"reduction must be one of {ICARL_REDUCTIONS}, got {reduction!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.mem_size = mem_size
        self.feature_layer = check_layer_name(feature_layer, "feature_layer")
        self.selection = (
            check_selection(selection) if selection is not None else HerdingSelection(feature_layer)
        )
        self._features = HerdingSelection(feature_layer)  # its `features()`: the class means' features
        self.reduction = reduction
        self.seed = seed
        self.exemplars: dict[int, Tensor] = {}  # class -> indices into the stream's dataset, by priority
        self.task_labels: dict[int, Tensor] = {}
        self.class_means = torch.zeros(0, 0)  # one normalised row per class of `mean_classes`
        self.mean_classes: list[int] = []
        self.old_classes: list[int] = []
        self.teacher_state: dict[str, Tensor] | None = None
        self._teacher: nn.Module | None = None
        self._teacher_takes_tasks = False
        self._seed: int | None = None

    def __len__(self) -> int:
        return sum(len(v) for v in self.exemplars.values())

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.mem_size, feature_layer=self.feature_layer)

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            resolve_layer(pl_module.model, self.feature_layer)  # type: ignore[arg-type]
        super().setup(trainer, pl_module, stage)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        refuse_task_aware("iCaRL", module, experience)
        seen = set(self.exemplars) | set(experience.classes_in_this_experience)
        if len(seen) > self.mem_size:
            raise ValueError(
                f"mem_size={self.mem_size} is smaller than the {len(seen)} classes seen after experience "
                f"{experience.index}: iCaRL keeps mem_size // classes exemplars per class, so no class would "
                "keep one; mem_size must be at least the stream's number of classes"
            )

    def memory(self, data: DatasetView) -> DatasetView | None:
        """The exemplars as a view of ``data``'s dataset (any view of the stream's data); ``None``
        if there are none.

        Raises:
            ValueError: if the exemplars point to samples of other classes there.
        """
        if not len(self):
            return None
        classes = sorted(self.exemplars)
        indices = torch.cat([self.exemplars[c] for c in classes])
        targets = torch.cat([torch.full((len(self.exemplars[c]),), c) for c in classes])
        if int(indices.max()) >= len(data.base_targets) or not torch.equal(
            data.base_targets[indices], targets
        ):
            raise ValueError(
                "iCaRL's exemplars point to samples of other classes in this data: the experiences come "
                "from another dataset, or the checkpoint belongs to another benchmark or class order"
            )
        tasks = torch.cat([self.task_labels[c] for c in classes])
        return DatasetView(data.base, indices, tasks, data.base_targets)

    def current_dataloader(self, experience: Experience) -> Iterable[Any] | None:
        memory = self.memory(experience.dataset)
        if memory is None:
            return None
        return experience.loader(DatasetView.concat([experience.dataset, memory]), train=True)

    # ------------------------------------------------------------------ loss
    def _teacher_logits(self, module: Any, x: Tensor, t: Tensor) -> Tensor | None:
        if self.teacher_state is None or not self.old_classes:
            return None
        if self._teacher is None:  # first use, or restored from a checkpoint
            self._teacher = copy_at_state(module.model, self.teacher_state).eval().requires_grad_(False)
            self._teacher_takes_tasks = "task_labels" in inspect.signature(self._teacher.forward).parameters
        with torch.no_grad():
            return self._teacher(x, t) if self._teacher_takes_tasks else self._teacher(x)

    def task_loss(
        self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        x, y, t = batch
        classes = sorted(module.seen_classes)
        # A class of the running experience learns from its labels, even if an earlier
        # experience held it too (an experience fitted twice, a class that comes back).
        current = set(module.trainer.datamodule.classes_in_this_experience)
        old = [c for c in self.old_classes if c not in current]
        teacher = self._teacher_logits(module, x, t) if old else None
        return icarl_loss(logits, y, classes, old, teacher, self.reduction)

    # ------------------------------------------------------------------ exemplars and means
    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        data = experience.dataset
        new = [c for c in experience.classes_in_this_experience if c not in self.exemplars]
        seen = sorted(set(self.exemplars) | set(new))
        per_class = self.mem_size // max(1, len(seen))
        generator = experience_generator(self._seed, experience.index)
        exemplars = {c: v[:per_class] for c, v in self.exemplars.items()}  # Alg. 5: keep the first m
        tasks = {c: v[:per_class] for c, v in self.task_labels.items()}
        targets = data.targets
        for c in new:  # Alg. 4: herding on the current features
            view = data.subset((targets == c).nonzero().flatten())
            chosen = self.selection.select(view, per_class, module=module, generator=generator)
            exemplars[c], tasks[c] = view.indices[chosen], view.task_labels[chosen]
        self.exemplars, self.task_labels = exemplars, tasks
        self._update_means(module, data)
        self.old_classes = sorted(set(self.old_classes) | set(experience.classes_in_this_experience))
        self.teacher_state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self._teacher = None

    def _update_means(self, module: Any, data: DatasetView) -> None:
        memory = self.memory(data)
        self.mean_classes = sorted(c for c in self.exemplars if len(self.exemplars[c]))
        if memory is None:
            self.class_means = torch.zeros(0, 0)
            return
        features = F.normalize(self._features.features(memory, module), dim=1)
        rows, start = [], 0
        for c in sorted(self.exemplars):
            n = len(self.exemplars[c])
            if n:
                rows.append(F.normalize(features[start : start + n].mean(0), dim=0))
            start += n
        self.class_means = torch.stack(rows)

    def eval_logits(self, module: Any, x: Tensor, t: Tensor) -> Tensor | None:
        if not self.mean_classes:
            return None
        with capture_features(module.model, self.feature_layer) as out:
            module(x, t)
        width = max(self.mean_classes) + 1
        return nearest_mean_scores(out[-1], self.class_means, self.mean_classes, width)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "exemplars": {c: v.clone() for c, v in self.exemplars.items()},
            "task_labels": {c: v.clone() for c, v in self.task_labels.items()},
            "class_means": self.class_means.clone(),
            "mean_classes": list(self.mean_classes),
            "old_classes": list(self.old_classes),
            "teacher_state": self.teacher_state,
            "seed": self._seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.exemplars = {int(c): v.long() for c, v in state_dict["exemplars"].items()}
        self.task_labels = {int(c): v.long() for c, v in state_dict["task_labels"].items()}
        self.class_means = state_dict["class_means"].float()
        self.mean_classes = [int(c) for c in state_dict["mean_classes"]]
        self.old_classes = [int(c) for c in state_dict["old_classes"]]
        self.teacher_state = state_dict["teacher_state"]
        self._teacher = None
        self._seed = state_dict.get("seed")
