"""Averaged Gradient Episodic Memory (Chaudhry et al., 2019)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.methods.base import step_generator
from lightning_cl.methods.episodic import EpisodicMemoryMethod, flat_gradient, set_flat_gradient

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


class AGEM(EpisodicMemoryMethod):
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
      DDP wrapper (:meth:`~lightning_cl.methods.episodic.EpisodicMemoryMethod.memory_gradients`).
      Under DDP every rank draws the same memory sample (a generator seeded from the shared seed
      and the step), computes the loss sum on its share, and the sums are all-reduced: every
      rank projects with the same :math:`g_{ref}`, the one a single process would compute.
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

    needs_optimizer_step = "projects the gradient the optimizer uses"

    def __init__(self, patterns_per_experience: int = 250, sample_size: int = 256, seed: int | None = None):
        super().__init__(patterns_per_experience, seed)
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size must be a positive int, got {sample_size!r}")
        self.sample_size = sample_size
        self.projections = 0  # steps whose gradient was projected, over the stream

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            patterns_per_experience=self.patterns_per_experience, sample_size=self.sample_size
        )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        if self.memory is None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        reference = self.reference_gradient(trainer, pl_module, params)
        projected, changed = project_gradient(flat_gradient(params), reference)
        if changed:
            self.projections += 1
            set_flat_gradient(params, projected)

    def reference_gradient(self, trainer: L.Trainer, pl_module: Any, params: list[Tensor]) -> Tensor:
        """The mean loss gradient on this step's memory sample, the same on every rank."""
        memory = self.memory
        assert memory is not None
        step = int(getattr(pl_module, "global_step_all", trainer.global_step))
        generator = step_generator(self.shared_seed(trainer), step)
        sample = torch.randperm(len(memory), generator=generator)[: self.sample_size]
        return self.memory_gradients(trainer, pl_module, [(memory, sample)], params)[0]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "projections": self.projections}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.projections = int(state_dict.get("projections", 0))
