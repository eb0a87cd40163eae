"""The extension point for extra training data: loaders a trainer callback adds next to an experience's."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from lightning_cl.data.experience import Experience

__all__ = ["TrainDataSource", "current_data_source"]


class TrainDataSource:
    """A source of extra training loaders, found among the trainer's callbacks by ``Experience``.

    :meth:`Experience.train_dataloader <lightning_cl.data.Experience.train_dataloader>` asks
    every trainer callback that is an instance of this class for its loaders. When any returns
    one, the training batch becomes a dict ``{"current": (x, y, t), <name>: (x, y, t), ...}``
    (Lightning combines the loaders in ``max_size_cycle`` mode). The CL methods
    (``ContinualCallback``) inherit it; a replay memory returns its loader here.

    A method that trains on other data than the experience's (GDumb trains on its memory alone)
    overrides :meth:`current_dataloader`: the loader it returns takes the place of the
    experience's own, as ``"current"``. It should be built with
    :meth:`Experience.loader <lightning_cl.data.Experience.loader>` over a view of the stream's
    data, so that it is sharded over DDP ranks, augmented, and resumed mid-experience (its state
    is checkpointed with the experience's loaders) like the experience's own. At most one
    callback of a trainer may override it (refused when the fit sets up:
    :func:`current_data_source`); whether extra loaders make sense beside it is the method's to
    check.

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

    def current_dataloader(self, experience: Experience) -> Iterable[Any] | None:
        """The loader to train on in place of the experience's own, or ``None`` to keep it (default).

        Called by ``Experience.train_dataloader`` at every fit, after Lightning restored the
        callbacks' state on a resume, before :meth:`train_dataloaders` (which then receive it as
        ``current``). Its length is the number of steps of an epoch.

        Args:
            experience: the experience being trained.

        Returns:
            A loader yielding batches ``(x, y, t)``, or ``None``.

        Example:
            >>> from lightning_cl.data import SplitDigits
            >>> class FirstHalf(TrainDataSource):
            ...     def current_dataloader(self, experience):
            ...         data = experience.dataset
            ...         return experience.loader(data.subset(range(len(data) // 2)), train=True)
            >>> exp = SplitDigits().train_stream[0]
            >>> len(FirstHalf().current_dataloader(exp)) < len(exp.train_dataloader())
            True
        """
        return None


def current_data_source(callbacks: Iterable[Any]) -> TrainDataSource | None:
    """The one callback among ``callbacks`` that overrides :meth:`TrainDataSource.current_dataloader`.

    Raises:
        MisconfigurationException: if two or more do; the message names them.
    """
    found = [
        c
        for c in callbacks
        if isinstance(c, TrainDataSource)
        and type(c).current_dataloader is not TrainDataSource.current_dataloader
    ]
    if len(found) > 1:
        names = ", ".join(type(c).__name__ for c in found)
        raise MisconfigurationException(
            f"{names} each replace the experience's training data (TrainDataSource.current_dataloader); "
            "at most one callback of a trainer may: keep one of them"
        )
    return found[0] if found else None
