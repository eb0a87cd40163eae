"""Less-forgetful learning (Jung et al., 2016): keep the features close to the previous model's."""

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
from torch.utils.hooks import RemovableHandle

from lightning_cl.data.batch import Batch
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.features import resolve_layer
from lightning_cl.models.heads import copy_at_state

__all__ = ["LFL"]


class LFL(ContinualCallback):
    r"""LFL: a penalty on the distance between the features of the model and of its previous self.

    After each experience a frozen copy of the model is kept. Training a later experience adds

    .. math:: \lambda_e \, \mathrm{MSE}\big(h(x), h^{old}(x)\big)

    on the current batch, with :math:`h` the output of the layer ``feature_layer`` (the
    penultimate features), and keeps the output layer ``head_layer`` at its values from the
    start of the experience, so the decision boundaries stay put (Jung et al., 2016, Sec. 3).

    Choices, stated:

    - The distance is the mean squared error over the batch and the feature units (Avalanche's
      ``LFLPlugin``); the paper's squared Euclidean norm is a constant multiple of it (the
      number of units), folded into :math:`\lambda_e`.
    - The head is held fixed by restoring its values after every optimizer step (any optimizer,
      momentum and weight decay included, and under DDP), not by ``requires_grad``. It fits the
      paper's setting, the same classes in every experience (domain-incremental, e.g.
      PermutedMNIST); with a class-incremental stream pass ``freeze_head=False``, or the new
      classes' units cannot learn.
    - The previous model runs in eval mode; the features of the model being trained are those
      of the step's first forward pass (the step's merged batch, replay included).

    Args:
        lambda_e: weight of the feature distance (>= 0), or one weight per experience (the
            experience's index picks it; experiences past the list's end take its last value).
        feature_layer: name (in ``model.named_modules()``) of the layer whose output are the features.
        head_layer: name of the output layer that is held fixed (``freeze_head``).
        freeze_head: hold ``head_layer`` at its values during every experience after the first.

    Raises:
        ValueError: for a negative or non-finite weight, an empty list or a non-bool
            ``freeze_head``; at set-up, for a model without ``feature_layer`` or ``head_layer``.
        MisconfigurationException: at set-up, when ``freeze_head`` would hold the output layer
            while the experience brings classes not seen before, or (already at the first
            experience) while that experience holds only some of the benchmark's ``n_classes``.

    Example:
        >>> LFL(lambda_e=[0.0, 1.0, 2.0]).weight(5)
        2.0
    """

    def __init__(
        self,
        lambda_e: float | Sequence[float] = 1.0,
        feature_layer: str = "features",
        head_layer: str = "head",
        freeze_head: bool = True,
    ):
        weights = [lambda_e] if isinstance(lambda_e, int | float) else list(lambda_e)
        if not weights or any(
            isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0
            for w in weights
        ):
            raise ValueError(
                f"lambda_e must be a finite number >= 0 or a non-empty list of them, got {lambda_e!r}"
            )
        if not isinstance(freeze_head, bool):
            raise ValueError(f"freeze_head must be a bool (True or False), got {freeze_head!r}")
        self.lambda_e = lambda_e
        self._weights = [float(w) for w in weights]
        self.feature_layer = feature_layer
        self.head_layer = head_layer
        self.freeze_head = bool(freeze_head)
        self.teacher_state: dict[str, Tensor] | None = None
        self._teacher: nn.Module | None = None
        self._hook: RemovableHandle | None = None
        self._features: Tensor | None = None
        self._head_values: list[tuple[Tensor, Tensor]] = []
        self._teacher_takes_tasks = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(lambda_e=str(self.lambda_e), feature_layer=self.feature_layer)

    def weight(self, experience_index: int) -> float:
        """:math:`\\lambda_e` for experience ``experience_index``."""
        return self._weights[min(int(experience_index), len(self._weights) - 1)]

    # ------------------------------------------------------------------ experience hooks
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        resolve_layer(module.model, self.feature_layer)  # a missing layer is named first
        if self.freeze_head:
            resolve_layer(module.model, self.head_layer)
            new = sorted(set(experience.classes_in_this_experience) - set(module.seen_classes))
            later = sorted(set(range(experience.n_classes)) - set(experience.classes_in_this_experience))
            if self.teacher_state is None and not module.seen_classes and later:
                # The first experience: a stream whose later experiences bring classes is refused
                # now, before anything trains.
                raise MisconfigurationException(
                    f"LFL holds the output layer {self.head_layer!r} at its values after the first "
                    f"experience (freeze_head=True), but experience {experience.index} holds "
                    f"{len(experience.classes_in_this_experience)} of the benchmark's "
                    f"{experience.n_classes} classes: the units of the classes {later} could never "
                    "learn. Pass LFL(freeze_head=False) for class-incremental streams"
                )
            if self.teacher_state is not None and new:
                raise MisconfigurationException(
                    f"LFL holds the output layer {self.head_layer!r} at its values (freeze_head=True), "
                    f"but experience {experience.index} brings new classes {new}, whose units could "
                    "then never learn: pass LFL(freeze_head=False) for class-incremental streams"
                )
        self._teacher = None
        self._attach(module)

    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._teacher = None  # rebuilt from the restored state at the next step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._head_values = []
        if self.freeze_head and self.teacher_state is not None:
            head = resolve_layer(pl_module.model, self.head_layer)  # type: ignore[arg-type]
            self._head_values = [(p, p.detach().clone()) for p in head.parameters()]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._features = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        with torch.no_grad():
            for param, value in self._head_values:
                param.copy_(value)

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._remove_hook()
        self._head_values = []
        self.teacher_state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self._teacher = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_hook()

    # ------------------------------------------------------------------ the penalty
    def _record(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if layer.training and self._features is None:
            self._features = output.flatten(1)

    def _attach(self, module: Any) -> None:
        self._remove_hook()
        self._hook = resolve_layer(module.model, self.feature_layer).register_forward_hook(self._record)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def teacher(self, module: Any) -> nn.Module | None:
        """The previous model, frozen and in eval mode (``None`` during the first experience)."""
        if self.teacher_state is None:
            return None
        if self._teacher is None:
            hooked = self._hook is not None
            self._remove_hook()  # the copy takes no hook of ours along
            try:
                teacher = copy_at_state(module.model, self.teacher_state).to(module.device)
            finally:
                if hooked:
                    self._attach(module)
            teacher.eval().requires_grad_(False)
            self._teacher = teacher
            self._teacher_takes_tasks = "task_labels" in inspect.signature(teacher.forward).parameters
        return self._teacher

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        """:math:`\\lambda_e` times the mean squared feature distance (a mean; float32)."""
        teacher = self.teacher(module)
        weight = self.weight(module.current_experience or 0)
        if teacher is None or self._features is None or weight == 0.0:
            return None
        x, _, t = batch
        old: list[Tensor] = []
        handle = resolve_layer(teacher, self.feature_layer).register_forward_hook(
            lambda _, __, out: old.append(out.flatten(1))
        )
        try:
            with torch.no_grad():
                teacher(x, t) if self._teacher_takes_tasks else teacher(x)
        finally:
            handle.remove()
        return weight * F.mse_loss(self._features.float(), old[0].float())

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_state": self.teacher_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher_state = state_dict.get("teacher_state")
        self._teacher = None
