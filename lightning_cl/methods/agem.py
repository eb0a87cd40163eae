"""Averaged Gradient Episodic Memory (Chaudhry et al., 2019)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.buffers import ReplayBuffer

__all__ = ["AGEM", "project_gradient"]


def project_gradient(gradient: Tensor, reference: Tensor) -> tuple[Tensor, bool]:
    r"""A-GEM's projection: the gradient, or its component that does not oppose ``reference``.

    .. math:: \tilde g = g - \frac{g^\top g_{ref}}{g_{ref}^\top g_{ref}} g_{ref}
              \quad \text{if } g^\top g_{ref} < 0, \text{ else } g.

    Args:
        gradient: the flat gradient of the current batch.
        reference: the flat gradient on the memory.

    Returns:
        The (possibly) projected gradient and whether it was projected.

    Example:
        >>> g, projected = project_gradient(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0]))
        >>> g.tolist(), projected
        ([1.0, 0.0], True)
    """
    dot = torch.dot(gradient, reference)
    norm = torch.dot(reference, reference)
    if dot >= 0 or norm == 0:
        return gradient, False
    return gradient - (dot / norm) * reference, True


class AGEM(ContinualCallback):
    r"""A-GEM: keep each step from increasing the average loss on a memory of past samples.

    After each experience, ``patterns_per_experience`` of its samples (a seeded random subset)
    join an episodic memory. At every optimizer step after the first experience,
    ``sample_size`` memory samples are drawn, their average loss gradient :math:`g_{ref}` is
    computed, and the step's gradient :math:`g` is replaced by its projection
    (:func:`project_gradient`) when :math:`g^\top g_{ref} < 0`.

    Choices, stated:

    - The projection acts in ``on_before_optimizer_step``: on the gradient the optimizer will
      use (after the DDP all-reduce and AMP unscaling, before gradient clipping), over all
      trainable parameters as one vector.
    - :math:`g_{ref}` is taken with ``torch.autograd.grad`` on the module itself, not through the
      DDP wrapper. Under DDP every rank draws the same memory sample (a generator seeded from the
      shared seed and the step), computes the loss sum on its share, and the sums are
      all-reduced: every rank projects with the same :math:`g_{ref}`, the one a single process
      would compute.
    - The model stays in training mode for the memory pass (as in the paper's code and
      Avalanche's ``AGEMPlugin``).
    - The memory holds indices into the stream's dataset (an experience-balanced
      :class:`~lightning_cl.methods.ReplayBuffer` that grows by ``patterns_per_experience``).

    Args:
        patterns_per_experience: samples of each experience kept in memory (> 0).
        sample_size: memory samples per reference gradient (> 0).
        seed: seed of the memory selection and sampling (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for a non-positive ``patterns_per_experience`` or ``sample_size``.

    Example:
        >>> agem = AGEM(patterns_per_experience=250, sample_size=256)
        >>> len(agem.buffer)
        0
    """

    def __init__(self, patterns_per_experience: int = 250, sample_size: int = 256, seed: int | None = None):
        sizes = {"patterns_per_experience": patterns_per_experience, "sample_size": sample_size}
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.patterns_per_experience = patterns_per_experience
        self.sample_size = sample_size
        self.seed = seed
        self.buffer = ReplayBuffer(0, "experience_balanced")
        self.projections = 0  # steps whose gradient was projected, over the stream
        self._seed: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            patterns_per_experience=self.patterns_per_experience, sample_size=self.sample_size
        )

    def _shared_seed(self, trainer: L.Trainer) -> int:
        if self._seed is None:
            seed = self.seed if self.seed is not None else torch.initial_seed() % (2**31)
            self._seed = int(trainer.strategy.broadcast(seed, src=0))
        return self._seed

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if self.buffer.groups and self.buffer.base is None:
            self.buffer.bind(experience.dataset)

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        seed = self._shared_seed(trainer)
        groups = set(self.buffer.groups) | {experience.index}
        self.buffer.mem_size = self.patterns_per_experience * len(groups)
        generator = torch.Generator().manual_seed(seed + 1_000_003 * experience.index)
        self.buffer.update(experience.dataset, experience.index, generator)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        # A state loaded by Lightning inside an experience arrives after `setup`: bind it here.
        datamodule = getattr(trainer, "datamodule", None)
        if self.buffer.groups and self.buffer.base is None and isinstance(datamodule, Experience):
            self.buffer.bind(datamodule.dataset)
        memory = self.buffer.dataset()
        if memory is None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        reference = self._reference_gradient(trainer, pl_module, memory, params)
        current = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in params]
        )
        projected, changed = project_gradient(current, reference)
        if not changed:
            return
        self.projections += 1
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = projected[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def _reference_gradient(
        self, trainer: L.Trainer, pl_module: Any, memory: Any, params: list[Tensor]
    ) -> Tensor:
        """The mean loss gradient over this step's memory sample, the same on every rank."""
        step = int(getattr(pl_module, "global_step_all", trainer.global_step))
        generator = torch.Generator().manual_seed(self._shared_seed(trainer) + 7919 * (step + 1))
        size = min(self.sample_size, len(memory))
        sample = torch.randperm(len(memory), generator=generator)[:size]
        share = sample[trainer.global_rank :: trainer.world_size]
        device = params[0].device
        flat = torch.zeros(sum(p.numel() for p in params) + 1, device=device)
        if len(share):
            x, y, t = (v.to(device) for v in memory.__getitems__(share))
            with torch.enable_grad():
                loss = pl_module.criterion(pl_module(x, t).float(), y) * len(share)  # the loss sum
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            parts = [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]
            flat[:-1] = torch.cat(parts).float()
            flat[-1] = len(share)
        if trainer.world_size > 1:
            flat = trainer.strategy.reduce(flat, reduce_op="sum")
        return flat[:-1] / flat[-1].clamp_min(1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "seed": self._seed, "projections": self.projections}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer = ReplayBuffer(int(state_dict["buffer"]["mem_size"]), "experience_balanced")
        self.buffer.load_state_dict(state_dict["buffer"])
        self._seed = state_dict.get("seed")
        self.projections = int(state_dict.get("projections", 0))
