"""The episodic memory that gradient-projection methods (GEM, A-GEM) share."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback, experience_generator, stream_seed
from lightning_cl.methods.buffers import ReplayBuffer, check_memory_size

__all__ = ["EpisodicMemoryMethod", "flat_gradient", "set_flat_gradient"]


def flat_gradient(params: list[Tensor]) -> Tensor:
    """The gradients of ``params`` as one float32 vector (zeros where a parameter has none)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    return torch.cat([g.flatten() for g in grads]).float()


def set_flat_gradient(params: list[Tensor], flat: Tensor) -> None:
    """Write the vector ``flat`` back into the gradients of ``params``."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


class EpisodicMemoryMethod(ContinualCallback):
    """Base of the methods that constrain each step with gradients on an episodic memory.

    After each experience, ``patterns_per_experience`` of its samples (a seeded random subset,
    the same on every rank) join the memory, one group per experience, kept as indices into the
    stream's dataset. :meth:`memory_gradients` gives the mean loss gradient on memory samples,
    computed with ``torch.autograd.grad`` on the module itself (not through the DDP wrapper):
    each rank takes its share of the samples and the loss sums are all-reduced, so every rank
    gets the gradient a single process would compute.

    Args:
        patterns_per_experience: samples of each experience kept in memory (> 0).
        seed: seed of the memory's selection (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for a non-positive ``patterns_per_experience``.
    """

    def __init__(self, patterns_per_experience: int = 250, seed: int | None = None):
        check_memory_size(patterns_per_experience, type(self).__name__, "patterns_per_experience")
        self.patterns_per_experience = patterns_per_experience
        self.seed = seed
        self.buffer = ReplayBuffer(0, "experience_balanced")
        self._seed: int | None = None
        # The memory as views of the running experience's dataset: all of it, and by experience.
        self.memory: DatasetView | None = None
        self.memory_groups: dict[int, DatasetView] = {}
        # Samples read for memory_gradients(..., cache_keys=...), valid until the memory is rebound.
        self._reads: dict[Any, tuple[Tensor, Tensor, Tensor]] = {}

    def shared_seed(self, trainer: L.Trainer) -> int:
        """The base seed of the memory, drawn on rank 0 once per stream (and checkpointed)."""
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        return self._seed

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self.bind_memory(experience)

    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self.bind_memory(experience)

    def bind_memory(self, experience: Experience) -> None:
        """Build :attr:`memory` (and :attr:`memory_groups`) as views of ``experience``'s dataset."""
        self._reads = {}
        self.memory = self.buffer.dataset(experience.dataset)
        self.memory_groups = {
            key: view
            for key in sorted(self.buffer.groups)
            if (view := self.buffer.dataset(experience.dataset, [key])) is not None
        }

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        seed = self.shared_seed(trainer)
        groups = set(self.buffer.groups) | {experience.index}
        self.buffer.mem_size = self.patterns_per_experience * len(groups)
        generator = experience_generator(seed, experience.index)
        self.buffer.update(experience.dataset, experience.index, generator)
        self.bind_memory(experience)

    def memory_gradients(
        self,
        trainer: L.Trainer,
        module: Any,
        parts: list[tuple[DatasetView, Tensor]],
        params: list[Tensor],
        cache_keys: Sequence[Hashable] | None = None,
    ) -> Tensor:
        """The mean loss gradient on each ``(memory view, positions)`` part: one row per part.

        The loss is the module's ``criterion``, in the module's current mode. Every rank must
        pass the same parts; each computes its share of every part.

        ``cache_keys`` (one per part) keep each part's samples, read once and held on the
        parameters' device, until the memory is next rebound (:meth:`bind_memory`): for parts
        that are the same at every step, whose reads are deterministic (no augmentation at read
        time). A part with the key of an earlier call is not read again.
        """
        device = params[0].device
        rows = torch.zeros(len(parts), sum(p.numel() for p in params) + 1, device=device)
        keys: Sequence[Hashable | None] = [None] * len(parts) if cache_keys is None else cache_keys
        if len(keys) != len(parts):
            raise ValueError(f"cache_keys has {len(keys)} keys for {len(parts)} parts")
        for row, (view, positions), key in zip(rows, parts, keys):
            share = positions[trainer.global_rank :: trainer.world_size]
            if not len(share):
                continue
            held = None if key is None else self._reads.get((key, device))
            if held is None:
                held = tuple(v.to(device) for v in view.__getitems__(share))  # type: ignore[assignment]
                if key is not None:
                    self._reads[(key, device)] = held  # type: ignore[assignment]
            x, y, t = held  # type: ignore[misc]
            with torch.enable_grad():
                loss = module.criterion(module(x, t).float(), y) * len(share)  # the loss sum
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            row[:-1] = torch.cat(
                [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]
            ).float()
            row[-1] = len(share)
        if trainer.world_size > 1:
            rows = trainer.strategy.reduce(rows, reduce_op="sum")
        return rows[:, :-1] / rows[:, -1:].clamp_min(1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "seed": self._seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer = ReplayBuffer(int(state_dict["buffer"]["mem_size"]), "experience_balanced")
        self.buffer.load_state_dict(state_dict["buffer"])
        self._seed = state_dict.get("seed")
