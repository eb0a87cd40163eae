"""A dataset whose class ids are mapped through a table (class ids from zero per experience)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.data.dataset_view import DirectRead, direct_read, gather, targets_of

__all__ = ["RelabeledDataset"]


class RelabeledDataset(Dataset):
    """``base`` with each target ``y`` replaced by ``mapping[y]``; inputs untouched.

    One wrapper serves a whole stream, so every experience (and a replay buffer) indexes one base.

    Args:
        base: a map-style dataset of ``(x, y)`` with ``targets``.
        mapping: new id of every original class id (a lookup table indexed by the old id).

    Raises:
        ValueError: if the dataset has no ``targets`` or a target falls outside the table.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = RelabeledDataset(TensorClassificationDataset(torch.zeros(3, 1), [2, 0, 1]), [1, 0, 0])
        >>> ds.targets.tolist()
        [0, 1, 0]
    """

    def __init__(self, base: Any, mapping: Tensor | Sequence[int]):
        self.base = base
        self.mapping = torch.as_tensor(mapping, dtype=torch.long)
        original = targets_of(base)
        if len(original) and (int(original.max()) >= len(self.mapping) or int(original.min()) < 0):
            outside = int(original.max()) if int(original.max()) >= len(self.mapping) else int(original.min())
            raise ValueError(
                f"the mapping covers class ids 0..{len(self.mapping) - 1}, the data has class {outside}"
            )
        self.targets = self.mapping[original]

    def __len__(self) -> int:
        return len(self.targets)

    def direct_read(self, indices: Tensor) -> DirectRead | None:
        """The base's direct read with the labels mapped."""
        inner = direct_read(self.base, indices)
        return None if inner is None else replace(inner, targets=self.mapping[inner.targets])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        x, y = gather(self.base, torch.as_tensor(indices, dtype=torch.long))
        return x, self.mapping[y]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, base={type(self.base).__name__})"
