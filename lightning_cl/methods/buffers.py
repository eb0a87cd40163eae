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
        if not isinstance(mem_size, int) or mem_size < 0:
            raise ValueError(f"mem_size must be an int >= 0, got {mem_size!r}")
        if policy not in BUFFER_POLICIES:
            raise ValueError(f"policy must be one of {BUFFER_POLICIES}, got {policy!r}")
        self.mem_size = mem_size
        self.policy = policy
        # group key -> (indices into the base dataset, task labels, priorities), by priority desc.
        self.groups: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.base: Any = None
        self._base_targets: Tensor | None = None
        self._pending_targets: dict[int, Tensor | None] = {}

    def __len__(self) -> int:
        return sum(len(g[0]) for g in self.groups.values())

    def update(self, data: DatasetView, experience_index: int, generator: torch.Generator) -> None:
        """Offer all samples of ``data`` (an experience) to the buffer."""
        if self.groups and self.base is None:
            self.bind(data)
        if self.base is not None and data.base is not self.base:
            raise ValueError(
                "this buffer holds indices into one base dataset, but the experience comes from another; "
                "build all experiences of a stream from one dataset"
            )
        self.base, self._base_targets = data.base, data.base_targets
        priority = torch.rand(len(data), generator=generator)
        if self.policy == "experience_balanced":
            self._merge(int(experience_index), data.indices, data.task_labels, priority)
        elif self.policy == "class_balanced":
            targets = data.targets
            for c in torch.unique(targets).tolist():
                mask = targets == c
                self._merge(int(c), data.indices[mask], data.task_labels[mask], priority[mask])
        else:
            self._merge(0, data.indices, data.task_labels, priority)
        self._shrink()

    def _merge(self, key: int, indices: Tensor, task_labels: Tensor, priority: Tensor) -> None:
        if key in self.groups:
            old = self.groups[key]
            indices = torch.cat([old[0], indices])
            task_labels = torch.cat([old[1], task_labels])
            priority = torch.cat([old[2], priority])
        order = priority.argsort(descending=True, stable=True)
        self.groups[key] = (indices[order], task_labels[order], priority[order])

    def quotas(self) -> dict[int, int]:
        """How many samples each group may keep."""
        keys = sorted(self.groups)
        if not keys:
            return {}
        share, extra = divmod(self.mem_size, len(keys))
        return {k: share + (1 if r < extra else 0) for r, k in enumerate(keys)}

    def _shrink(self) -> None:
        for key, quota in self.quotas().items():
            idx, tl, pr = self.groups[key]
            self.groups[key] = (idx[:quota], tl[:quota], pr[:quota])

    def dataset(self, keys: list[int] | None = None) -> DatasetView | None:
        """The buffer's samples as one view, or those of some groups (``None`` while empty)."""
        keys = sorted(self.groups) if keys is None else keys
        if sum(len(self.groups[k][0]) for k in keys) == 0:
            return None
        return DatasetView(
            self.base,
            torch.cat([self.groups[k][0] for k in keys]),
            torch.cat([self.groups[k][1] for k in keys]),
            self._base_targets,
        )

    def state_dict(self) -> dict[str, Any]:
        """Indices, task labels, priorities and the targets they point to (to detect a wrong dataset)."""
        groups = {}
        for key, (idx, tl, pr) in self.groups.items():
            targets = self._base_targets[idx] if self._base_targets is not None else None
            groups[key] = {
                "indices": idx.clone(),
                "task_labels": tl.clone(),
                "priority": pr.clone(),
                "targets": targets,
            }
        return {"mem_size": self.mem_size, "policy": self.policy, "groups": groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mem_size"] != self.mem_size or state["policy"] != self.policy:
            raise ValueError(
                f"buffer state has mem_size={state['mem_size']}, policy={state['policy']!r}; this buffer has "
                f"mem_size={self.mem_size}, policy={self.policy!r}"
            )
        self.groups = {
            int(k): (g["indices"].long(), g["task_labels"].long(), g["priority"].float())
            for k, g in state["groups"].items()
        }
        self._pending_targets = {int(k): g["targets"] for k, g in state["groups"].items()}
        self.base, self._base_targets = None, None

    def bind(self, data: DatasetView) -> None:
        """Attach the base dataset after loading a state, checking the indices still point to the same labels.

        Raises:
            ValueError: if the indices fall outside the dataset or their labels differ.
        """
        if self.base is data.base:
            return
        pending = self._pending_targets
        n = len(data.base_targets)
        for key, (idx, _, _) in self.groups.items():
            if len(idx) and int(idx.max()) >= n:
                raise ValueError(
                    f"the buffer refers to sample {int(idx.max())} but the dataset has {n}: the checkpoint "
                    "belongs to another benchmark"
                )
            expected = pending.get(key)
            if expected is not None and not torch.equal(data.base_targets[idx], expected.to(idx.device)):
                raise ValueError(
                    "the buffer's samples have different labels in this dataset: the checkpoint belongs to "
                    "another benchmark or class order"
                )
        self.base, self._base_targets = data.base, data.base_targets
        self._pending_targets = {}
