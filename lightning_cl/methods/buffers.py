"""Replay buffers that hold indices into the stream's datasets, chosen by a selection policy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_cl.data.dataset_view import DatasetView

__all__ = ["BUFFER_POLICIES", "ReplayBuffer"]

BUFFER_POLICIES = ("experience_balanced", "class_balanced", "reservoir")


class ReplayBuffer:
    """A fixed-size memory of samples, kept as indices into a base dataset.

    Every sample offered to the buffer draws a uniform random priority once; a group keeps its
    highest-priority samples, so shrinking a group keeps a uniform random subset of it and the
    buffer's content depends only on the seed and the data, never on the order of operations.

    Policies:

    - ``"experience_balanced"`` (Avalanche's ``ExperienceBalancedBuffer``): ``mem_size`` split
      equally among the experiences seen, each a random subset of its experience.
    - ``"class_balanced"`` (``ClassBalancedBuffer``): split equally among the classes seen.
    - ``"reservoir"`` (``ReservoirSamplingBuffer``): a uniform random subset of all samples
      seen, the same distribution as reservoir sampling over the stream.

    When ``mem_size`` does not divide evenly, the first groups (lowest experience or class
    index) get one sample more.

    Args:
        mem_size: maximum number of samples.
        policy: one of :data:`BUFFER_POLICIES`.

    Raises:
        ValueError: for ``mem_size < 0`` or an unknown policy.
    """

    def __init__(self, mem_size: int, policy: str = "experience_balanced"):
        if not isinstance(mem_size, int) or isinstance(mem_size, bool) or mem_size < 0:
            raise ValueError(f"mem_size must be an int >= 0, got {mem_size!r}")
        if policy not in BUFFER_POLICIES:
            raise ValueError(f"policy must be one of {BUFFER_POLICIES}, got {policy!r}")
        self.mem_size = mem_size
        self.policy = policy
        # group key -> (indices into the base dataset, task labels, priorities, targets), by priority desc.
        self.groups: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self.base_size: int | None = None

    def __len__(self) -> int:
        return sum(len(g[0]) for g in self.groups.values())

    def _cat(self, field: int, keys: list[int] | None = None) -> Tensor:
        keys = sorted(self.groups) if keys is None else keys
        if not keys:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([self.groups[k][field] for k in keys])

    @property
    def indices(self) -> Tensor:
        """Indices into the base dataset of every sample held, group by group (``long``, ``(len(self),)``)."""
        return self._cat(0)

    @property
    def task_labels(self) -> Tensor:
        """The task label of every sample held, in the order of :attr:`indices`."""
        return self._cat(1)

    @property
    def targets(self) -> Tensor:
        """The class target of every sample held, in the order of :attr:`indices`."""
        return self._cat(3)

    def update(self, data: DatasetView, experience_index: int, generator: torch.Generator) -> None:
        """Offer all samples of ``data`` (an experience's view of the stream's dataset) to the buffer.

        Raises:
            ValueError: if ``data`` views another dataset than the samples already held.
        """
        self._check_base(data)
        priority = torch.rand(len(data), generator=generator)
        targets = data.targets
        if self.policy == "experience_balanced":
            self._merge(int(experience_index), data.indices, data.task_labels, priority, targets)
        elif self.policy == "class_balanced":
            for c in torch.unique(targets).tolist():
                mask = targets == c
                self._merge(int(c), data.indices[mask], data.task_labels[mask], priority[mask], targets[mask])
        else:
            self._merge(0, data.indices, data.task_labels, priority, targets)
        self.base_size = len(data.base_targets)
        self._shrink()

    def _merge(
        self, key: int, indices: Tensor, task_labels: Tensor, priority: Tensor, targets: Tensor
    ) -> None:
        if key in self.groups:
            old = self.groups[key]
            indices = torch.cat([old[0], indices])
            task_labels = torch.cat([old[1], task_labels])
            priority = torch.cat([old[2], priority])
            targets = torch.cat([old[3], targets])
        order = priority.argsort(descending=True, stable=True)
        self.groups[key] = (indices[order], task_labels[order], priority[order], targets[order])

    def quotas(self) -> dict[int, int]:
        """How many samples each group may keep."""
        keys = sorted(self.groups)
        if not keys:
            return {}
        share, extra = divmod(self.mem_size, len(keys))
        return {k: share + (1 if r < extra else 0) for r, k in enumerate(keys)}

    def _shrink(self) -> None:
        for key, quota in self.quotas().items():
            self.groups[key] = tuple(v[:quota] for v in self.groups[key])  # type: ignore[assignment]

    def _check_base(self, data: DatasetView) -> None:
        """The samples held must still be where they were: same dataset size, same labels."""
        if not self.groups:
            return
        n = len(data.base_targets)
        indices = self.indices
        if (self.base_size is not None and n != self.base_size) or (len(indices) and int(indices.max()) >= n):
            raise ValueError(
                f"the buffer holds indices into a dataset of {self.base_size} samples, but this data views "
                f"one of {n}: build all experiences of a stream from one dataset (or the checkpoint belongs "
                "to another benchmark)"
            )
        if not torch.equal(data.base_targets[indices], self.targets.to(indices.device)):
            raise ValueError(
                "the buffer's samples have other labels in this dataset: the experiences come from "
                "another dataset, or the checkpoint belongs to another benchmark or class order"
            )

    def dataset(self, data: DatasetView, keys: list[int] | None = None) -> DatasetView | None:
        """The samples held (or those of some groups) as a view of ``data``'s dataset; ``None`` if none.

        The buffer holds indices, not samples: ``data`` is any view of the stream's dataset (the
        running experience's ``experience.dataset``), and the view returned reads the held
        samples from it.

        Raises:
            ValueError: if the held indices do not point to the same samples in ``data``'s
                dataset (another benchmark, class order or dataset).
        """
        keys = sorted(self.groups) if keys is None else keys
        if sum(len(self.groups[k][0]) for k in keys) == 0:
            return None
        self._check_base(data)
        return DatasetView(data.base, self._cat(0, keys), self._cat(1, keys), data.base_targets)

    def state_dict(self) -> dict[str, Any]:
        """Indices, task labels, priorities and the targets they point to (to detect a wrong dataset)."""
        groups = {
            key: {
                "indices": idx.clone(),
                "task_labels": tl.clone(),
                "priority": pr.clone(),
                "targets": y.clone(),
            }
            for key, (idx, tl, pr, y) in self.groups.items()
        }
        return {
            "mem_size": self.mem_size,
            "policy": self.policy,
            "groups": groups,
            "base_size": self.base_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the data is checked at the next :meth:`dataset`).

        Raises:
            ValueError: if the state was saved with another ``mem_size`` or ``policy``.
        """
        if state["mem_size"] != self.mem_size or state["policy"] != self.policy:
            raise ValueError(
                f"buffer state has mem_size={state['mem_size']}, policy={state['policy']!r}; this buffer has "
                f"mem_size={self.mem_size}, policy={self.policy!r}"
            )
        self.groups = {
            int(k): (g["indices"].long(), g["task_labels"].long(), g["priority"].float(), g["targets"].long())
            for k, g in state["groups"].items()
        }
        self.base_size = state.get("base_size")
