"""A lean batch iterable for in-memory experiences: one gather per batch, no ``DataLoader``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from lightning_cl.data.dataset_view import DatasetView, DirectRead

__all__ = ["BatchLoader"]


class BatchLoader:
    """Batches ``(x, y, t)`` of a :class:`DatasetView`, each read with one ``__getitems__`` call.

    What a single-process ``DataLoader`` does for in-memory data, without its per-batch machinery
    (about 30 us a batch, as much as gathering and normalising 128 MNIST images). Where the view
    resolves to storage tensors (:meth:`DatasetView.direct_read`), a batch is one gather of the
    inputs, the transforms, and one gather of the labels; otherwise one ``__getitems__`` call. Lightning
    accepts any iterable with a length, but shards only ``DataLoader`` objects under DDP, so this
    loader shards itself the way ``DistributedSampler`` does: the order is padded to a multiple of
    ``world_size`` by repeating its start, and rank ``r`` takes every ``world_size``-th position
    from ``r``; every rank gets the same number of batches. A shuffled order is drawn from
    ``seed + epoch``, so all ranks agree on it; the epoch counts the passes over the loader.

    Args:
        dataset: the samples.
        batch_size: samples per batch.
        shuffle: a new random order at every pass.
        drop_last: drop the last incomplete batch.
        num_samples: samples per pass, drawn in whole reshuffled passes over ``dataset`` (a replay
            memory drawn as often as the current data has batches); default: ``len(dataset)``.
        transform: applied to every batch (a batched augmentation).
        seed: base seed of the shuffled orders.
        rank: this process's rank.
        world_size: number of processes sharing the data.

    Raises:
        ValueError: for a batch size below 1, ``num_samples`` without ``shuffle`` or below 1, or a
            rank outside ``[0, world_size)``.

    Example:
        >>> import torch
        >>> from lightning_cl.data import DatasetView, TensorClassificationDataset
        >>> view = DatasetView(TensorClassificationDataset(torch.zeros(10, 2), torch.arange(10)), range(10))
        >>> [b[1].tolist() for b in BatchLoader(view, 4, rank=1, world_size=2)]
        [[1, 3, 5, 7], [9]]
    """

    def __init__(
        self,
        dataset: DatasetView,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        num_samples: int | None = None,
        transform: Callable[[Any], Any] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size}")
        if num_samples is not None and (num_samples < 1 or not shuffle):
            raise ValueError(f"num_samples must be a positive int and needs shuffle=True, got {num_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_samples = num_samples
        self.transform = transform
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def _per_rank(self) -> int:
        total = self.num_samples if self.num_samples is not None else len(self.dataset)
        return -(-total // self.world_size)

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """The positions this rank reads in pass ``epoch``."""
        n = len(self.dataset)
        total = self.num_samples if self.num_samples is not None else n
        if self.shuffle and n:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            passes = -(-total // n)
            order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[:total]
        else:
            order = torch.arange(n)
        if self.world_size > 1 and len(order):
            padded = self._per_rank() * self.world_size
            order = order.repeat(-(-padded // len(order)))[:padded]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[Any]:
        order = self.order(self.epoch)
        self.epoch += 1
        plan = self.dataset.direct_read() if len(order) else None
        if plan is None:
            chunks = order.split(self.batch_size)
            batches: Iterator[Any] = (self.dataset.__getitems__(chunk) for chunk in chunks)
        else:
            batches = self._direct_batches(plan, order)
        for batch in batches:
            if self.drop_last and len(batch[1]) < self.batch_size:
                return
            yield batch if self.transform is None else self.transform(batch)

    def _direct_batches(self, plan: DirectRead, order: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        # The epoch's storage positions in one gather; then per batch: inputs, transforms, labels.
        leaves = plan.indices.index_select(0, order).split(self.batch_size)
        tasks = self.dataset.task_labels
        low, high = tasks.aminmax()
        if low == high:  # one task label (every experience built by a scenario generator)
            task = int(low)
            for leaf in leaves:
                x, y = plan.read(leaf)
                yield x, y, torch.full((len(leaf),), task, dtype=torch.long)
        else:
            for leaf, chunk in zip(leaves, order.split(self.batch_size)):
                x, y = plan.read(leaf)
                yield x, y, tasks.index_select(0, chunk)

    def __repr__(self) -> str:
        return (
            f"BatchLoader(n={len(self.dataset)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"rank={self.rank}/{self.world_size})"
        )
