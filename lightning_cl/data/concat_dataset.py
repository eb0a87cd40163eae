"""Several classification datasets joined into one (one experience per dataset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.data.dataset_view import DirectRead, direct_read, gather, targets_of

__all__ = ["ConcatClassificationDataset"]


class ConcatClassificationDataset(Dataset):
    """The samples of ``datasets`` one after the other, read a batch at a time.

    Unlike :class:`torch.utils.data.ConcatDataset` it exposes ``targets`` and reads a batch with
    one gather per dataset it touches. Inputs of all datasets must have one shape and dtype.

    Args:
        datasets: map-style datasets of ``(x, y)`` with ``targets``.

    Raises:
        ValueError: if ``datasets`` is empty or one of them has no ``targets``.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> a = TensorClassificationDataset(torch.zeros(2, 1), [0, 1])
        >>> b = TensorClassificationDataset(torch.ones(3, 1), [2, 2, 3])
        >>> ds = ConcatClassificationDataset([a, b])
        >>> ds.targets.tolist(), ds.__getitems__([4, 0])[0].flatten().tolist()
        ([0, 1, 2, 2, 3], [1.0, 0.0])
    """

    def __init__(self, datasets: Sequence[Any]):
        if len(datasets) == 0:
            raise ValueError("ConcatClassificationDataset needs at least one dataset")
        self.datasets = list(datasets)
        parts = [targets_of(d) for d in self.datasets]
        self.targets = torch.cat(parts)
        self.offsets = torch.tensor([0, *torch.tensor([len(p) for p in parts]).cumsum(0).tolist()])

    def ranges(self) -> list[Tensor]:
        """The indices of each dataset's samples, in order."""
        return [torch.arange(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def __len__(self) -> int:
        return len(self.targets)

    def direct_read(self, indices: Tensor) -> DirectRead | None:
        """For indices within one of the datasets: that dataset's direct read."""
        if not len(indices):
            return None
        low, high = indices.aminmax()
        which = torch.bucketize(torch.stack([low, high]), self.offsets[1:], right=True).tolist()
        if which[0] != which[1]:
            return None
        return direct_read(self.datasets[which[0]], indices - self.offsets[which[0]])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        which = torch.bucketize(idx, self.offsets[1:], right=True)
        xs: Tensor | None = None
        ys = torch.empty(len(idx), dtype=torch.long)
        for d in torch.unique(which).tolist():
            mask = which == d
            x, y = gather(self.datasets[d], idx[mask] - self.offsets[d])
            if xs is None:
                xs = x.new_empty((len(idx), *x.shape[1:]))
            xs[mask] = x
            ys[mask] = y
        if xs is None:
            xs = torch.empty(0)
        return xs, ys

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, datasets={len(self.datasets)})"
