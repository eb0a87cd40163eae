"""Dark Experience Replay (Buzzega et al., 2020): replay the model's own past outputs."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import (
    Batch,
    ContinualCallback,
    experience_generator,
    step_generator,
    stream_seed,
)
from lightning_cl.methods.buffers import BUFFER_POLICIES, ReplayBuffer, check_memory_size
from lightning_cl.models.heads import MASK_VALUE, pad_to

__all__ = ["DER"]


class DER(ContinualCallback):
    r"""DER and DER++: match the logits the model gave to memory samples when they were stored.

    When an experience ends, the memory (a :class:`~lightning_cl.methods.ReplayBuffer` of
    indices) takes its share of the experience's samples and records the model's logits
    :math:`z` for the new ones. Every later training step draws a memory batch
    :math:`(x', y', z')` and adds

    .. math:: \alpha \, \mathrm{MSE}(f(x'), z') + \beta \, \mathrm{CE}(f(x'), y')

    to the loss (``beta=0``: DER; ``beta>0``: DER++).

    Choices, stated:

    - Logits are recorded when the experience ends (with the model in eval mode), as
      Avalanche's ``DER`` does, not at the step a sample enters a reservoir (the paper's online
      setting). Units a dynamic head had masked then are left out of the MSE.
    - One memory batch serves both terms (Avalanche); the paper draws two.
    - The memory batch is drawn inside the training step with a generator seeded from the shared
      seed and the step, so every DDP rank draws the same sample and takes its share of it; the
      memory's forward pass joins the step's graph, so DDP all-reduces its gradient with the rest.

    Args:
        mem_size: memory size in samples.
        alpha: weight of the logit-matching term (>= 0).
        beta: weight of the memory cross-entropy (>= 0).
        mem_batch_size: memory samples per step (default: the experience's batch size).
        policy: the memory's selection policy (see :data:`~lightning_cl.methods.BUFFER_POLICIES`).
        seed: seed of the memory's selection and sampling (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, a negative ``alpha`` or ``beta``, a non-positive
            ``mem_batch_size`` or an unknown policy.

    Example:
        >>> der = DER(mem_size=200, alpha=0.1, beta=0.5)
        >>> len(der.buffer)
        0
    """

    def __init__(
        self,
        mem_size: int = 200,
        alpha: float = 0.1,
        beta: float = 0.5,
        mem_batch_size: int | None = None,
        policy: str = "class_balanced",
        seed: int | None = None,
    ):
        check_memory_size(mem_size, "DER")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if mem_batch_size is not None and (not isinstance(mem_batch_size, int) or mem_batch_size < 1):
            raise ValueError(f"mem_batch_size must be a positive int or None, got {mem_batch_size!r}")
        if policy not in BUFFER_POLICIES:
            raise ValueError(f"policy must be one of {BUFFER_POLICIES}, got {policy!r}")
        self.buffer = ReplayBuffer(mem_size, policy)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mem_batch_size = mem_batch_size
        self.seed = seed
        # The recorded logits: sorted base indices, one row of logits and of "unit was live" each.
        self.logit_index = torch.zeros(0, dtype=torch.long)
        self.logits = torch.zeros(0, 0)
        self.live = torch.zeros(0, 0, dtype=torch.bool)
        self._seed: int | None = None
        self._batch_size = 32
        self._memory: DatasetView | None = None  # the memory as a view of the running experience's data

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.buffer.mem_size, alpha=self.alpha, beta=self.beta)

    def _shared_seed(self, trainer: L.Trainer) -> int:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        return self._seed

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._memory = self.buffer.dataset(experience.dataset)
        self._batch_size = self.mem_batch_size or experience.batch_size

    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self.on_experience_start(trainer, module, experience)

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        generator = experience_generator(self._shared_seed(trainer), experience.index)
        self.buffer.update(experience.dataset, experience.index, generator)
        memory = self._memory = self.buffer.dataset(experience.dataset)
        kept = memory.indices if memory is not None else torch.zeros(0, dtype=torch.long)
        known = torch.isin(kept, self.logit_index)
        new_positions = (~known).nonzero().flatten()
        # Record the logits of the samples that just entered; forget those that left.
        rows_index, rows_logits, rows_live = [], [], []
        if memory is not None and len(new_positions):
            was_training = module.training
            module.eval()
            try:
                with torch.no_grad():
                    for chunk in new_positions.split(256):
                        x, _, t = (v.to(module.device) for v in memory.__getitems__(chunk))
                        z = module(x, t).float().cpu()
                        rows_index.append(kept[chunk])
                        rows_logits.append(z)
                        rows_live.append(z > MASK_VALUE / 2)  # units a dynamic head masks are MASK_VALUE
            finally:
                module.train(was_training)
        stay = torch.isin(self.logit_index, kept)
        width = max([self.logits.shape[1]] + [z.shape[1] for z in rows_logits])
        index = torch.cat([self.logit_index[stay], *rows_index])
        logits = torch.cat([pad_to(z, (len(z), width), 0.0) for z in (self.logits[stay], *rows_logits)])
        live = torch.cat([pad_to(m, (len(m), width), False) for m in (self.live[stay], *rows_live)])
        order = index.argsort()
        self.logit_index, self.logits, self.live = index[order], logits[order], live[order]

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        trainer = module.trainer
        memory = self._memory
        if memory is None or (self.alpha == 0.0 and self.beta == 0.0):
            return None
        step = int(module.draw_index)
        generator = step_generator(self._shared_seed(trainer), step)
        sample = torch.randperm(len(memory), generator=generator)[: self._batch_size * trainer.world_size]
        share = sample[trainer.global_rank :: trainer.world_size]
        x, y, t = (v.to(logits.device) for v in memory.__getitems__(share))
        out = module(x, t).float()
        rows = torch.searchsorted(self.logit_index, memory.indices[share])
        z, live = self.logits[rows].to(out.device), self.live[rows].to(out.device)
        width = min(out.shape[1], z.shape[1])
        diff = (out[:, :width] - z[:, :width]).pow(2) * live[:, :width]
        total = self.alpha * diff.sum() / live[:, :width].sum().clamp_min(1)
        if self.beta:
            total = total + self.beta * F.cross_entropy(out, y)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "seed": self._seed,
            "logit_index": self.logit_index,
            "logits": self.logits,
            "live": self.live,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
        self._seed = state_dict.get("seed")
        self.logit_index = state_dict["logit_index"].long()
        self.logits = state_dict["logits"].float()
        self.live = state_dict["live"].bool()
