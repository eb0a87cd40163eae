"""Dynamic classification heads that grow with the stream."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MASK_VALUE",
    "DynamicModule",
    "IncrementalClassifier",
    "MultiHeadClassifier",
    "copy_at_state",
    "pad_to",
    "slice_to",
]

MASK_VALUE = -1000.0
"""Logit given to output units of classes not seen yet (Avalanche's ``mask_value``)."""


def _check_shapes(value: Tensor, shape: Sequence[int], larger: bool) -> tuple[int, ...]:
    target = tuple(int(s) for s in shape)
    fits = len(target) == value.ndim and all(
        (s >= v) if larger else (s <= v) for s, v in zip(target, value.shape)
    )
    if not fits:
        relation = "at least" if larger else "at most"
        raise ValueError(
            f"shape must have {value.ndim} dimensions, each {relation} the value's {tuple(value.shape)}, "
            f"got {target}"
        )
    return target


def pad_to(value: Tensor, shape: Sequence[int], fill: float | bool = 0) -> Tensor:
    """``value`` grown to ``shape``: its entries at the leading positions, ``fill`` elsewhere.

    The inverse of :func:`slice_to`: a tensor recorded when a head was smaller (an importance,
    an anchor, recorded logits) brought to the parameter's or output's present shape. The new
    entries are ``fill`` (0 for importances, so new units are free; :data:`MASK_VALUE` for
    logits of classes the model cannot output yet). Differentiable; ``value`` itself is
    returned when it has the shape already.

    Args:
        value: the tensor recorded earlier.
        shape: the target shape, with as many dimensions, none smaller.
        fill: the value of the new entries.

    Returns:
        A tensor of ``shape``, with ``value``'s dtype and device.

    Raises:
        ValueError: if ``shape`` has another number of dimensions or a smaller one.

    Example:
        >>> pad_to(torch.tensor([[1.0, 2.0]]), (2, 3))
        tensor([[1., 2., 0.],
                [0., 0., 0.]])
        >>> pad_to(torch.tensor([[3.0]]), (1, 2), fill=MASK_VALUE)
        tensor([[    3., -1000.]])
    """
    target = _check_shapes(value, shape, larger=True)
    if tuple(value.shape) == target:
        return value
    out = value.new_full(target, fill)
    out[tuple(slice(0, s) for s in value.shape)] = value
    return out


def slice_to(value: Tensor, shape: Sequence[int]) -> Tensor:
    """The leading ``shape`` block of ``value``: a parameter or output as it was before a head grew.

    A dynamic head keeps its old units first, so the units that existed when something was
    recorded are the leading block. The result is a view (gradients flow to ``value``).

    Args:
        value: the present tensor (a parameter, logits).
        shape: the earlier shape, with as many dimensions, none larger.

    Returns:
        A view of ``value`` of ``shape``.

    Raises:
        ValueError: if ``shape`` has another number of dimensions or a larger one.

    Example:
        >>> slice_to(torch.arange(6).view(2, 3), (2, 2))
        tensor([[0, 1],
                [3, 4]])
    """
    target = _check_shapes(value, shape, larger=False)
    return value[tuple(slice(0, s) for s in target)]


class DynamicModule(nn.Module):
    """A module whose parameters may grow when a new experience arrives.

    :class:`~lightning_cl.models.ContinualModule` calls :meth:`adaptation` on every dynamic
    submodule in its ``setup("fit")`` hook, before the optimizer is built (and before DDP wraps
    the model). Loading a state dict of a grown module into a smaller one grows it first, so a
    checkpoint restores into a freshly built model.
    """

    def adaptation(self, classes: Iterable[int], task_labels: Tensor, targets: Tensor) -> None:
        """Grow for an experience with ``classes``; ``task_labels``/``targets`` are per sample."""
        raise NotImplementedError


def _grown_linear(old: nn.Linear, out_features: int) -> nn.Linear:
    new = nn.Linear(old.in_features, out_features, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    return new


class IncrementalClassifier(DynamicModule):
    """A linear classifier that adds output units when classes beyond its width arrive.

    Old units keep their weights; new units are freshly initialised. With ``masking`` (the
    default, as in Avalanche), units of classes not seen in any experience yet output
    :data:`MASK_VALUE`, so they neither win the argmax nor take probability mass.

    Args:
        in_features: size of the input features.
        initial_out_features: initial number of output units.
        masking: mask units of classes not seen yet.
        mask_value: the logit of masked units.

    Example:
        >>> head = IncrementalClassifier(4, initial_out_features=2)
        >>> head.adaptation([2, 3], torch.zeros(2, dtype=torch.long), torch.tensor([2, 3]))
        >>> head(torch.randn(5, 4)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_features: int,
        initial_out_features: int = 2,
        masking: bool = True,
        mask_value: float = MASK_VALUE,
    ):
        super().__init__()
        if in_features < 1 or initial_out_features < 1:
            raise ValueError(
                f"in_features and initial_out_features must be positive, got {in_features}, "
                f"{initial_out_features}"
            )
        self.classifier = nn.Linear(in_features, initial_out_features)
        self.masking = masking
        self.mask_value = mask_value
        self.active_units: Tensor
        self.register_buffer("active_units", torch.zeros(initial_out_features, dtype=torch.bool))

    @property
    def out_features(self) -> int:
        return self.classifier.out_features

    def _resize(self, out_features: int) -> None:
        if out_features <= self.out_features:
            return
        self.classifier = _grown_linear(self.classifier, out_features)
        active = torch.zeros(out_features, dtype=torch.bool, device=self.active_units.device)
        active[: len(self.active_units)] = self.active_units
        self.active_units = active

    def adaptation(
        self, classes: Iterable[int], task_labels: Tensor | None = None, targets: Any = None
    ) -> None:
        classes = [int(c) for c in classes]
        if not classes:
            return
        self._resize(max(classes) + 1)
        self.active_units[torch.tensor(classes, device=self.active_units.device)] = True

    def forward(self, x: Tensor) -> Tensor:
        out = self.classifier(x)
        if self.masking:
            out = out.masked_fill(~self.active_units, self.mask_value)
        return out

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        weight = state_dict.get(prefix + "classifier.weight")
        if weight is not None:
            self._resize(weight.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MultiHeadClassifier(DynamicModule):
    """One :class:`IncrementalClassifier` per task label, chosen by each sample's task label.

    A head is created the first time its task label appears in a training experience and
    grows to cover the classes of that task. The output has the width of the widest head used
    in the batch; units a task's head lacks, and every unit for a task label without a head,
    are :data:`MASK_VALUE`.

    Args:
        in_features: size of the input features.
        initial_out_features: initial width of each new head.
        masking: mask units of classes the task has not seen.
        mask_value: the logit of masked units.

    Example:
        >>> head = MultiHeadClassifier(4)
        >>> head.adaptation([0, 1], torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
        >>> head(torch.randn(3, 4), torch.zeros(3, dtype=torch.long)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        initial_out_features: int = 2,
        masking: bool = True,
        mask_value: float = MASK_VALUE,
    ):
        super().__init__()
        self.in_features = in_features
        self.initial_out_features = initial_out_features
        self.masking = masking
        self.mask_value = mask_value
        self.heads = nn.ModuleDict()

    def _new_head(self) -> IncrementalClassifier:
        head = IncrementalClassifier(
            self.in_features, self.initial_out_features, self.masking, self.mask_value
        )
        try:
            ref = next(self.parameters())
            head.to(device=ref.device, dtype=ref.dtype)
        except StopIteration:
            pass
        return head

    def adaptation(self, classes: Iterable[int], task_labels: Tensor, targets: Tensor) -> None:
        for task in torch.unique(task_labels).tolist():
            key = str(task)
            if key not in self.heads:
                self.heads[key] = self._new_head()
            head = self.heads[key]
            assert isinstance(head, IncrementalClassifier)
            head.adaptation(torch.unique(targets[task_labels == task]).tolist())

    def forward(self, x: Tensor, task_labels: Tensor) -> Tensor:
        tasks = torch.unique(task_labels).tolist()
        if len(tasks) == 1 and str(tasks[0]) in self.heads:
            return self.heads[str(tasks[0])](x)
        outs = {t: self.heads[str(t)](x[task_labels == t]) for t in tasks if str(t) in self.heads}
        width = max((o.shape[1] for o in outs.values()), default=self.initial_out_features)
        out = x.new_full((x.shape[0], width), self.mask_value)
        for t, o in outs.items():
            out[task_labels == t, : o.shape[1]] = o
        return out

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        head_prefix = prefix + "heads."
        order: list[str] = []
        for key in state_dict:
            if key.startswith(head_prefix):
                task = key[len(head_prefix) :].split(".", 1)[0]
                if task not in self.heads:
                    self.heads[task] = self._new_head()
                if task not in order:
                    order.append(task)
        # The saved order first (a head grown at set-up before a resume goes after), so that the
        # parameters, and the optimizer states restored by position, line up with the saved run.
        for task in [*order, *(t for t in self.heads if t not in order)]:
            self.heads[task] = self.heads._modules.pop(task)  # type: ignore[assignment]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def copy_at_state(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``state``, saved from it earlier, when its heads may have been smaller.

    Loading a state dict grows dynamic heads but never shrinks them; a frozen earlier model (a
    distillation teacher) restored after the live model has grown needs its heads at their
    saved widths. The copy's incremental heads are cut to the saved widths, and heads of tasks
    absent from ``state`` are dropped, before the state is loaded (strictly).

    Args:
        model: the live model, whose structure is copied.
        state: a ``state_dict()`` of the same model taken earlier.

    Returns:
        A deep copy of ``model`` with the weights of ``state``.

    Example:
        >>> head = IncrementalClassifier(3, 2)
        >>> earlier = {k: v.clone() for k, v in head.state_dict().items()}
        >>> head.adaptation([4])
        >>> copy_at_state(head, earlier).out_features, head.out_features
        (2, 5)
    """
    copy = deepcopy(model)
    for name, module in list(copy.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(module, MultiHeadClassifier):
            saved = {k[len(prefix) + 6 :].split(".", 1)[0] for k in state if k.startswith(f"{prefix}heads.")}
            for task in [t for t in module.heads if t not in saved]:
                del module.heads[task]
        elif isinstance(module, IncrementalClassifier):
            weight = state.get(prefix + "classifier.weight")
            if weight is not None and weight.shape[0] < module.out_features:
                old = module.classifier
                module.classifier = nn.Linear(
                    old.in_features, weight.shape[0], device=old.weight.device, dtype=old.weight.dtype
                )
                module.active_units = module.active_units[: weight.shape[0]].clone()
    copy.load_state_dict(state)
    return copy
