"""One experience of a continual-learning stream, as a ``LightningDataModule``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_cl.data.dataset_view import DatasetView, passthrough_collate

__all__ = ["Experience", "make_loader"]

# An experience without validation data returns no validation loaders; Lightning then skips
# validation but warns about the empty list on every fit.
warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")


def make_loader(
    dataset: DatasetView,
    batch_size: int,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
) -> DataLoader:
    """A standard ``DataLoader`` over a :class:`DatasetView` that reads whole batches at once.

    Lightning may still replace the sampler (a ``DistributedSampler`` under DDP): batches are
    assembled by the view's ``__getitems__`` from whatever indices the sampler yields.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=passthrough_collate,
        persistent_workers=num_workers > 0,
    )


class Experience(L.LightningDataModule):
    """The data of one experience: ``trainer.fit(module, datamodule=experience)`` trains on it.

    Batches are ``(x, y, t)``: inputs, class targets and task labels. The training loader
    shuffles the experience's data; CL callbacks that add data of their own (a replay buffer)
    contribute further loaders through
    :meth:`~lightning_cl.methods.ContinualCallback.train_dataloaders`, and the training batch is
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
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive int or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
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

    def loader(self, dataset: DatasetView, *, train: bool, **overrides: Any) -> DataLoader:
        """A loader over ``dataset`` with this experience's settings (shuffled when ``train``)."""
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        kwargs.update(overrides)
        return make_loader(dataset, **kwargs)

    def train_dataloader(self) -> Any:
        current = self.loader(self.dataset, train=True)
        extra: dict[str, DataLoader] = {}
        trainer = self.trainer
        if trainer is not None:
            from lightning_cl.methods.base import ContinualCallback

            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, ContinualCallback):
                    extra.update(callback.train_dataloaders(self, current))
        if not extra:
            return current
        if "current" in extra:
            raise ValueError("a CL callback returned a loader named 'current', which is reserved")
        return {"current": current, **extra}

    def val_dataloader(self) -> Any:
        if self.val_dataset is None:
            return []
        return self.loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.dataset, train=False)

    def __repr__(self) -> str:
        return (
            f"Experience(stream={self.stream_name!r}, index={self.index}, n={len(self)}, "
            f"classes={self.classes_in_this_experience}, task_labels={self.task_labels})"
        )
