"""Learning without Forgetting (Li and Hoiem, 2016)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.models.heads import MultiHeadClassifier, copy_at_state
from lightning_cl.models.loss_term import task_loss_owner

__all__ = ["LWF_TASK_LOSS_WEIGHTS", "LwF", "distillation_loss"]

LWF_TASK_LOSS_WEIGHTS = ("constant", "tasks_seen")
"""LwF's task-loss weights: ``"constant"`` (1, the paper) or ``"tasks_seen"`` (1/N, van de Ven et al.)."""


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    r"""Knowledge distillation: :math:`\mathrm{KL}(q_T \,\|\, p_T)`, averaged over the batch.

    :math:`q_T = \mathrm{softmax}(z^{teacher} / T)`, :math:`p_T = \mathrm{softmax}(z^{student} / T)`.
    It differs from the paper's cross-entropy :math:`-\sum q_T \log p_T` by the teacher's
    entropy, a constant: the same gradients, and zero when the student agrees with the teacher.
    Computed in float32.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(distillation_loss(z, z, 2.0))
        0.0
    """
    log_p = F.log_softmax(student.float() / temperature, dim=-1)
    log_q = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


def _is_weight(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


def _alphas(alpha: Any) -> list[float]:
    """``alpha`` as a non-empty list of finite numbers >= 0, one per experience; else a ``ValueError``."""
    if _is_weight(alpha):
        return [float(alpha)]
    if isinstance(alpha, Sequence) and not isinstance(alpha, str) and alpha:
        bad = [(i, a) for i, a in enumerate(alpha) if not _is_weight(a)]
        if not bad:
            return [float(a) for a in alpha]
        i, a = bad[0]
        raise ValueError(
            f"alpha must be a number >= 0 or a non-empty list of them, got {alpha!r} "
            f"(alpha[{i}] = {a!r} is not a finite number >= 0)"
        )
    raise ValueError(f"alpha must be a number >= 0 or a non-empty list of them, got {alpha!r}")


class LwF(ContinualCallback):
    r"""Learning without Forgetting: distil the previous model's outputs into the current one.

    After each experience a frozen copy of the model (the teacher) is kept. Training a later
    experience adds

    .. math:: \alpha \, \mathrm{KL}\big(\mathrm{softmax}(z^{old}/T) \,\|\, \mathrm{softmax}(z/T)\big)

    to the loss, on the classes the teacher has learnt: with a single head, the logits of
    every class seen so far, for every sample of the training batch (replayed samples
    included); with a :class:`~lightning_cl.models.MultiHeadClassifier`, each earlier task's
    head on the whole batch, restricted to that task's classes, summed over the earlier tasks
    (the paper's setting: new data through old heads).

    Choices, stated:

    - The teacher runs in eval mode (no dropout, frozen batch-norm statistics), as in the paper.
    - KL divergence rather than the paper's cross-entropy: the two differ by a constant, so
      the gradients are the same. No :math:`T^2` factor, as in the paper and Avalanche's
      ``LwFPlugin``, so ``alpha`` and ``temperature`` carry over from Avalanche unchanged.
    - ``alpha`` may be a list, one value per experience (index = experience trained, from 0,
      as in the published SplitMNIST set-up ``[0, 0.5, 1.33, 2.25, 3.2]``); experiences past
      its end use its last value (no error: a stream may be longer than the list).
    - The teacher's weights are part of the callback's checkpointed state (one copy of the
      model); under DDP every rank holds the same teacher, since the weights are synchronised.
    - ``task_loss_weight="tasks_seen"`` weighs the task loss of the :math:`N`-th experience
      (from 1) by :math:`1/N`, as van de Ven et al. (2019, "Three scenarios for continual
      learning", Sec. 4) and continual-learning-baselines' ``lwf_smnist`` (its ``LwFCEPenalty``)
      do: the step's loss is :math:`\frac1N \mathrm{criterion} + \alpha\,\mathrm{KD}`. It is
      carried by this callback's penalty, which then adds :math:`-(1 - \frac1N)` times the
      module's criterion on the step's batch (so the logged ``train/penalty/lwf`` can be
      negative); it therefore needs the task loss to be that criterion, and is refused beside a
      method that replaces the task loss (ER-ACE, iCaRL, generative replay, ...).

    Args:
        alpha: distillation weight, or one per experience.
        temperature: softmax temperature :math:`T > 0`.
        task_loss_weight: the task loss's weight, one of :data:`LWF_TASK_LOSS_WEIGHTS`.

    Raises:
        ValueError: for an ``alpha`` that is not a finite number >= 0 or a non-empty list of
            them, ``temperature <= 0`` or an unknown ``task_loss_weight``.
        MisconfigurationException: at set-up, for ``task_loss_weight="tasks_seen"`` beside a
            callback that replaces the task loss.

    Example:
        >>> lwf = LwF(alpha=[0.0, 0.5, 1.0], temperature=2.0)
        >>> lwf.alpha_for(1), lwf.alpha_for(7)
        (0.5, 1.0)
    """

    def __init__(
        self,
        alpha: float | Sequence[float] = 1.0,
        temperature: float = 2.0,
        task_loss_weight: str = "constant",
    ):
        alphas = _alphas(alpha)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not (math.isfinite(temperature) and temperature > 0)
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if task_loss_weight not in LWF_TASK_LOSS_WEIGHTS:
            raise ValueError(
                f"task_loss_weight must be one of {LWF_TASK_LOSS_WEIGHTS}, got {task_loss_weight!r}"
            )
        self.task_loss_weight = task_loss_weight
        self.alpha = [float(a) for a in alphas]
        self.temperature = float(temperature)
        self.teacher_state: dict[str, Tensor] | None = None
        self.seen_classes: dict[int, list[int]] = {}  # task label -> classes the teacher learnt
        self.current_experience: int | None = None
        self._teacher: nn.Module | None = None
        self._teacher_takes_tasks = False
        self._multi_head = False

    @property
    def state_key(self) -> str:
        if self.task_loss_weight == "constant":
            return self._generate_state_key(alpha=self.alpha, temperature=self.temperature)
        return self._generate_state_key(
            alpha=self.alpha, temperature=self.temperature, task_loss_weight=self.task_loss_weight
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.task_loss_weight == "tasks_seen":
            owner = task_loss_owner(trainer.callbacks)  # type: ignore[attr-defined]
            if owner is not None:
                raise MisconfigurationException(
                    f"LwF(task_loss_weight='tasks_seen') scales the module's criterion, but "
                    f"{type(owner).__name__} replaces the task loss: use task_loss_weight='constant' "
                    "beside it"
                )

    def alpha_for(self, experience_index: int) -> float:
        """The distillation weight while training experience ``experience_index``.

        ``alpha[experience_index]``, or the list's last value past its end.

        Raises:
            ValueError: for an ``experience_index`` that is not an int >= 0.
        """
        if (
            isinstance(experience_index, bool)
            or not isinstance(experience_index, int)
            or experience_index < 0
        ):
            raise ValueError(f"experience_index must be an int >= 0, got {experience_index!r}")
        return self.alpha[min(experience_index, len(self.alpha) - 1)]

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen model of the end of the last experience (``None`` before the first ends)."""
        return self._teacher

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self.current_experience = experience.index

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        data = experience.dataset
        targets, tasks = data.targets, data.task_labels
        for task in torch.unique(tasks).tolist():
            learnt = torch.unique(targets[tasks == task]).tolist()
            self.seen_classes[task] = sorted(set(self.seen_classes.get(task, [])) | set(learnt))
        state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self._set_teacher(module.model, state)
        self.teacher_state = state

    def _set_teacher(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        self._teacher = copy_at_state(model, state).eval().requires_grad_(False)
        self._teacher_takes_tasks = "task_labels" in inspect.signature(self._teacher.forward).parameters
        self._multi_head = any(isinstance(m, MultiHeadClassifier) for m in self._teacher.modules())

    def _teacher_logits(self, x: Tensor, t: Tensor) -> Tensor:
        assert self._teacher is not None
        with torch.no_grad():  # eval mode and no graph: the teacher is frozen
            return self._teacher(x, t) if self._teacher_takes_tasks else self._teacher(x)

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        r"""LwF's term: ``alpha_for(experience)`` times the distillation loss on the batch.

        A mean over the batch's samples of the KL divergence summed over the teacher's classes
        (:func:`distillation_loss`); with a multi-head model, the sum over the earlier tasks of
        one such mean each. A float32 scalar on the parameters' device (the logits'), whatever
        the training precision; ``None`` before the first experience ended or when the weight
        of this experience is 0.
        """
        if self._teacher is None and self.teacher_state is not None:  # restored from a checkpoint
            self._set_teacher(module.model, self.teacher_state)
        if self._teacher is None or not self.seen_classes:
            return None
        experience = self.current_experience or 0
        alpha = self.alpha_for(experience)
        rescale: Tensor | None = None
        if self.task_loss_weight == "tasks_seen" and experience > 0:
            # task loss + this term = criterion / N + alpha KD, N = experience + 1.
            rescale = -(1.0 - 1.0 / (experience + 1)) * module.criterion(logits, batch[1]).float()
        if alpha == 0.0:
            return rescale
        distilled = self._distillation(module, batch, logits, alpha)
        return distilled if rescale is None else distilled + rescale

    def _distillation(self, module: Any, batch: Batch, logits: Tensor, alpha: float) -> Tensor:
        assert self._teacher is not None
        x, _, t = batch
        reference = next(module.parameters())
        if next(self._teacher.parameters()).device != reference.device:
            self._teacher.to(reference.device)
        if not self._multi_head:
            columns = sorted({c for classes in self.seen_classes.values() for c in classes})
            old = self._teacher_logits(x, t)
            return alpha * distillation_loss(logits[:, columns], old[:, columns], self.temperature)
        total = logits.new_zeros((), dtype=torch.float32)
        for task, columns in self.seen_classes.items():
            as_task = torch.full_like(t, task)
            old = self._teacher_logits(x, as_task)
            new = logits if bool((t == task).all()) else module(x, as_task)
            total = total + distillation_loss(new[:, columns], old[:, columns], self.temperature)
        return alpha * total

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher_state, "seen_classes": self.seen_classes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher_state = state_dict["teacher"]
        self.seen_classes = {int(k): list(v) for k, v in state_dict["seen_classes"].items()}
        self._teacher = None  # rebuilt from the live model's structure at the next training step
