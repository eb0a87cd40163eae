"""An index view over a classification dataset: what an experience (or a replay buffer) holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

__all__ = ["DatasetView", "DirectRead", "direct_read", "gather", "targets_of"]


def targets_of(dataset: Any) -> Tensor:
    """Return the class labels of ``dataset`` as a 1-d ``long`` tensor, without reading any sample.

    Raises:
        ValueError: if the dataset has no ``targets`` attribute, or they are not 1-d integers.
    """
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(
            f"{type(dataset).__name__} has no `targets` attribute; splitting by class needs the labels "
            "as `dataset.targets` (a sequence or tensor of ints, one per sample)"
        )
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.is_floating_point():
        raise ValueError(
            f"`targets` of {type(dataset).__name__} must be 1-d integers, got dtype={targets.dtype} "
            f"shape={tuple(targets.shape)}"
        )
    return targets.long()


def gather(base: Any, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Read samples ``indices`` of ``base`` as one batch ``(x, y)``.

    One call of ``base.__getitems__`` where the base has it; otherwise one ``base[i]`` per sample
    and :func:`torch.utils.data.default_collate` (the fallback for any map-style dataset).

    Args:
        base: a map-style dataset whose items start with ``(x, y)``.
        indices: positions in ``base``.

    Returns:
        The inputs and the ``long`` targets of the samples.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> x, y = gather(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 2])), torch.tensor([2, 0]))
        >>> tuple(x.shape), y.tolist()
        ((2, 2), [2, 0])
    """
    getitems = getattr(base, "__getitems__", None)
    if getitems is not None:
        x, y = getitems(indices)[:2]
    else:
        x, y = default_collate([tuple(base[i])[:2] for i in indices.tolist()])
    return x, torch.as_tensor(y, dtype=torch.long)


@dataclass(frozen=True)
class DirectRead:
    """How to read samples of a dataset straight from its storage tensors.

    Sample ``i`` of the request is ``inputs[indices[i]]`` passed through ``transforms`` in order,
    with label ``targets[indices[i]]``. Wrappers that only re-index, relabel or transform whole
    batches (:class:`~lightning_cl.data.DomainDataset` for one domain, a relabelling, one part of
    a concatenation) resolve to the tensors they wrap, so a loader can read a batch with one
    gather and the transforms, skipping every wrapper's per-batch bookkeeping.

    Attributes:
        inputs: the storage tensor of the inputs.
        targets: the labels, indexed like ``inputs``.
        indices: positions in ``inputs`` of the requested samples, in request order.
        transforms: batched transforms applied to the gathered inputs, first to last.
    """

    inputs: Tensor
    targets: Tensor
    indices: Tensor
    transforms: tuple[Callable[[Tensor], Tensor], ...] = ()

    def read(self, leaf: Tensor) -> tuple[Tensor, Tensor]:
        """The batch ``(x, y)`` at positions ``leaf`` of ``inputs`` (entries of ``indices``)."""
        x = self.inputs.index_select(0, leaf)
        for transform in self.transforms:
            x = transform(x)
        return x, self.targets.index_select(0, leaf)

    def then(self, *transforms: Callable[[Tensor], Tensor] | None) -> DirectRead:
        """The same read followed by ``transforms`` (``None`` entries skipped)."""
        return replace(self, transforms=self.transforms + tuple(t for t in transforms if t is not None))


def direct_read(base: Any, indices: Tensor) -> DirectRead | None:
    """How to read samples ``indices`` of ``base`` straight from tensors, or ``None`` if it cannot.

    Datasets opt in with a ``direct_read(indices)`` method; any other dataset gives ``None`` and
    is read through ``__getitems__`` or ``__getitem__`` (see :func:`gather`).

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.arange(4.0), [0, 1, 0, 1])
        >>> plan = direct_read(ds, torch.tensor([3, 1]))
        >>> plan.read(plan.indices)[0].tolist()
        [3.0, 1.0]
    """
    resolve = getattr(base, "direct_read", None)
    return None if resolve is None else resolve(indices)


class DatasetView(Dataset):
    """Samples ``indices`` of ``base``, each with a task label; items are ``(x, y, t)``.

    A view never copies inputs: it holds the base dataset, the selected indices and one task
    label per selected sample. Reading a batch is one call of ``base.__getitems__`` where the
    base has it (see :class:`~lightning_cl.data.TensorClassificationDataset`), otherwise one
    ``base[i]`` per sample and :func:`torch.utils.data.default_collate`. Data loaders built on a
    view must pass ``collate_fn=lightning_cl.data.dataset_view.passthrough_collate`` (the loaders
    of :class:`~lightning_cl.data.Experience` do), because ``__getitems__`` returns a whole batch.

    Args:
        base: a map-style dataset whose items are ``(x, y)`` and which exposes ``targets``.
        indices: positions in ``base``.
        task_labels: one task label for all samples, or one per index.
        base_targets: the labels of ``base`` if already known (saves one conversion).

    Raises:
        ValueError: if an index is out of range or the task labels do not match the indices.
    """

    def __init__(
        self,
        base: Any,
        indices: Tensor | Sequence[int],
        task_labels: int | Tensor | Sequence[int] = 0,
        base_targets: Tensor | None = None,
    ):
        self.base = base
        self.base_targets = targets_of(base) if base_targets is None else base_targets
        self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(self.base_targets)):
            raise ValueError(
                f"indices must lie in [0, {len(self.base_targets)}), got range "
                f"[{int(self.indices.min())}, {int(self.indices.max())}]"
            )
        if isinstance(task_labels, int):
            self.task_labels = torch.full((len(self.indices),), task_labels, dtype=torch.long)
        else:
            self.task_labels = torch.as_tensor(task_labels, dtype=torch.long).reshape(-1)
            if len(self.task_labels) != len(self.indices):
                raise ValueError(
                    f"got {len(self.task_labels)} task labels for {len(self.indices)} indices; "
                    "pass one int or one label per index"
                )

    @property
    def targets(self) -> Tensor:
        """Class labels of the samples in this view."""
        return self.base_targets[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor, Tensor]:
        x, y, t = self.__getitems__([position])
        return x[0], y[0], t[0]

    def __getitems__(self, positions: Sequence[int] | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pos = torch.as_tensor(positions, dtype=torch.long)
        x, y = gather(self.base, self.indices.index_select(0, pos))
        return x, y, self.task_labels.index_select(0, pos)

    def direct_read(self) -> DirectRead | None:
        """How to read this view's samples straight from the base's tensors (see :class:`DirectRead`)."""
        return direct_read(self.base, self.indices)

    def subset(self, positions: Tensor | Sequence[int]) -> DatasetView:
        """A view of some of this view's samples (positions within this view)."""
        pos = torch.as_tensor(positions, dtype=torch.long)
        return DatasetView(self.base, self.indices[pos], self.task_labels[pos], self.base_targets)

    @staticmethod
    def concat(views: Sequence[DatasetView]) -> DatasetView:
        """Join views of the same base dataset into one view.

        Raises:
            ValueError: if ``views`` is empty or the views do not share one base dataset.
        """
        if not views:
            raise ValueError("concat needs at least one view")
        base = views[0].base
        if any(v.base is not base for v in views):
            raise ValueError("concat joins views of one base dataset; these views have different bases")
        return DatasetView(
            base,
            torch.cat([v.indices for v in views]),
            torch.cat([v.task_labels for v in views]),
            views[0].base_targets,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, base={type(self.base).__name__})"


def passthrough_collate(batch: Any) -> Any:
    """Collate function for loaders over :class:`DatasetView`: the batch is already assembled."""
    return batch
