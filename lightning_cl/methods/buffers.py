"""Replay buffers that hold indices into the stream's datasets: groups, quotas, a selection strategy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.methods.selection import RandomSelection, SelectionStrategy, check_selection

__all__ = ["BUFFER_POLICIES", "RESERVOIR_ALGORITHMS", "ReplayBuffer", "check_memory_size"]

BUFFER_POLICIES = ("experience_balanced", "class_balanced", "task_balanced", "reservoir")
"""How a memory is split into groups: by experience, by class, by task label, or one group."""
RESERVOIR_ALGORITHMS = ("R", "priority")
"""How :meth:`ReplayBuffer.offer` fills a ``"reservoir"`` buffer: Vitter's algorithm R, or priorities."""


def check_memory_size(value: Any, method: str, name: str = "mem_size", low: int = 1) -> int:
    """The one check of a rehearsal method's memory-size argument: an int ``>= low``.

    Every rehearsal method refuses a memory it cannot rehearse (``low=1``); only ``Replay``
    accepts 0, documented there as "replay off".

    Args:
        value: the argument given.
        method: the class name, for the message.
        name: the argument's name (``mem_size``, ``patterns_per_experience``).
        low: the smallest value allowed.

    Returns:
        ``value``.

    Raises:
        ValueError: naming the argument, the allowed range and the value, e.g.
            ``"mem_size must be an int >= 1, got 0: ERAML rehearses a memory of that many samples"``.

    Example:
        >>> check_memory_size(200, "ERAML")
        200
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(
            f"{name} must be an int >= {low}, got {value!r}: {method} rehearses a memory of that many samples"
        )
    return value


class ReplayBuffer:
    """A fixed-size memory of samples, kept as indices into a base dataset, split into groups.

    **Groups** (``policy``, a closed set of names, :data:`BUFFER_POLICIES`):

    - ``"experience_balanced"`` (Avalanche's ``ExperienceBalancedBuffer``): one group per
      experience (the ``experience_index`` given to :meth:`update` / :meth:`offer`).
    - ``"class_balanced"`` (``ClassBalancedBuffer``): one group per class.
    - ``"task_balanced"``: one group per task label (Avalanche's ``ParametricBuffer`` grouped by task).
    - ``"reservoir"`` (``ReservoirSamplingBuffer``): one group, a uniform random subset of all
      samples seen.

    **Quotas**: ``mem_size`` is split evenly over the groups seen so far, re-balanced each time a
    group appears. When it does not divide evenly, the first groups (lowest experience, class
    or task) get one sample more. A group with fewer samples than its quota keeps them all (the
    rest of its quota stays empty).

    **Selection** (``selection``, a :class:`~lightning_cl.methods.SelectionStrategy`): which
    samples a group keeps. The strategy orders a group's candidates (what it held and what
    arrives) best first, and the group keeps the front of the order, so a group that shrinks
    keeps its best samples and never chooses again. The default,
    :class:`~lightning_cl.methods.RandomSelection`, draws a uniform random priority once per
    sample offered and a group keeps its highest priorities: any group is a uniform random
    subset of its samples, and the content depends only on the seed and the data, never on the
    order of operations. Strategies on features (:class:`~lightning_cl.methods.HerdingSelection`,
    :class:`~lightning_cl.methods.ClosestToCenterSelection`) read the model given to
    :meth:`update` and rank a group's candidates again whenever new ones arrive.

    **Each sample once**: a sample that :meth:`update` offers again (the same index and task
    label: an experience trained twice) replaces its earlier entry, with a fresh priority or
    rank, so the memory never holds two copies of it.

    **End of experience or online**: :meth:`update` offers an experience's samples at once;
    :meth:`offer` offers a training step's samples (online, task-free streams, random selection
    only). A ``"reservoir"`` buffer fed by :meth:`offer` follows Vitter's algorithm R by default
    (``reservoir="R"``; Vitter, 1985): the ``i``-th sample seen enters while the memory is not
    full, later it replaces a uniformly drawn slot with probability ``mem_size / i``. The other
    groupings, and ``reservoir="priority"`` (Avalanche's way, the same distribution), merge each
    step's samples by priority.

    Args:
        mem_size: maximum number of samples.
        policy: the grouping, one of :data:`BUFFER_POLICIES`.
        selection: the selection strategy (default :class:`~lightning_cl.methods.RandomSelection`).
        reservoir: how :meth:`offer` fills a ``"reservoir"`` buffer, one of
            :data:`RESERVOIR_ALGORITHMS`.

    Raises:
        ValueError: for ``mem_size < 0``, an unknown policy or reservoir algorithm, or a
            selection that is not a :class:`~lightning_cl.methods.SelectionStrategy`.

    Example:
        >>> import torch
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> base = TensorClassificationDataset(torch.zeros(12, 1), torch.arange(12) % 3)
        >>> buffer = ReplayBuffer(5, "class_balanced")
        >>> buffer.update(DatasetView(base, range(12)), 0, torch.Generator().manual_seed(0))
        >>> buffer.quotas(), torch.bincount(buffer.targets).tolist()
        ({0: 2, 1: 2, 2: 1}, [2, 2, 1])
    """

    def __init__(
        self,
        mem_size: int,
        policy: str = "experience_balanced",
        selection: SelectionStrategy | None = None,
        reservoir: str = "R",
    ):
        if not isinstance(mem_size, int) or isinstance(mem_size, bool) or mem_size < 0:
            raise ValueError(f"mem_size must be an int >= 0, got {mem_size!r}")
        if policy not in BUFFER_POLICIES:
            raise ValueError(f"policy must be one of {BUFFER_POLICIES}, got {policy!r}")
        if reservoir not in RESERVOIR_ALGORITHMS:
            raise ValueError(f"reservoir must be one of {RESERVOIR_ALGORITHMS}, got {reservoir!r}")
        self.mem_size = mem_size
        self.policy = policy
        self.selection = check_selection(selection)
        self.reservoir = reservoir
        # group key -> (indices into the base dataset, task labels, priorities, targets), by priority desc.
        self.groups: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self.base_size: int | None = None
        self.seen = 0
        """Samples offered so far (by :meth:`update` and :meth:`offer`)."""

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

    def update(
        self,
        data: DatasetView,
        experience_index: int,
        generator: torch.Generator,
        module: nn.Module | None = None,
    ) -> None:
        """Offer all samples of ``data`` (an experience's view of the stream's dataset) to the buffer.

        Args:
            data: the samples.
            experience_index: the group of ``"experience_balanced"``.
            generator: the source of the priorities (seeded the same on every rank).
            module: the model, for selection strategies on its features.

        Raises:
            ValueError: if ``data`` views another dataset than the samples already held, or the
                selection needs a model and ``module`` is missing. The buffer is then unchanged.
        """
        self._check_base(data)
        if self.selection.needs_model and module is None:
            raise ValueError(
                f"the buffer's selection {self.selection!r} reads the model's features: pass module="
            )
        keys = self._keys(data, experience_index)
        previous = dict(self.groups)
        try:
            self._drop_offered_again(data)
            if type(self.selection) is RandomSelection:
                self._merge_by_priority(data, keys, torch.rand(len(data), generator=generator))
            else:
                self._merge_by_selection(data, keys, generator, module)
        except BaseException:
            self.groups = previous  # a failed update leaves the memory as it was
            raise
        self.seen += len(data)
        self.base_size = len(data.base_targets)

    def offer(self, data: DatasetView, experience_index: int, generator: torch.Generator) -> None:
        """Offer one training step's samples (in stream order) to the buffer: the online update.

        A ``"reservoir"`` buffer follows Vitter's algorithm R (``reservoir="R"``) or merges by
        priority (``"priority"``); the other groupings merge by priority, group by group.

        Args:
            data: the step's samples, in the order the stream gave them.
            experience_index: the group of ``"experience_balanced"``.
            generator: the source of the draws (seeded the same on every rank, a new one per step).

        Raises:
            ValueError: if ``data`` views another dataset than the samples already held, or the
                selection is not random (a per-step choice on features is not offered).
        """
        if type(self.selection) is not RandomSelection:
            raise ValueError(
                f"online updates choose at random; the buffer's selection is {self.selection!r}: "
                "update it at the end of experiences instead"
            )
        self._check_base(data)
        if self.policy == "reservoir" and self.reservoir == "R":
            self._algorithm_r(data, generator)
        else:
            self._merge_by_priority(
                data, self._keys(data, experience_index), torch.rand(len(data), generator=generator)
            )
        self.seen += len(data)
        self.base_size = len(data.base_targets)

    def _drop_offered_again(self, data: DatasetView) -> None:
        """Forget the entries of the samples ``data`` offers again (matched by index and task label)."""
        held = [g for g in self.groups.values() if len(g[0])]
        if not held or len(data) == 0:
            return
        width = int(torch.cat([data.task_labels, *(g[1] for g in held)]).max()) + 1
        offered = data.indices.long() * width + data.task_labels.long()
        for key, group in list(self.groups.items()):
            keep = ~torch.isin(group[0].long() * width + group[1].long(), offered)
            if not bool(keep.all()):
                self.groups[key] = tuple(v[keep] for v in group)  # type: ignore[assignment]
            if not len(self.groups[key][0]):
                del self.groups[key]

    def _algorithm_r(self, data: DatasetView, generator: torch.Generator) -> None:
        # Vitter's algorithm R: sample i (1-based over the stream) enters a free slot, or slot
        # j = floor(u * i), u ~ U[0, 1), if j < mem_size. One uniform draw per sample, in stream order.
        n = len(data)
        if n == 0 or self.mem_size == 0:
            return
        draws = torch.rand(n, generator=generator, dtype=torch.float64)
        held = self.groups.get(0)
        indices = held[0].clone() if held is not None else torch.zeros(0, dtype=torch.long)
        tasks = held[1].clone() if held is not None else torch.zeros(0, dtype=torch.long)
        targets = held[3].clone() if held is not None else torch.zeros(0, dtype=torch.long)
        free = min(self.mem_size - len(indices), n)
        new_targets = data.targets
        if free > 0:
            indices = torch.cat([indices, data.indices[:free]])
            tasks = torch.cat([tasks, data.task_labels[:free]])
            targets = torch.cat([targets, new_targets[:free]])
        seen = torch.arange(self.seen + 1, self.seen + n + 1, dtype=torch.float64)
        slots = (draws * seen).long()
        slots[:free] = -1  # those filled free slots
        accepted = ((slots >= 0) & (slots < self.mem_size)).nonzero().flatten()
        if len(accepted):
            # In stream order, a later sample overwrites an earlier one in the same slot.
            chosen = slots[accepted]
            last = {int(slot): int(i) for slot, i in zip(chosen.tolist(), accepted.tolist())}
            where = torch.tensor(list(last.keys()), dtype=torch.long)
            which = torch.tensor(list(last.values()), dtype=torch.long)
            indices[where] = data.indices[which]
            tasks[where] = data.task_labels[which]
            targets[where] = new_targets[which]
        self.groups[0] = (indices, tasks, torch.zeros(len(indices)), targets)

    def _keys(self, data: DatasetView, experience_index: int) -> Tensor:
        """The group of every sample of ``data``."""
        if self.policy == "experience_balanced":
            return torch.full((len(data),), int(experience_index), dtype=torch.long)
        if self.policy == "class_balanced":
            return data.targets.long()
        if self.policy == "task_balanced":
            return data.task_labels.long()
        return torch.zeros(len(data), dtype=torch.long)

    def _merge_by_priority(self, data: DatasetView, keys: Tensor, priority: Tensor) -> None:
        targets = data.targets
        for key in torch.unique(keys).tolist():
            mask = keys == key
            self._merge(int(key), data.indices[mask], data.task_labels[mask], priority[mask], targets[mask])
        self._shrink()

    def _merge_by_selection(
        self, data: DatasetView, keys: Tensor, generator: torch.Generator, module: nn.Module | None
    ) -> None:
        # Each group with new candidates ranks what it held and what arrives; the others shrink.
        new_keys = [int(k) for k in torch.unique(keys).tolist()]
        quotas = self._quotas(set(self.groups) | set(new_keys))
        groups = dict(self.groups)
        targets = data.targets
        for key in new_keys:
            mask = keys == key
            fields = [data.indices[mask], data.task_labels[mask], targets[mask]]
            if key in groups:
                old = groups[key]
                fields = [
                    torch.cat([old[0], fields[0]]),
                    torch.cat([old[1], fields[1]]),
                    torch.cat([old[3], fields[2]]),
                ]
            candidates = DatasetView(data.base, fields[0], fields[1], data.base_targets)
            order = self.selection.select(candidates, quotas[key], module=module, generator=generator)
            rank = torch.arange(len(order), 0, -1, dtype=torch.float)  # best first, as priorities
            groups[key] = (fields[0][order], fields[1][order], rank, fields[2][order])
        self.groups = groups
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
        """How many samples each group may keep: ``mem_size`` split evenly, the first groups one more."""
        return self._quotas(set(self.groups))

    def _quotas(self, keys: set[int]) -> dict[int, int]:
        if not keys:
            return {}
        share, extra = divmod(self.mem_size, len(keys))
        return {k: share + (1 if r < extra else 0) for r, k in enumerate(sorted(keys))}

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
            "seen": self.seen,
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
        self.seen = int(state.get("seen", 0))
