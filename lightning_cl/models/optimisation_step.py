"""The extension point for owned optimisation: a callback that runs the whole update of a training step."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_cl.data.batch import Batch

if TYPE_CHECKING:
    from lightning.pytorch.core.optimizer import LightningOptimizer

    from lightning_cl.models.module import ContinualModule

__all__ = [
    "InnerLossScaling",
    "OptimisationStep",
    "StepResult",
    "check_step_result",
    "inner_learning_rate",
    "optimisation_step_owner",
]


@dataclass(frozen=True)
class StepResult:
    """What an owned training step reports back to ``ContinualModule`` for its metrics and logs.

    Attributes:
        loss: the step's training loss, a scalar (detached or not; the module detaches it);
            logged as ``train/loss_step`` / ``train/loss_epoch`` as for any step.
        logits: the logits of the step's merged batch, ``(B, n_outputs)``, one row per row of the
            ``batch`` the owner was given (for ``train/acc``); the weights they were computed at
            are the owner's choice (its docstring states it).
        penalties: the penalties of other callbacks the step added, by name (logged as
            ``train/penalty/<name>``; what :meth:`ContinualModule.add_penalties` returns).
    """

    loss: Tensor
    logits: Tensor
    penalties: Mapping[str, Tensor] = field(default_factory=dict)


class OptimisationStep:
    """A trainer callback that owns the whole optimisation of each training step (meta-learning).

    Methods with inner loops (MER's Reptile steps, La-MAML's look-ahead updates) cannot be a
    loss term: the update is not one gradient step of one loss. A callback that subclasses this
    class (next to :class:`~lightning_cl.methods.ContinualCallback`) and overrides
    :meth:`optimisation_step` takes the step over through Lightning's manual optimisation:

    - At ``setup("fit")`` ``ContinualModule`` finds the owner (:func:`optimisation_step_owner`:
      at most one per trainer, a second is refused naming both) and sets
      ``automatic_optimization = False`` only when there is one. Lightning reads the property per
      batch and when it builds the optimizers (after ``setup``), so the switch takes effect in the
      same fit; an experience without an owner runs Lightning's automatic loop unchanged, at the
      cost of one attribute check per step.
    - ``training_step`` merges the batch (current data plus any replay loader) and calls
      :meth:`optimisation_step` with the module, the merged batch, which rows came from which
      loader, and ``module.optimizers()`` (a ``LightningOptimizer``). The owner updates the
      weights as it likes and returns a :class:`StepResult`; the module logs the train loss,
      accuracy and penalties from it as for any step.
    - ``global_step`` counts one per training step: an owner whose update ends in
      ``optimizer.step()`` (which runs the precision plugin and ``on_before_optimizer_step``
      callbacks such as gradient surgery) is counted by Lightning; an owner that writes the
      weights itself is counted by the module. More than one ``optimizer.step()`` per step is
      refused (``step_generator`` seeds, logged steps and checkpoints assume one).
    - Gradients: ``module.manual_backward(loss)`` applies the precision plugin's scaling and,
      under DDP, all-reduces the gradients through the DDP reducer. ``torch.autograd.grad`` and
      ``torch.func`` calls stay on their rank; an owner whose inner loops run per rank on
      different data must end with an all-reduce of its update
      (:func:`~lightning_cl.methods.all_reduce_tensors`) so that every rank holds the same weights.
    - Other callbacks' penalties: the owner adds them to the losses it optimises with
      :meth:`ContinualModule.add_penalties`. A callback replacing the task loss
      (``LossTerm.task_loss``) cannot combine with an owner (the owner defines its losses) and is
      refused at set-up, as are ``Trainer(gradient_clip_val=...)`` and
      ``accumulate_grad_batches != 1`` (Lightning does neither in manual optimisation: an owner
      clips with ``module.clip_gradients``).
    - Optimizer state: the module's optimizer is built, kept or reset per experience
      (``optimizer_policy``) and checkpointed as with automatic optimisation; epoch-interval
      learning-rate schedulers are stepped by the module at each epoch's end.

    An owner must also be a Lightning ``Callback`` (in practice a
    :class:`~lightning_cl.methods.ContinualCallback`): Lightning calls a callback's hooks before
    the module's set-up, so an owner that is no callback is refused when the fit starts
    (``TypeError`` naming it), as is a step that returns anything but a :class:`StepResult`.

    Example:
        >>> import torch
        >>> from lightning.pytorch.callbacks import Callback
        >>> class PlainSGD(Callback, OptimisationStep):  # a ContinualCallback in practice
        ...     def optimisation_step(self, module, batch, parts, optimizer):
        ...         x, y, t = batch
        ...         logits = module(x, t)
        ...         loss = torch.nn.functional.cross_entropy(logits, y)
        ...         # the other callbacks' penalties (EWC, SI, ...): an owner that skips this drops them
        ...         loss, penalties = module.add_penalties(loss, batch, logits)
        ...         optimizer.zero_grad()
        ...         module.manual_backward(loss)
        ...         optimizer.step()
        ...         return StepResult(loss.detach(), logits.detach(), penalties)
        >>> type(optimisation_step_owner([object(), PlainSGD()])).__name__
        'PlainSGD'
    """

    steps_optimizer: bool = False
    """Whether each step ends in one ``optimizer.step()`` with the update's gradient in ``.grad``.

    Only then do Lightning's ``on_before_optimizer_step`` hooks see the step; beside an owner
    that writes the weights itself (``False``), a callback whose ``needs_optimizer_step`` is set
    (SI, RWalk, GEM, A-GEM) is refused at set-up by :func:`optimisation_step_owner`.
    """

    def optimisation_step(
        self,
        module: ContinualModule,
        batch: Batch,
        parts: Mapping[str, slice],
        optimizer: LightningOptimizer,
    ) -> StepResult:
        """Update the module's weights for one training step.

        Args:
            module: the module being trained (in train mode; ``module.model`` is the network,
                ``module(x, t)`` its forward).
            batch: the merged training batch ``(x, y, t)`` on the training device.
            parts: which rows of ``batch`` came from which loader (``{"current": slice(0, B)}``
                and any replay loader's rows, see :func:`~lightning_cl.models.batch_parts`).
            optimizer: the module's optimizer, wrapped by Lightning; call ``optimizer.step()``
                at most once.

        Returns:
            The step's loss and logits (and penalties) for the module's metrics.
        """
        raise NotImplementedError(f"{type(self).__name__} must override optimisation_step")


def optimisation_step_owner(callbacks: Iterable[Any]) -> OptimisationStep | None:
    """The one callback among ``callbacks`` that owns the optimisation step, if any.

    Raises:
        TypeError: if an owner is not a Lightning ``Callback`` (Lightning would call hooks it
            lacks); the message names it.
        MisconfigurationException: if two or more do; the message names them. Also for a
            callback with ``needs_optimizer_step`` (SI, RWalk, GEM, A-GEM) beside an owner whose
            ``steps_optimizer`` is ``False``; the message names both and why.

    Example:
        >>> optimisation_step_owner([object()]) is None
        True
        >>> optimisation_step_owner([OptimisationStep()])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: OptimisationStep owns the optimisation step but is not a Lightning Callback...
    """
    owners = [c for c in callbacks if isinstance(c, OptimisationStep)]
    for owner in owners:
        if not isinstance(owner, Callback):
            name = type(owner).__name__
            raise TypeError(
                f"{name} owns the optimisation step but is not a Lightning Callback (Lightning calls "
                f"callback hooks such as setup on it): define it as class {name}(ContinualCallback, "
                "OptimisationStep), ContinualCallback from lightning_cl.methods"
            )
    if len(owners) > 1:
        names = ", ".join(type(c).__name__ for c in owners)
        raise MisconfigurationException(
            f"{names} each own the optimisation step (OptimisationStep); at most one callback of a "
            "trainer may run its own inner loop: keep one of them"
        )
    if not owners:
        return None
    owner = owners[0]
    if not getattr(owner, "steps_optimizer", False):
        for callback in callbacks:
            why = getattr(callback, "needs_optimizer_step", None)
            if callback is not owner and why:
                raise MisconfigurationException(
                    f"{type(callback).__name__} cannot be combined with {type(owner).__name__}: "
                    f"{type(callback).__name__} {why} (on_before_optimizer_step), but "
                    f"{type(owner).__name__} owns the optimisation step and writes the weights itself, "
                    f"without that step, so {type(callback).__name__} would silently do nothing. Keep one "
                    "of them (La-MAML with sync_update=True steps the optimizer and combines)"
                )
    return owner


def check_step_result(owner: object, result: object, n_rows: int) -> StepResult:
    """``result`` if it is what an owner's :meth:`~OptimisationStep.optimisation_step` must return.

    Args:
        owner: the callback whose step returned ``result`` (named in the errors).
        result: what it returned.
        n_rows: the rows of the batch it was given (the logits must have as many).

    Returns:
        ``result``, a :class:`StepResult`.

    Raises:
        TypeError: if ``result`` is not a :class:`StepResult` (``None`` included), or its loss or
            logits are not tensors.
        ValueError: if its loss is not a scalar, or its logits do not have ``n_rows`` rows.

    Example:
        >>> import torch
        >>> check_step_result(object(), StepResult(torch.tensor(0.5), torch.zeros(3, 2)), 3).logits.shape
        torch.Size([3, 2])
        >>> check_step_result(object(), None, 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: object.optimisation_step returned None; it must return a StepResult(...
    """
    name = type(owner).__name__
    if not isinstance(result, StepResult):
        shown = "None" if result is None else f"a {type(result).__name__} ({result!r:.60})"
        raise TypeError(
            f"{name}.optimisation_step returned {shown}; it must return a StepResult(loss, logits, "
            "penalties) from lightning_cl.models, the step's scalar loss and the logits of its batch"
        )
    for field_name in ("loss", "logits"):
        value = getattr(result, field_name)
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{name}.optimisation_step returned a StepResult whose {field_name} is a "
                f"{type(value).__name__}; it must be a tensor"
            )
    if result.loss.numel() != 1:
        raise ValueError(
            f"{name}.optimisation_step returned a loss of shape {tuple(result.loss.shape)}; it must be "
            "a scalar (one value)"
        )
    if result.logits.ndim != 2 or len(result.logits) != n_rows:
        raise ValueError(
            f"{name}.optimisation_step returned logits of shape {tuple(result.logits.shape)}; they must "
            f"be (B, n_outputs) with B = {n_rows}, one row per row of the batch it was given"
        )
    return result


# The precision plugins whose forward pass an owner's own gradients can go through.
_INNER_PRECISIONS = (MixedPrecision, HalfPrecision, DoublePrecision)


class InnerLossScaling:
    r"""Loss scaling for the gradients an owner takes itself (``torch.autograd.grad``) under mixed precision.

    Lightning's ``GradScaler`` (``trainer.precision_plugin.scaler`` under ``precision="16-mixed"``)
    scales only what goes through ``manual_backward``; an inner loop's ``torch.autograd.grad`` on
    an fp16 forward pass gets unscaled gradients, which underflow to zero below about
    :math:`6 \cdot 10^{-8}`. This object does what ``GradScaler`` does for them, with the
    trainer's scaler: :meth:`grad` differentiates ``loss * S`` (``S`` the scaler's scale as the
    step began) and divides the gradients by ``S``, and records whether they are finite;
    :meth:`finish`, once per training step, backs ``S`` off (``backoff_factor``) when any inner
    gradient of the step (on any rank) was not finite and otherwise counts the step towards
    growing it (``growth_factor`` every ``growth_interval`` clean steps), through the scaler's
    ``state_dict`` / ``load_state_dict``, so the scale is checkpointed with Lightning's. The
    owner skips the updates whose gradients were not finite (:meth:`where_finite`), as
    ``GradScaler.step`` skips the optimizer's.

    Without a scaler (32-, 64-bit, ``"bf16-mixed"``, ``"16-true"``, ``"bf16-true"``) the gradients
    are ``torch.autograd.grad``'s, unchecked, and :meth:`finish` does nothing. Other precision
    plugins (DeepSpeed's, FSDP's, Transformer Engine's, bitsandbytes') are refused by
    :meth:`for_trainer`.

    Args:
        scaler: a ``torch.amp.GradScaler`` (``None``: no scaling).

    Example:
        >>> scaling = InnerLossScaling(torch.amp.GradScaler("cpu", init_scale=1024.0))
        >>> w = torch.ones(1, requires_grad=True)
        >>> (g,) = scaling.grad((w * 3.0).sum(), [w])
        >>> g, bool(scaling.finite)
        (tensor([3.]), True)
    """

    def __init__(self, scaler: Any = None) -> None:
        enabled = scaler is not None and bool(scaler.is_enabled())
        self.scaler = scaler if enabled else None
        self.scale = float(self.scaler.get_scale()) if self.scaler is not None else 1.0
        self.finite: Tensor = torch.ones((), dtype=torch.bool)
        """Whether every gradient since this object was made (or :meth:`finish` ran) was finite."""

    @classmethod
    def for_trainer(cls, trainer: Any, owner: str) -> InnerLossScaling:
        """The scaling of ``trainer``'s precision plugin, for the owner named ``owner``.

        Raises:
            MisconfigurationException: for a precision plugin whose scaling an inner loop cannot
                follow (``DeepSpeedPrecision``, ``FSDPPrecision``, ...); the message names it.
        """
        plugin = getattr(trainer, "precision_plugin", None)
        if plugin is None:
            return cls(None)
        if not (type(plugin) is Precision or isinstance(plugin, _INNER_PRECISIONS)):
            raise MisconfigurationException(
                f"{owner} takes its own gradients (torch.autograd.grad) in its inner loop, which "
                f"{type(plugin).__name__} (Trainer(precision={getattr(trainer, 'precision', None)!r})) does "
                "not scale or shard for it: use precision '32-true', '64-true', '16-mixed', 'bf16-mixed', "
                "'16-true' or 'bf16-true' with a single-device or DDP strategy"
            )
        return cls(getattr(plugin, "scaler", None))

    def grad(
        self,
        loss: Tensor,
        inputs: Sequence[Tensor],
        create_graph: bool = False,
        retain_graph: bool | None = None,
    ) -> list[Tensor | None]:
        """``torch.autograd.grad(loss, inputs, allow_unused=True)``, through the scale, unscaled.

        Returns:
            One gradient per input (``None`` where unused); their finiteness is folded into
            :attr:`finite` (no host synchronisation).
        """
        if self.scaler is None:
            return list(
                torch.autograd.grad(
                    loss, inputs, allow_unused=True, create_graph=create_graph, retain_graph=retain_graph
                )
            )
        # scaler.scale: loss * S, and the scaler's lazy set-up on the loss's device.
        scaled = self.scaler.scale(loss)
        grads = torch.autograd.grad(
            scaled, inputs, allow_unused=True, create_graph=create_graph, retain_graph=retain_graph
        )
        out: list[Tensor | None] = [None if g is None else g / self.scale for g in grads]
        found = [torch.isfinite(g).all() for g in out if g is not None]
        if found:
            self.finite = self.finite.to(found[0].device) & torch.stack(found).all()
        return out

    def where_finite(self, step: Tensor) -> Tensor:
        """``step`` where the gradients so far were finite, zeros where they were not (a skipped update)."""
        if self.scaler is None:
            return step
        return torch.where(self.finite.to(step.device), step, torch.zeros_like(step))

    def finish(self, trainer: Any) -> bool:
        """Update the scaler once for the training step; whether the step's gradients were all finite.

        Under DDP every rank backs off when one rank found a non-finite gradient, so the scale
        stays the same on every rank.
        """
        if self.scaler is None:
            return True
        finite = self.all_finite(trainer)
        self.update(finite)
        return finite

    def all_finite(self, trainer: Any) -> bool:
        """Whether the gradients so far were finite on every rank (one host synchronisation)."""
        if self.scaler is None:
            return True
        bad = (~self.finite).float().reshape(1)
        if getattr(trainer, "world_size", 1) > 1:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad.item() > 0)

    def update(self, finite: bool) -> None:
        """Back the scale off (``finite=False``) or count a clean step towards growing it, as GradScaler."""
        if self.scaler is None:
            return
        state = self.scaler.state_dict()
        if not finite:
            state["scale"] = state["scale"] * state["backoff_factor"]
            state["_growth_tracker"] = 0
        else:
            state["_growth_tracker"] += 1
            if state["_growth_tracker"] >= state["growth_interval"]:
                state["scale"] = state["scale"] * state["growth_factor"]
                state["_growth_tracker"] = 0
        self.scaler.load_state_dict(state)
        self.scale = float(state["scale"])
        self.finite = torch.ones((), dtype=torch.bool)


def inner_learning_rate(lr: float | None, optimizers: Any, owner: str) -> float:
    """The learning rate of a method's own inner or virtual SGD step: ``lr``, or the optimizer's.

    ``lr=None`` means the first parameter group's learning rate of the module's (first)
    optimizer, read at each call, so a scheduler's changes carry over (MER's inner steps, MIR's
    virtual step).

    Args:
        lr: the method's own rate, or ``None``.
        optimizers: the module's optimizer (``LightningOptimizer`` or torch's), a sequence of
            them (``trainer.optimizers``), or ``None``.
        owner: the method's name, for the error.

    Returns:
        The rate.

    Raises:
        MisconfigurationException: for ``lr=None`` when there is no optimizer.

    Example:
        >>> sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
        >>> inner_learning_rate(None, [sgd], "MIR"), inner_learning_rate(0.1, None, "MIR")
        (0.05, 0.1)
    """
    if lr is not None:
        return lr
    first = optimizers[0] if isinstance(optimizers, Sequence) and optimizers else optimizers
    groups = getattr(first, "param_groups", None)
    if not groups:
        raise MisconfigurationException(
            f"{owner}(lr=None) takes the optimizer's learning rate, but the module has no optimizer: "
            f"give {owner} an lr, or the module an optimizer"
        )
    return float(groups[0]["lr"])
