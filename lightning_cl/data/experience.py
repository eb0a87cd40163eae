"""One experience of a continual-learning stream, as a ``LightningDataModule``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from lightning_cl.data.batch_loader import BatchLoader
from lightning_cl.data.dataset_view import DatasetView, passthrough_collate
from lightning_cl.data.train_data_source import TrainDataSource
from lightning_cl.data.transforms import BatchTransform

__all__ = ["AUGMENT_ON", "BatchAugmentation", "Experience", "TensorBatchSampler", "make_loader"]

AUGMENT_ON = ("auto", "loader", "device")

# An experience without validation data returns no validation loaders; Lightning then skips
# validation but warns about the empty list on every fit.
warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")


class BatchAugmentation:
    """Collate function that applies a batched transform to the inputs of an assembled batch.

    Used by the training loaders of experiences with a ``train_transform`` that augment in the
    loader (on CPU; see ``augment_on`` of :class:`Experience`): the view has already gathered
    (and normalised) the batch, so the augmentation is one call on ``(B, C, H, W)``. It runs
    where the loader runs: in the worker processes when there are any.

    Args:
        transform: the batched augmentation.

    Example:
        >>> aug = BatchAugmentation(lambda x: x + 1)
        >>> aug((torch.zeros(2), torch.tensor([0, 1]), torch.tensor([0, 0])))[0].tolist()
        [1.0, 1.0]
    """

    def __init__(self, transform: BatchTransform):
        self.transform = transform

    def __call__(self, batch: tuple[Any, ...]) -> tuple[Any, ...]:
        x, *rest = batch
        return (self.transform(x), *rest)


class TensorBatchSampler(BatchSampler):
    """A ``BatchSampler`` that yields each batch of positions as one ``long`` tensor.

    Datasets read through ``__getitems__`` (a :class:`DatasetView`) then index with the tensor
    directly, with no list of Python ints built and converted per batch. For the default
    samplers (sequential, or random without replacement) the whole epoch's order is one
    ``arange`` / ``randperm``; any other sampler (a ``DistributedSampler`` that Lightning puts
    in, a replay memory's ``RandomSampler(num_samples=...)``) is drawn once per epoch and cut
    into batches. Its signature is ``BatchSampler``'s, so Lightning can rebuild it around
    another sampler.

    Args:
        sampler: yields positions in the dataset.
        batch_size: positions per batch.
        drop_last: drop the last incomplete batch.

    Example:
        >>> from torch.utils.data import SequentialSampler
        >>> [b.tolist() for b in TensorBatchSampler(SequentialSampler(range(5)), 2, False)]
        [[0, 1], [2, 3], [4]]
    """

    def __iter__(self) -> Iterator[list[int]]:
        sampler = self.sampler
        if type(sampler) is SequentialSampler:
            order = torch.arange(len(sampler))
        elif type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
            order = torch.randperm(len(sampler.data_source), generator=sampler.generator)
        else:
            order = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        batches = order.split(self.batch_size)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        return iter(batches)  # type: ignore[arg-type]


def make_loader(
    dataset: DatasetView,
    batch_size: int,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
    transform: BatchTransform | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterable[Any]:
    """A loader over a :class:`DatasetView` that reads whole batches at once.

    In the main process (``num_workers=0``, no pinning, no custom ``sampler``) it is a
    :class:`~lightning_cl.data.batch_loader.BatchLoader`, which shards itself by ``rank`` and
    ``world_size``. Otherwise it is a standard ``DataLoader`` whose batches the view assembles
    from whatever indices the sampler yields; Lightning shards it under DDP (``rank`` and
    ``world_size`` are then ignored).

    Args:
        dataset: the view to read.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given).
        num_workers: worker processes (0: read in the main process, fastest for in-memory data).
        pin_memory: pin batches in page-locked memory.
        drop_last: drop the last incomplete batch.
        sampler: a sampler of positions in ``dataset`` (forces a ``DataLoader``).
        transform: a batched augmentation applied to every batch's inputs.
        num_samples: samples per epoch, drawn in whole reshuffled passes (needs ``shuffle``).
        seed: base seed of the shuffled orders of the main-process loader (the same on every rank).
        rank: this process's rank, for the main-process loader.
        world_size: number of processes, for the main-process loader.

    Returns:
        The loader; its batches are ``(x, y, t)``.

    Raises:
        ValueError: for ``batch_size < 1``.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> x, y, t = next(iter(make_loader(SplitDigits().train_stream[0].dataset, 16)))
        >>> tuple(x.shape), tuple(y.shape), tuple(t.shape)
        ((16, 1, 8, 8), (16,), (16,))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    collate = passthrough_collate if transform is None else BatchAugmentation(transform)
    if num_workers == 0 and not pin_memory and sampler is None:
        return BatchLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_samples=num_samples,
            transform=None if transform is None else collate,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
    if sampler is None:
        if shuffle:
            sampler = RandomSampler(dataset, num_samples=num_samples)
        else:
            sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_sampler=TensorBatchSampler(sampler, batch_size, drop_last),
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate,  # type: ignore[arg-type]
        persistent_workers=num_workers > 0,
    )


def _shared_seed(trainer: L.Trainer) -> int:
    """A seed drawn from torch's global generator on rank 0 and given to every rank."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(trainer.strategy.broadcast(seed, src=0)) if trainer.world_size > 1 else seed


class Experience(L.LightningDataModule):
    """The data of one experience: ``trainer.fit(module, datamodule=experience)`` trains on it.

    Batches are ``(x, y, t)``: inputs, class targets and task labels. The training loader
    shuffles the experience's data; CL callbacks that add data of their own (a replay buffer)
    contribute further loaders through
    :meth:`~lightning_cl.data.TrainDataSource.train_dataloaders`, and the training batch is
    then a dict ``{"current": (x, y, t), "replay": (x, y, t), ...}`` that
    :class:`~lightning_cl.models.ContinualModule` concatenates.

    Args:
        dataset: the experience's samples.
        index: position of the experience in its stream.
        classes_in_this_experience: the classes present in ``dataset``.
        n_classes: number of classes in the whole benchmark.
        stream_name: name of the stream the experience belongs to (``"train"``, ``"test"``, ...).
        batch_size: batch size of the training loader.
        eval_batch_size: batch size of the evaluation loaders (default: ``batch_size``).
        num_workers: loader workers; in-memory data is fastest with 0.
        pin_memory: pin batches for faster host-to-GPU copies.
        val_dataset: optional validation data of this experience.
        train_transform: batched augmentation of the training batches only (random crop, flip);
            evaluation batches are never augmented. Replay loaders built through
            :meth:`loader` with ``train=True`` are augmented too.
        augment_on: where ``train_transform`` runs: ``"loader"`` (on CPU, in the loader or its
            workers), ``"device"`` (in :meth:`on_after_batch_transfer`, on the batch Lightning has
            moved to the training device), or ``"auto"``: the device when the trainer trains on an
            accelerator, the loader on CPU.
        origin_experience: for a mini-experience of an online stream, the experience it was cut from.
        access_task_boundaries: whether methods may know where the origin experiences begin and
            end (``True`` for ordinary experiences; a flag for online streams).
        is_first_subexp: first mini-experience of its origin experience.
        is_last_subexp: last mini-experience of its origin experience.
        sub_stream_length: number of mini-experiences cut from the origin experience.

    Raises:
        ValueError: for a batch size below 1 or a negative number of workers.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> exp = SplitDigits(n_experiences=5).train_stream[0]
        >>> exp.index, exp.classes_in_this_experience, exp.task_labels
        (0, [0, 1], [0])
    """

    def __init__(
        self,
        dataset: DatasetView,
        *,
        index: int,
        classes_in_this_experience: Sequence[int],
        n_classes: int,
        stream_name: str = "train",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_dataset: DatasetView | None = None,
        train_transform: BatchTransform | None = None,
        augment_on: str = "auto",
        origin_experience: Experience | None = None,
        access_task_boundaries: bool = True,
        is_first_subexp: bool = True,
        is_last_subexp: bool = True,
        sub_stream_length: int = 1,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive int or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
        self.dataset = dataset
        self.val_dataset = val_dataset
        self.index = int(index)
        self.classes_in_this_experience = sorted(int(c) for c in classes_in_this_experience)
        self.n_classes = int(n_classes)
        self.stream_name = stream_name
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_transform = train_transform
        self.augment_on = augment_on
        self.origin_experience = origin_experience
        self.access_task_boundaries = bool(access_task_boundaries)
        self.is_first_subexp = bool(is_first_subexp)
        self.is_last_subexp = bool(is_last_subexp)
        self.sub_stream_length = int(sub_stream_length)
        # Loaders with worker processes are built once per experience and reused.
        self._cached_loaders: dict[str, Iterable[Any]] = {}
        # Augmentations deferred to the device, by key of the training batch (None: not a dict).
        self._device_transforms: dict[str | None, BatchTransform] = {}

    def replace(self, **changes: Any) -> Experience:
        """A copy of this experience with some constructor arguments changed.

        Args:
            changes: constructor arguments (``dataset``, ``index``, ``val_dataset``, ...).

        Returns:
            The new experience; unchanged arguments are shared with this one.

        Example:
            >>> from lightning_cl.data import SplitDigits
            >>> exp = SplitDigits().train_stream[1]
            >>> exp.replace(index=7).index, exp.replace(batch_size=8).classes_in_this_experience
            (7, [2, 3])
        """
        kwargs: dict[str, Any] = dict(
            dataset=self.dataset,
            index=self.index,
            classes_in_this_experience=self.classes_in_this_experience,
            n_classes=self.n_classes,
            stream_name=self.stream_name,
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            val_dataset=self.val_dataset,
            train_transform=self.train_transform,
            augment_on=self.augment_on,
            origin_experience=self.origin_experience,
            access_task_boundaries=self.access_task_boundaries,
            is_first_subexp=self.is_first_subexp,
            is_last_subexp=self.is_last_subexp,
            sub_stream_length=self.sub_stream_length,
        )
        kwargs.update(changes)
        dataset = kwargs.pop("dataset")
        return Experience(dataset, **kwargs)

    @property
    def task_labels(self) -> list[int]:
        """The distinct task labels of this experience (``[0]`` in class-incremental streams)."""
        return torch.unique(self.dataset.task_labels).tolist()

    @property
    def task_label(self) -> int:
        """The task label, for experiences with exactly one.

        Raises:
            ValueError: if the experience mixes task labels.
        """
        labels = self.task_labels
        if len(labels) != 1:
            raise ValueError(f"experience {self.index} has task labels {labels}; use `task_labels`")
        return labels[0]

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(
        self, dataset: DatasetView, *, train: bool, trainer: L.Trainer | None = None, **overrides: Any
    ) -> Iterable[Any]:
        """A loader over ``dataset`` with this experience's settings.

        Args:
            dataset: the data to load (this experience's, or a replay memory).
            train: shuffle and apply ``train_transform``; otherwise keep the order, no augmentation.
            trainer: the trainer whose processes share the data (default: the attached one).
            overrides: arguments of :func:`make_loader` that replace the experience's settings.

        Returns:
            A loader whose batches are ``(x, y, t)``. A training loader whose augmentation runs on
            the device (see ``augment_on``) yields the batches unaugmented and carries the
            augmentation as its ``device_transform`` attribute; :meth:`train_dataloader` hands
            it to :meth:`on_after_batch_transfer`.
        """
        trainer = trainer if trainer is not None else self.trainer
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            transform=self.train_transform if train else None,
        )
        if trainer is not None:
            kwargs.update(rank=trainer.global_rank, world_size=trainer.world_size)
            if train:
                kwargs["seed"] = _shared_seed(trainer)
        kwargs.update(overrides)
        deferred = kwargs["transform"] if train and self.augments_on_device(trainer) else None
        if deferred is not None:
            kwargs["transform"] = None
        loader = make_loader(dataset, **kwargs)
        if deferred is not None:
            loader.device_transform = deferred  # type: ignore[attr-defined]
        return loader

    def augments_on_device(self, trainer: L.Trainer | None = None) -> bool:
        """Whether ``train_transform`` runs on the batches moved to the device (see ``augment_on``)."""
        if self.augment_on != "auto":
            return self.augment_on == "device"
        trainer = trainer if trainer is not None else self.trainer
        return trainer is not None and trainer.strategy.root_device.type != "cpu"

    def _own_loader(
        self, key: str, dataset: DatasetView, train: bool, trainer: L.Trainer | None = None
    ) -> Iterable[Any]:
        if self.num_workers == 0:
            return self.loader(dataset, train=train, trainer=trainer)
        if key not in self._cached_loaders:
            self._cached_loaders[key] = self.loader(dataset, train=train, trainer=trainer)
        return self._cached_loaders[key]

    def eval_loader(self, trainer: L.Trainer | None = None) -> Iterable[Any]:
        """The evaluation loader of this experience's data, shared among ``trainer``'s processes."""
        return self._own_loader("eval", self.dataset, train=False, trainer=trainer)

    def train_dataloader(self) -> Any:
        current = self._own_loader("train", self.dataset, train=True)
        extra: dict[str, Iterable[Any]] = {}
        trainer = self.trainer
        if trainer is not None:
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, TrainDataSource):
                    extra.update(callback.train_dataloaders(self, current))  # type: ignore[arg-type]
        if "current" in extra:
            raise ValueError("a TrainDataSource returned a loader named 'current', which is reserved")
        loaders: dict[str | None, Iterable[Any]] = {"current": current, **extra} if extra else {None: current}  # type: ignore[dict-item]
        self._device_transforms = {
            key: loader.device_transform  # type: ignore[attr-defined]
            for key, loader in loaders.items()
            if getattr(loader, "device_transform", None) is not None
        }
        return current if not extra else {"current": current, **extra}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the device, where ``augment_on`` puts the augmentation there."""
        if not self._device_transforms or self.trainer is None or not self.trainer.training:
            return batch
        if None in self._device_transforms:
            return BatchAugmentation(self._device_transforms[None])(batch)
        batch = dict(batch)
        for key, transform in self._device_transforms.items():
            batch[key] = BatchAugmentation(transform)(batch[key])  # type: ignore[index]
        return batch

    def val_dataloader(self) -> Any:
        if self.val_dataset is None:
            return []
        return self._own_loader("val", self.val_dataset, train=False)

    def test_dataloader(self) -> Iterable[Any]:
        return self.eval_loader()

    def predict_dataloader(self) -> Iterable[Any]:
        return self.eval_loader()

    def teardown(self, stage: str) -> None:
        # Lightning sets `datamodule.trainer` and never clears it: every experience of a stream
        # would keep its finished Trainer alive (optimizer state, loaders, loops), so memory
        # would grow by about one optimizer state per experience.
        self.trainer = None

    def __repr__(self) -> str:
        return (
            f"Experience(stream={self.stream_name!r}, index={self.index}, n={len(self)}, "
            f"classes={self.classes_in_this_experience}, task_labels={self.task_labels})"
        )

    __str__ = __repr__
