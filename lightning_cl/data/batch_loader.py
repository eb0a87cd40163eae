"""The training and evaluation loader of in-memory and on-disk experiences: sharded, stateful, one plan."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_cl.data.dataset_view import DatasetView, DirectRead, passthrough_collate
from lightning_cl.data.random_state import rng_state, set_rng_state

__all__ = ["BatchLoader"]


class BatchLoader:
    """Batches ``(x, y, t)`` of a :class:`DatasetView`, sharded by rank and resumable mid-pass.

    Every pass follows one plan: the order of the pass (a permutation drawn from
    ``seed + epoch``, or ``0..n-1``), sharded the way ``torch.utils.data.DistributedSampler``
    shards (padded to a multiple of ``world_size`` by repeating its start; rank ``r`` takes every
    ``world_size``-th position from ``r``), cut into batches. All ranks agree on the order, and
    every rank gets the same number of batches.

    Where the batches are read depends on ``num_workers`` and ``pin_memory``, never what they
    hold. In the main process (the default) a batch is one ``__getitems__`` call of the view, or,
    where the view resolves to storage tensors (:meth:`DatasetView.direct_read`), one gather of
    the inputs, the transforms and one gather of the labels: no ``DataLoader`` machinery (about
    30 us a batch, as much as gathering and normalising 128 MNIST images). With workers or
    pinning, a ``DataLoader`` built once reads the same batches of positions in its workers.
    Lightning re-shards only ``DataLoader`` objects, so this loader, which is not one, keeps its
    own sharding (and a replay memory's ``num_samples``) under DDP on both paths.

    The loader is stateful (``state_dict`` / ``load_state_dict``, which Lightning saves and
    restores through the fit loop): the seed, the pass and the position in it, and the global
    random states at the time of saving, so a resumed fit reads the rest of the pass in the same
    order and draws the same random numbers as a fit that never stopped.

    Args:
        dataset: the samples.
        batch_size: samples per batch.
        shuffle: a new random order at every pass.
        drop_last: drop the last incomplete batch.
        num_samples: samples per pass, drawn in whole reshuffled passes over ``dataset`` (a replay
            memory drawn as often as the current data has batches); default: ``len(dataset)``.
        transform: applied to every batch (a batched augmentation); in the workers when there are any.
        seed: base seed of the shuffled orders.
        rank: this process's rank.
        world_size: number of processes sharing the data.
        num_workers: worker processes reading the batches (0: the main process).
        pin_memory: pin the batches in page-locked memory (reads through a ``DataLoader``).

    Raises:
        ValueError: for a batch size below 1, ``num_samples`` without ``shuffle`` or below 1, a
            rank outside ``[0, world_size)`` or a negative number of workers.

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
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if num_samples is not None and (num_samples < 1 or not shuffle):
            raise ValueError(f"num_samples must be a positive int and needs shuffle=True, got {num_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_samples = num_samples
        self.transform = transform
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.epoch = 0
        """Passes started so far; the next pass draws its order from ``seed + epoch``."""
        self.position = 0
        """Batches read in the current pass (pass ``epoch - 1``)."""
        self._resume = False
        self._plan: list[Tensor] = []
        self._dataloader: DataLoader[Any] | None = None

    def _per_rank(self) -> int:
        total = self.num_samples if self.num_samples is not None else len(self.dataset)
        return -(-total // self.world_size)

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """The positions this rank reads in pass ``epoch``, before ``drop_last``."""
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
        if self._resume and 0 < self.epoch and self.position < len(self):
            epoch, skip = self.epoch - 1, self.position
        else:
            epoch, skip = self.epoch, 0
            self.epoch, self.position = epoch + 1, 0
        self._resume = False
        order = self.order(epoch)[: len(self) * self.batch_size][skip * self.batch_size :]
        if self.num_workers == 0 and not self.pin_memory:
            batches = self._main_process_batches(order)
        else:
            batches = self._worker_batches(order)
        for batch in batches:
            self.position += 1
            yield batch

    def _main_process_batches(self, order: Tensor) -> Iterator[Any]:
        plan = self.dataset.direct_read() if len(order) else None
        if plan is None:
            batches: Iterator[Any] = (self.dataset.__getitems__(c) for c in order.split(self.batch_size))
        else:
            batches = self._direct_batches(plan, order)
        if self.transform is None:
            return batches
        return (self.transform(batch) for batch in batches)

    def _worker_batches(self, order: Tensor) -> Iterator[Any]:
        self._plan = list(order.split(self.batch_size))
        if self._dataloader is None:
            self._dataloader = DataLoader(
                self.dataset,  # type: ignore[arg-type]
                batch_sampler=_PlanSampler(self),  # type: ignore[arg-type]
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                collate_fn=self.transform or passthrough_collate,
                persistent_workers=self.num_workers > 0,
                # Worker seeds from the loader's own generator: the global random state is untouched.
                generator=torch.Generator().manual_seed(self.seed),
            )
        return iter(self._dataloader)

    def _direct_batches(self, plan: DirectRead, order: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        # The pass's storage positions in one gather; then per batch: inputs, transforms, labels.
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

    def state_dict(self) -> dict[str, Any]:
        """The seed, the pass (``epoch``: passes started), the batches read in it, the random states."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue where :meth:`state_dict` was taken: the next pass over the loader reads the
        rest of the saved pass (or the next one, if it was complete); the global random states
        are restored now."""
        self.seed = int(state_dict["seed"])
        self.epoch = int(state_dict["epoch"])
        self.position = int(state_dict["position"])
        self._resume = True
        if "rng" in state_dict:
            set_rng_state(state_dict["rng"])

    def __repr__(self) -> str:
        return (
            f"BatchLoader(n={len(self.dataset)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"rank={self.rank}/{self.world_size}, num_workers={self.num_workers})"
        )


class _PlanSampler:
    """The batch sampler of a :class:`BatchLoader`'s ``DataLoader``: the batches of its current pass."""

    def __init__(self, loader: BatchLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.loader._plan)

    def __len__(self) -> int:
        return len(self.loader._plan)
