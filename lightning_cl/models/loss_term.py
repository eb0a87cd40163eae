"""The extension point for loss terms: what a trainer callback adds to ``ContinualModule``'s loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from lightning_cl.data.batch import Batch

if TYPE_CHECKING:
    from lightning_cl.models.module import ContinualModule

__all__ = ["LossTerm"]


class LossTerm:
    """A term that :class:`~lightning_cl.models.ContinualModule` adds to its training loss.

    Lightning callbacks only see the loss after it is computed (``on_before_backward``), so a
    method that regularises training cannot change it. Instead, ``ContinualModule.training_step``
    asks every trainer callback that is an instance of this class for :meth:`penalty` and adds
    the returned terms to the task loss, in callback order. The CL methods
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
