"""The extension point for extra training data: loaders a trainer callback adds next to an experience's."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_cl.data.experience import Experience

__all__ = ["TrainDataSource"]


class TrainDataSource:
    """A source of extra training loaders, found among the trainer's callbacks by ``Experience``.

    :meth:`Experience.train_dataloader <lightning_cl.data.Experience.train_dataloader>` asks
    every trainer callback that is an instance of this class for its loaders. When any returns
    one, the training batch becomes a dict ``{"current": (x, y, t), <name>: (x, y, t), ...}``
    (Lightning combines the loaders in ``max_size_cycle`` mode). The CL methods
    (``ContinualCallback``) inherit it; a replay memory returns its loader here.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> class Twice(TrainDataSource):
        ...     def train_dataloaders(self, experience, current):
        ...         return {"again": experience.loader(experience.dataset, train=True)}
        >>> exp = SplitDigits().train_stream[0]
        >>> sorted(Twice().train_dataloaders(exp, exp.train_dataloader()))
        ['again']
    """

    def train_dataloaders(self, experience: Experience, current: Sized) -> dict[str, Iterable[Any]]:
        """Extra training loaders, by name, to iterate next to ``current`` (default: none).

        Lightning combines them in ``max_size_cycle`` mode, so a loader with as many batches as
        ``current`` adds one batch to every training step. ``"current"`` is reserved.

        Args:
            experience: the experience being trained.
            current: the experience's own training loader (its length is the number of steps).

        Returns:
            Loaders by name; each yields batches ``(x, y, t)``.
        """
        return {}
