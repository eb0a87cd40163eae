"""Gradient Episodic Memory (Lopez-Paz and Ranzato, 2017)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.methods.episodic import EpisodicMemoryMethod, flat_gradient, set_flat_gradient

__all__ = ["GEM", "gem_projection"]


def gem_projection(
    memory_gradients: Tensor,
    gradient: Tensor,
    margin: float = 0.0,
    eps: float = 1e-6,
    max_sweeps: int = 1000,
    tol: float = 1e-10,
) -> Tensor:
    r"""GEM's projected gradient, from the dual quadratic programme of the paper.

    The closest :math:`\tilde g` to :math:`g` with :math:`G \tilde g \geq 0` (one row of
    :math:`G` per past experience) is :math:`\tilde g = G^\top v + g`, with :math:`v` solving

    .. math:: \min_{v} \tfrac12 v^\top (G G^\top + \epsilon \bar d I) v + (G g)^\top v
              \quad \text{s.t.} \quad v \geq \gamma

    (:math:`\gamma` = ``margin``, as in the paper's code). The ridge keeps the matrix positive
    definite when :math:`G` is rank-deficient; it is relative (:math:`\bar d` = the mean of the
    diagonal of :math:`G G^\top`), unlike the paper code's absolute 1e-3, which dominates the
    matrix once the memories' gradients are small and then leaves the constraints violated.
    The programme has one variable per past experience; it is solved in float64 by coordinate
    descent with projection on the bound (Hildreth's method), which converges for a
    positive-definite matrix.

    Args:
        memory_gradients: :math:`G`, shape ``(t, P)``.
        gradient: :math:`g`, shape ``(P,)``.
        margin: :math:`\gamma \geq 0` (``memory_strength``).
        eps: relative ridge :math:`\epsilon > 0`.
        max_sweeps: at most this many passes over the variables.
        tol: stop when no variable moves by more than this.

    Returns:
        :math:`\tilde g`, in the dtype of ``gradient``.

    Example:
        >>> G = torch.tensor([[0.0, 1.0]])
        >>> [round(v, 4) + 0.0 for v in gem_projection(G, torch.tensor([1.0, -1.0])).tolist()]
        [1.0, 0.0]
    """
    G = memory_gradients.double()
    g = gradient.double()
    P = G @ G.T
    scale = float(P.diagonal().mean()) or 1.0
    P = P + eps * scale * torch.eye(len(G), dtype=G.dtype, device=G.device)
    # The sweeps run on Python floats (float64, like the tensors): at most a few dozen variables,
    # where one tensor operation per scalar would cost more than the arithmetic.
    rows: list[list[float]] = P.tolist()
    b: list[float] = (G @ g).tolist()
    v = [float(margin)] * len(b)
    for _ in range(max_sweeps):
        largest = 0.0
        for i, row in enumerate(rows):
            new = max(v[i] - (sum(p * w for p, w in zip(row, v)) + b[i]) / row[i], margin)
            largest = max(largest, abs(new - v[i]))
            v[i] = new
        if largest <= tol:
            break
    return (G.T @ torch.tensor(v, dtype=G.dtype, device=G.device) + g).to(gradient.dtype)


class GEM(EpisodicMemoryMethod):
    r"""GEM: each step may not increase the loss on the memory of any past experience.

    After each experience, ``patterns_per_experience`` of its samples join an episodic memory.
    At every optimizer step, the loss gradient :math:`g_k` on the memory of each past experience
    :math:`k` is computed; if the step's gradient :math:`g` has :math:`g^\top g_k < 0` for some
    :math:`k`, it is replaced by its projection :func:`gem_projection`, the closest gradient
    that has a non-negative inner product with every :math:`g_k`.

    Choices, stated:

    - ``memory_strength`` is the paper code's margin :math:`\gamma` on the dual variables (and
      Avalanche's ``memory_strength``): above 0 the projection leans further towards the
      memories' gradients.
    - The projection acts in ``on_before_optimizer_step`` (after the DDP all-reduce and AMP
      unscaling, before clipping), over all trainable parameters as one vector.
    - The memory gradients are taken with ``torch.autograd.grad`` on the module itself, in its
      training mode, on the whole memory of each experience; under DDP each rank computes its
      share and the sums are all-reduced, so every rank projects alike.
    - One forward and backward pass per past experience at every step: the cost grows with the
      number of experiences, as in the paper. :class:`~lightning_cl.methods.AGEM` keeps one.
    - GEM adds no loss term (its ``penalty`` is ``None``): it acts on the gradient only.

    Args:
        patterns_per_experience: samples of each experience kept in memory (> 0).
        memory_strength: margin :math:`\gamma \geq 0`.
        seed: seed of the memory selection (``None``: torch's initial seed on rank 0).
        cache_memory: read the memory's samples once per experience and hold them on the
            module's device (``patterns_per_experience`` times the past experiences, as
            tensors), rather than at every step; ``False`` for a dataset whose reads are random
            (augmentation at read time) or a memory too large to hold. The gradients are the
            same either way.

    Raises:
        ValueError: for a non-positive ``patterns_per_experience``, a negative
            ``memory_strength`` or a non-bool ``cache_memory``.

    Example:
        >>> gem = GEM(patterns_per_experience=256, memory_strength=0.5)
        >>> gem.memory_strength
        0.5
    """

    needs_optimizer_step = "projects the gradient the optimizer uses"

    def __init__(
        self,
        patterns_per_experience: int = 256,
        memory_strength: float = 0.5,
        seed: int | None = None,
        cache_memory: bool = True,
    ):
        super().__init__(patterns_per_experience, seed)
        if not isinstance(memory_strength, int | float) or memory_strength < 0:
            raise ValueError(f"memory_strength must be a number >= 0, got {memory_strength!r}")
        self.memory_strength = float(memory_strength)
        if not isinstance(cache_memory, bool):
            raise ValueError(f"cache_memory must be a bool, got {cache_memory!r}")
        self.cache_memory = cache_memory
        self.projections = 0  # steps whose gradient was projected, over the stream

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            patterns_per_experience=self.patterns_per_experience, memory_strength=self.memory_strength
        )

    def memory_gradient_rows(self, trainer: L.Trainer, pl_module: Any, params: list[Tensor]) -> Tensor:
        """One row per past experience: the mean loss gradient on its whole memory."""
        groups = sorted(self.memory_groups.items())
        parts = [(view, torch.arange(len(view))) for _, view in groups]
        keys = [key for key, _ in groups] if self.cache_memory else None
        return self.memory_gradients(trainer, pl_module, parts, params, cache_keys=keys)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        if self.memory is None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        rows = self.memory_gradient_rows(trainer, pl_module, params)
        gradient = flat_gradient(params)
        if bool((rows @ gradient < 0).any()):
            self.projections += 1
            set_flat_gradient(params, gem_projection(rows, gradient, self.memory_strength))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "projections": self.projections}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.projections = int(state_dict.get("projections", 0))
