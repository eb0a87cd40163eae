"""One base dataset seen through several domain transforms (permuted, rotated, ... MNIST)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.data.dataset_view import DirectRead, direct_read, gather, targets_of
from lightning_cl.data.transforms import BatchTransform

__all__ = ["DomainDataset"]


class DomainDataset(Dataset):
    """``len(domains)`` copies of ``base``, copy ``d`` transformed by ``domains[d]``, none stored.

    Index ``d * len(base) + i`` is sample ``i`` of ``base`` in domain ``d``. Reading a batch
    gathers the raw samples once, applies each domain's batched transform to its part of the
    batch (one call per domain present, usually one), then the shared ``transform``
    (normalisation). Domain transforms therefore see raw inputs, as they do in Avalanche, where
    the permutation or rotation is applied to the image before ``ToTensor`` and ``Normalize``.
    Every experience of a domain-incremental stream is a view of this one dataset, so a replay
    buffer replays old samples in their own domain.

    Args:
        base: a map-style dataset of ``(x, y)`` with ``targets``, usually raw ``uint8`` tensors.
        domains: one batched transform per domain; each must keep the input shape.
        transform: batched transform applied after the domain transform.

    Raises:
        ValueError: if ``domains`` is empty or the base has no ``targets``.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> base = TensorClassificationDataset(torch.ones(4, 1, 2, 2), [0, 1, 0, 1])
        >>> ds = DomainDataset(base, [lambda x: x, lambda x: -x])
        >>> len(ds), ds.__getitems__([0, 5])[0].flatten(1)[:, 0].tolist()
        (8, [1.0, -1.0])
    """

    def __init__(self, base: Any, domains: Sequence[BatchTransform], transform: BatchTransform | None = None):
        if len(domains) == 0:
            raise ValueError("DomainDataset needs at least one domain transform")
        self.base = base
        self.domains = list(domains)
        self.transform = transform
        self.base_length = len(targets_of(base))
        self.targets = targets_of(base).repeat(len(self.domains))

    def __len__(self) -> int:
        return len(self.targets)

    def domain_indices(self, domain: int) -> Tensor:
        """The indices of every sample of ``domain``."""
        return torch.arange(domain * self.base_length, (domain + 1) * self.base_length)

    def direct_read(self, indices: Tensor) -> DirectRead | None:
        """For indices of one domain: the base's direct read, the domain's transform, ``transform``."""
        if not len(indices):
            return None
        low, high = indices.aminmax()
        domain = int(low) // self.base_length
        if int(high) // self.base_length != domain:
            return None
        inner = direct_read(self.base, indices - domain * self.base_length)
        return None if inner is None else inner.then(self.domains[domain], self.transform)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        first, single = 0, True
        if len(idx):
            low, high = idx.aminmax()
            first = int(low) // self.base_length
            single = int(high) // self.base_length == first
        if single:  # the usual case, one experience's batch: one domain, one subtraction
            x, y = gather(self.base, idx - first * self.base_length)
            x = self.domains[first](x)
        else:
            domain, local = idx // self.base_length, idx % self.base_length
            x, y = gather(self.base, local)
            parts: Tensor | None = None
            for d in torch.unique(domain).tolist():
                mask = domain == d
                part = self.domains[d](x[mask])
                if parts is None:
                    parts = part.new_empty((len(idx), *part.shape[1:]))
                parts[mask] = part
            assert parts is not None
            x = parts
        if self.transform is not None:
            x = self.transform(x)
        return x, y

    def __repr__(self) -> str:
        name = type(self.base).__name__
        return f"{type(self).__name__}(n={len(self)}, domains={len(self.domains)}, base={name})"
