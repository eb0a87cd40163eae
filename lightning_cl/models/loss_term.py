"""The extension point for loss terms: what a trainer callback adds to (or puts in place of)
``ContinualModule``'s loss."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_cl.data.batch import Batch

if TYPE_CHECKING:
    from lightning_cl.models.module import ContinualModule

__all__ = ["LossTerm", "batch_parts", "task_loss_owner"]


class LossTerm:
    """A term that :class:`~lightning_cl.models.ContinualModule` adds to its training loss.

    Lightning callbacks only see the loss after it is computed (``on_before_backward``), so a
    method that regularises training cannot change it. Instead, ``ContinualModule.training_step``
    asks every trainer callback that is an instance of this class for :meth:`penalty` and adds
    the returned terms to the task loss, in callback order.

    A method whose loss is not the criterion plus a term (ER-ACE's asymmetric cross-entropy,
    iCaRL's binary cross-entropy with distillation) overrides :meth:`task_loss` instead: what it
    returns takes the place of ``criterion(logits, y)``, and the penalties of all callbacks are
    still added to it. At most one callback of a trainer may replace the task loss; a second is
    refused at set-up (:func:`task_loss_owner`). When none does, a training step costs what it
    cost before (one check of an attribute cached at set-up). The CL methods
    (:class:`~lightning_cl.methods.ContinualCallback`) are ``LossTerm``\\ s; any Lightning
    ``Callback`` that also subclasses ``LossTerm`` takes part the same way.

    Example:
        >>> import torch
        >>> class Zero(LossTerm):
        ...     def penalty(self, module, batch, logits):
        ...         return logits.sum() * 0.0
        >>> Zero().name, float(Zero().penalty(None, None, torch.ones(2, 3)))
        ('zero', 0.0)
    """

    @property
    def name(self) -> str:
        """Short name of the term in logged keys (``train/penalty/<name>``); the class name, lower case."""
        return type(self).__name__.lower()

    def penalty(self, module: ContinualModule, batch: Batch, logits: Tensor) -> Tensor | None:
        """The term to add to this training step's loss, or ``None`` for nothing.

        The task loss it joins is a mean over the step's samples (``criterion`` with its default
        reduction), so a term that should weigh like one more loss is a mean over samples too; a
        regulariser on the weights (EWC, SI, MAS) is a sum over parameters times its strength.
        Each method's docstring says which it is.

        Args:
            module: the module being trained (its weights are ``module.parameters()``).
            batch: the training batch ``(x, y, t)`` of this step, merged (current data plus any
                replay), on the training device.
            logits: ``module(x, t)``, shape ``(B, n_outputs)``; part of the graph, so a term built
                on them back-propagates into the model.

        Returns:
            A scalar tensor (shape ``()``) on the parameters' device, differentiable with respect
            to them, in float32 (also under mixed precision: compute it from ``.float()`` values);
            or ``None``. A non-finite value stops the step (see ``ContinualModule``'s
            ``on_nonfinite``).
        """
        return None

    def task_loss(
        self, module: ContinualModule, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        """The task loss of this step in place of ``criterion(logits, y)``, or ``None`` to keep it.

        Only one callback of a trainer may override this method (checked at set-up). The
        penalties of every callback (this one's included) are added to what it returns.

        Args:
            module: the module being trained.
            batch: the merged training batch ``(x, y, t)``, as for :meth:`penalty`.
            logits: ``module(x, t)``, part of the graph.
            parts: which rows of the merged batch came from which loader, in order:
                ``{"current": slice(0, 32), "replay": slice(32, 64)}`` (the names of
                :meth:`~lightning_cl.data.TrainDataSource.train_dataloaders`); a batch from the
                experience's loader alone is ``{"current": slice(0, B)}``.

        Returns:
            A float32 scalar on the parameters' device, differentiable with respect to them; or
            ``None`` (the criterion's loss, for a step where the method has nothing to change).

        Example:
            >>> import torch
            >>> class CurrentOnly(LossTerm):
            ...     def task_loss(self, module, batch, logits, parts):
            ...         rows = parts["current"]
            ...         return torch.nn.functional.cross_entropy(logits[rows], batch[1][rows])
            >>> y = torch.tensor([0, 1, 1])
            >>> logits = torch.tensor([[9.0, 0.0], [0.0, 9.0], [9.0, 0.0]])
            >>> parts = {"current": slice(0, 2), "replay": slice(2, 3)}
            >>> round(float(CurrentOnly().task_loss(None, (None, y, None), logits, parts)), 4)
            0.0001
        """
        return None


def _overrides(obj: object, base: type, name: str) -> bool:
    return getattr(type(obj), name, None) is not getattr(base, name)


def task_loss_owner(callbacks: Iterable[Any]) -> LossTerm | None:
    """The one callback among ``callbacks`` that overrides :meth:`LossTerm.task_loss`, if any.

    Raises:
        MisconfigurationException: if two or more do (they cannot both replace the task loss);
            the message names them.

    Example:
        >>> class A(LossTerm):
        ...     def task_loss(self, module, batch, logits, parts):
        ...         return None
        >>> type(task_loss_owner([LossTerm(), A()])).__name__
        'A'
    """
    owners = [c for c in callbacks if isinstance(c, LossTerm) and _overrides(c, LossTerm, "task_loss")]
    if len(owners) > 1:
        names = ", ".join(type(c).__name__ for c in owners)
        raise MisconfigurationException(
            f"{names} each replace the task loss (LossTerm.task_loss); at most one callback of a "
            "trainer may: keep one of them"
        )
    return owners[0] if owners else None


def batch_parts(batch: Batch | Mapping[str, Batch | None]) -> dict[str, slice]:
    """Which rows of the merged batch (``merge_batch``'s order) came from which loader.

    Example:
        >>> import torch
        >>> b = (torch.zeros(3, 1), torch.zeros(3), torch.zeros(3))
        >>> batch_parts({"current": b, "replay": b})
        {'current': slice(0, 3, None), 'replay': slice(3, 6, None)}
    """
    if not isinstance(batch, Mapping):
        return {"current": slice(0, len(batch[1]))}
    parts, start = {}, 0
    for name, part in batch.items():
        if part is None:
            continue
        parts[name] = slice(start, start + len(part[1]))
        start += len(part[1])
    return parts
