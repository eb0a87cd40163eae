"""One experience of a continual-learning stream, as a ``LightningDataModule``."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning as L
import torch

from lightning_cl.data.batch_loader import BatchLoader
from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.train_data_source import TrainDataSource, current_data_source
from lightning_cl.data.transforms import BatchTransform

if TYPE_CHECKING:
    from lightning_cl.data.online import OnlineOrigin

__all__ = ["BatchAugmentation", "Experience", "make_loader"]

# An experience without validation data returns no validation loaders; Lightning then skips
# validation but warns about the empty list on every fit.
warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")


class BatchAugmentation:
    """Collate function that applies a batched transform to the inputs of an assembled batch.

    Used by the training loaders of experiences with a ``train_transform`` that augment in the
    loader (on CPU; see :attr:`LoaderSettings.augment_on`): the view has already gathered (and
    normalised) the batch, so the augmentation is one call on ``(B, C, H, W)``. It runs where the
    loader reads: in the worker processes when there are any.

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


def make_loader(
    dataset: DatasetView,
    batch_size: int,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    transform: BatchTransform | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> BatchLoader:
    """A loader over a :class:`DatasetView` that reads whole batches at once.

    A :class:`~lightning_cl.data.BatchLoader`: sharded by ``rank`` and ``world_size`` the way
    ``DistributedSampler`` shards, stateful, and the same batches whether it reads in the main
    process or, with ``num_workers`` or ``pin_memory``, through a ``DataLoader``.

    Args:
        dataset: the view to read.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch.
        num_workers: worker processes (0: read in the main process, fastest for in-memory data).
        pin_memory: pin batches in page-locked memory.
        drop_last: drop the last incomplete batch.
        transform: a batched augmentation applied to every batch's inputs.
        num_samples: samples per epoch, drawn in whole reshuffled passes (needs ``shuffle``).
        seed: base seed of the shuffled orders (the same on every rank).
        rank: this process's rank.
        world_size: number of processes.

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
    return BatchLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_samples=num_samples,
        transform=None if transform is None else BatchAugmentation(transform),
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


@runtime_checkable
class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def _constructor_fields(cls: type) -> tuple[str, ...]:
    """The keyword names of ``cls.__init__``: what :meth:`Experience.replace` copies."""
    return tuple(inspect.signature(cls).parameters)


def _shared_seed(trainer: L.Trainer) -> int:
    """A seed drawn from torch's global generator on rank 0 and given to every rank."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(trainer.strategy.broadcast(seed, src=0)) if trainer.world_size > 1 else seed


class Experience(L.LightningDataModule):
    """The data of one experience: ``trainer.fit(module, datamodule=experience)`` trains on it.

    Batches are ``(x, y, t)``: inputs, class targets and task labels. The training loader
    shuffles the experience's data; trainer callbacks that add data of their own (a replay
    buffer) contribute further loaders through
    :meth:`~lightning_cl.data.TrainDataSource.train_dataloaders`, and the training batch is
    then a dict ``{"current": (x, y, t), "replay": (x, y, t), ...}`` that
    :class:`~lightning_cl.models.ContinualModule` concatenates. One callback may replace the
    experience's own loader (:meth:`~lightning_cl.data.TrainDataSource.current_dataloader`:
    GDumb trains on its memory alone).

    Args:
        dataset: the experience's samples.
        index: position of the experience in its stream.
        classes_in_this_experience: the classes present in ``dataset``.
        n_classes: number of classes in the whole benchmark.
        stream_name: name of the stream the experience belongs to (``"train"``, ``"test"``, ...).
        loader_settings: batch sizes, workers, pinning and where augmentation runs (see
            :class:`LoaderSettings`); replay loaders built through :meth:`loader` follow them too.
        val_dataset: optional validation data of this experience.
        train_transform: batched augmentation of the training batches only (random crop, flip);
            evaluation batches are never augmented. Replay loaders built through :meth:`loader`
            with ``train=True`` are augmented too.
        online: for a mini-experience of an online stream, where it was cut from (see
            :func:`~lightning_cl.data.split_online`); ``None`` for an ordinary experience.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> exp = SplitDigits(n_experiences=5).train_stream[0]
        >>> exp.index, exp.classes_in_this_experience, exp.task_labels, exp.batch_size
        (0, [0, 1], [0], 32)
    """

    def __init__(
        self,
        dataset: DatasetView,
        *,
        index: int,
        classes_in_this_experience: Sequence[int],
        n_classes: int,
        stream_name: str = "train",
        loader_settings: LoaderSettings = LoaderSettings(),
        val_dataset: DatasetView | None = None,
        train_transform: BatchTransform | None = None,
        online: OnlineOrigin | None = None,
    ):
        super().__init__()
        if not isinstance(loader_settings, LoaderSettings):
            raise ValueError(
                "loader settings (a benchmark's loader=, an Experience's loader_settings=) must be a "
                f"lightning_cl.data.LoaderSettings, got {type(loader_settings).__name__}"
            )
        self.dataset = dataset
        self.index = int(index)
        self.classes_in_this_experience = sorted(int(c) for c in classes_in_this_experience)
        self.n_classes = int(n_classes)
        self.stream_name = stream_name
        self.loader_settings = loader_settings
        self.val_dataset = val_dataset
        self.train_transform = train_transform
        self.online = online
        # Loaders with worker processes are built once per experience and reused.
        self._cached_loaders: dict[str, Iterable[Any]] = {}
        # Augmentations deferred to the device, by key of the training batch (None: not a dict).
        self._device_transforms: dict[str | None, BatchTransform] = {}
        # The training loaders of the current fit, and loader states a checkpoint gave for the next one.
        self._train_loaders: list[_Stateful] = []
        self._loader_states_to_load: list[dict[str, Any]] | None = None

    def replace(self, **changes: Any) -> Experience:
        """A copy of this experience with some constructor arguments changed.

        Args:
            changes: constructor arguments (``dataset``, ``index``, ``loader_settings``, ...).

        Returns:
            The new experience; unchanged arguments are shared with this one.

        Raises:
            TypeError: for a name that is not a constructor argument.

        Example:
            >>> from lightning_cl.data import LoaderSettings, SplitDigits
            >>> exp = SplitDigits().train_stream[1]
            >>> other = exp.replace(index=7, loader_settings=LoaderSettings(batch_size=8))
            >>> other.index, other.batch_size, other.classes_in_this_experience
            (7, 8, [2, 3])
        """
        fields = _constructor_fields(type(self))
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise TypeError(
                f"Experience.replace() got unknown fields {unknown}; the fields are {list(fields)}"
            )
        kwargs = {name: changes.get(name, getattr(self, name)) for name in fields}
        return type(self)(kwargs.pop("dataset"), **kwargs)

    @property
    def batch_size(self) -> int:
        """The training batch size (``loader_settings.batch_size``)."""
        return self.loader_settings.batch_size

    @property
    def eval_batch_size(self) -> int:
        """The evaluation batch size (``loader_settings.eval_batch_size``, else ``batch_size``)."""
        return self.loader_settings.eval_size

    @property
    def access_task_boundaries(self) -> bool:
        """Whether methods may know where experiences begin and end (``False`` only for online
        streams cut without it)."""
        return self.online is None or self.online.access_task_boundaries

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
            the device (see :attr:`LoaderSettings.augment_on`) yields the batches unaugmented and carries the
            augmentation as its ``device_transform`` attribute; :meth:`train_dataloader` hands
            it to :meth:`on_after_batch_transfer`.
        """
        trainer = trainer if trainer is not None else self.trainer
        settings = self.loader_settings
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=settings.num_workers,
            pin_memory=settings.pin_memory,
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
        """Whether ``train_transform`` runs on the batches moved to the device (see
        :attr:`LoaderSettings.augment_on`)."""
        augment_on = self.loader_settings.augment_on
        if augment_on != "auto":
            return augment_on == "device"
        trainer = trainer if trainer is not None else self.trainer
        return trainer is not None and trainer.strategy.root_device.type != "cpu"

    def _own_loader(
        self, key: str, dataset: DatasetView, train: bool, trainer: L.Trainer | None = None
    ) -> Iterable[Any]:
        if self.loader_settings.num_workers == 0:
            return self.loader(dataset, train=train, trainer=trainer)
        if key not in self._cached_loaders:
            self._cached_loaders[key] = self.loader(dataset, train=train, trainer=trainer)
        return self._cached_loaders[key]

    def eval_loader(self, trainer: L.Trainer | None = None) -> Iterable[Any]:
        """The evaluation loader of this experience's data, shared among ``trainer``'s processes."""
        return self._own_loader("eval", self.dataset, train=False, trainer=trainer)

    def setup(self, stage: str) -> None:
        """At ``fit``: refuse two callbacks that would each replace the training data, before any
        callback's set-up changes a model or a memory."""
        if stage == "fit" and self.trainer is not None:
            current_data_source(self.trainer.callbacks)  # type: ignore[attr-defined]

    def train_dataloader(self) -> Any:
        trainer = self.trainer
        source = None if trainer is None else current_data_source(trainer.callbacks)  # type: ignore[attr-defined]
        replaced = None if source is None else source.current_dataloader(self)
        current = self._own_loader("train", self.dataset, train=True) if replaced is None else replaced
        extra: dict[str, Iterable[Any]] = {}
        owners: dict[str, str] = {}
        if trainer is not None:
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, TrainDataSource):
                    given = callback.train_dataloaders(self, current)  # type: ignore[arg-type]
                    for name in given:
                        if name in owners:  # one would silently replace the other
                            raise ValueError(
                                f"{type(callback).__name__} and {owners[name]} both return a training "
                                f"loader named {name!r}: name the loaders apart, or use one of the two"
                            )
                        owners[name] = type(callback).__name__
                    extra.update(given)
        if "current" in extra:
            raise ValueError("a TrainDataSource returned a loader named 'current', which is reserved")
        loaders: dict[str | None, Iterable[Any]] = {"current": current, **extra} if extra else {None: current}  # type: ignore[dict-item]
        self._device_transforms = {
            key: loader.device_transform  # type: ignore[attr-defined]
            for key, loader in loaders.items()
            if getattr(loader, "device_transform", None) is not None
        }
        self._train_loaders = [loader for loader in loaders.values() if isinstance(loader, _Stateful)]
        pending, self._loader_states_to_load = self._loader_states_to_load, None
        if pending is not None:
            if len(pending) != len(self._train_loaders):
                raise ValueError(
                    f"the checkpoint holds the state of {len(pending)} training loaders of experience "
                    f"{self.index}, but {len(self._train_loaders)} were built: resume with the callbacks "
                    "that wrote it"
                )
            for loader, state in zip(self._train_loaders, pending):
                loader.load_state_dict(state)
        return current if not extra else {"current": current, **extra}

    def state_dict(self) -> dict[str, Any]:
        """The state of the training loaders (seed, pass, position, random states), for checkpoints.

        Lightning restores a loader's state itself only when a checkpoint was written in the
        middle of an epoch; the experience's own state covers a checkpoint written at the end of an
        epoch too, so that a resumed fit continues with the next pass in the uninterrupted order.
        """
        return (
            {"train_loaders": [loader.state_dict() for loader in self._train_loaders]}
            if self._train_loaders
            else {}
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the loader states of a checkpoint for the training loaders the next fit builds."""
        if "train_loaders" in state_dict:
            self._loader_states_to_load = list(state_dict["train_loaders"])

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
        # would grow by about one optimizer state per experience. The fit's training loaders go
        # too (a replay loader's worker processes with them); the experience's own cached ones stay.
        self.trainer = None
        if stage == "fit":
            self._train_loaders = []

    def __repr__(self) -> str:
        return (
            f"Experience(stream={self.stream_name!r}, index={self.index}, n={len(self)}, "
            f"classes={self.classes_in_this_experience}, task_labels={self.task_labels})"
        )

    __str__ = __repr__
