"""An ordered sequence of experiences; as a datamodule, one evaluation loader per experience."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import lightning as L

from lightning_cl.data.experience import Experience

__all__ = ["Stream"]


class Stream(L.LightningDataModule):
    """A named, ordered sequence of :class:`Experience`.

    Iterate it to train (``for experience in stream: trainer.fit(module, datamodule=experience)``);
    pass it whole to ``trainer.test`` / ``trainer.validate`` to evaluate every experience at once:
    its ``test_dataloader()`` returns one loader per experience, so Lightning's
    ``dataloader_idx`` is the position in the stream. Slicing keeps the experiences' own
    ``index``, so ``stream[2:4]`` evaluates experiences 2 and 3 under those numbers.

    Args:
        name: the stream's name (``"train"``, ``"test"``, ``"valid"``).
        experiences: the experiences, in order.

    Raises:
        ValueError: if ``experiences`` is empty.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> stream = SplitDigits(n_experiences=5).test_stream
        >>> len(stream), [e.index for e in stream[1:3]]
        (5, [1, 2])
    """

    def __init__(self, name: str, experiences: Sequence[Experience]):
        super().__init__()
        if not experiences:
            raise ValueError(f"stream {name!r} needs at least one experience")
        self.name = name
        self.experiences = list(experiences)

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    @overload
    def __getitem__(self, item: int) -> Experience: ...

    @overload
    def __getitem__(self, item: slice) -> Stream: ...

    def __getitem__(self, item: int | slice) -> Experience | Stream:
        if isinstance(item, slice):
            return Stream(str(self.name), self.experiences[item])
        try:
            return self.experiences[item]
        except IndexError:
            raise IndexError(f"stream {self.name!r} has {len(self)} experiences, no index {item}") from None

    def __add__(self, other: Stream) -> Stream:
        """Concatenate two streams; the experiences keep their own ``index``.

        Example:
            >>> from lightning_cl.data import SplitDigits
            >>> stream = SplitDigits(n_experiences=5).train_stream
            >>> (stream[3:] + stream[:1]).indices
            [3, 4, 0]
        """
        if not isinstance(other, Stream):
            return NotImplemented
        name = self.name if self.name == other.name else f"{self.name}+{other.name}"
        return Stream(str(name), self.experiences + other.experiences)

    @staticmethod
    def concat(streams: Sequence[Stream], name: str | None = None) -> Stream:
        """Concatenate streams, in order; the experiences keep their own ``index``.

        Args:
            streams: the streams to join.
            name: the new stream's name (default: the first stream's).

        Returns:
            One stream with every experience of ``streams``.

        Raises:
            ValueError: if ``streams`` is empty.
        """
        if not streams:
            raise ValueError("concat needs at least one stream")
        return Stream(str(name or streams[0].name), [e for s in streams for e in s])

    @property
    def n_classes(self) -> int:
        """Number of classes of the benchmark the stream belongs to."""
        return self.experiences[0].n_classes

    @property
    def indices(self) -> list[int]:
        """The experiences' own indices, in stream order."""
        return [e.index for e in self.experiences]

    def test_dataloader(self) -> list[Iterable[Any]]:
        return [e.eval_loader(self.trainer) for e in self.experiences]

    def val_dataloader(self) -> list[Iterable[Any]]:
        return [e.eval_loader(self.trainer) for e in self.experiences]

    def predict_dataloader(self) -> list[Iterable[Any]]:
        return [e.eval_loader(self.trainer) for e in self.experiences]

    def __repr__(self) -> str:
        return f"Stream(name={self.name!r}, n_experiences={len(self)}, indices={self.indices})"

    __str__ = __repr__
