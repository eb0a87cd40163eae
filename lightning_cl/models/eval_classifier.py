"""The extension point for evaluation-time classifiers: scores a callback gives in place of the logits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

if TYPE_CHECKING:
    from lightning_cl.models.module import ContinualModule

__all__ = ["EvalClassifier", "eval_classifier_of"]


class EvalClassifier:
    """A classifier that replaces the model's output layer when ``ContinualModule`` evaluates.

    Methods that train a network but classify with something else (iCaRL's nearest mean of
    exemplars, SCR's nearest class mean, a streaming LDA) subclass this class next to
    :class:`~lightning_cl.methods.ContinualCallback` and override :meth:`eval_logits`.
    ``ContinualModule``'s validation and test steps then use its scores in place of
    ``module(x, t)``: accuracy, the loss (cross-entropy of the scores) and every metric of the
    accuracy matrix record the replaced predictions. At most one callback of a trainer may be an
    ``EvalClassifier``; a second is refused at set-up. Training is unchanged.

    Example:
        >>> import torch
        >>> class AlwaysZero(EvalClassifier):
        ...     def eval_logits(self, module, x, t):
        ...         scores = torch.zeros(len(x), 3)
        ...         scores[:, 0] = 1.0
        ...         return scores
        >>> AlwaysZero().eval_logits(None, torch.zeros(2, 4), None).argmax(-1).tolist()
        [0, 0]
    """

    def eval_logits(self, module: ContinualModule, x: Tensor, t: Tensor) -> Tensor | None:
        """Scores ``(B, n)`` for the batch, whose argmax is the predicted class; ``None``: the logits.

        Args:
            module: the module being evaluated (in eval mode, under ``torch.no_grad``).
            x: the batch's inputs, on the module's device.
            t: the batch's task labels.

        Returns:
            A float tensor with one row per sample and one column per class (narrower than the
            benchmark's classes is allowed: the missing classes are never predicted); or
            ``None`` to let the model's own logits classify this batch (before the method has
            anything to classify with, say).
        """
        return None


def eval_classifier_of(callbacks: Iterable[Any]) -> EvalClassifier | None:
    """The one :class:`EvalClassifier` among ``callbacks``, if any.

    Raises:
        MisconfigurationException: if there are two or more; the message names them.

    Example:
        >>> eval_classifier_of([object(), EvalClassifier()]).__class__.__name__
        'EvalClassifier'
    """
    found = [c for c in callbacks if isinstance(c, EvalClassifier)]
    if len(found) > 1:
        names = ", ".join(type(c).__name__ for c in found)
        raise MisconfigurationException(
            f"{names} each replace the classifier at evaluation (EvalClassifier); at most one "
            "callback of a trainer may: keep one of them"
        )
    return found[0] if found else None
