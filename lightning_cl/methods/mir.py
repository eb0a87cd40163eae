"""Maximally interfered retrieval (Aljundi et al., 2019): replay the memory samples a step would hurt most."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.func import functional_call
from typing_extensions import override

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import (
    Batch,
    ContinualCallback,
    experience_generator,
    step_generator,
    stream_seed,
)
from lightning_cl.methods.buffers import ReplayBuffer, check_memory_size
from lightning_cl.methods.distributed import all_reduce_tensors
from lightning_cl.methods.rar import virtual_parameters
from lightning_cl.methods.replay import step_samples
from lightning_cl.models.optimisation_step import inner_learning_rate

__all__ = ["MIR", "MIR_CANDIDATES", "interference_scores"]

MIR_CANDIDATES = ("earlier", "all", "other_classes")
"""Which memory samples MIR may retrieve: those stored before the experience began (the paper's
code), the whole live memory, or the live memory less the classes of the step's batch (Avalanche)."""


def interference_scores(
    module: torch.nn.Module,
    batch: Batch,
    candidates: Batch,
    lr: float,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""How much a virtual SGD step on ``batch`` raises the loss of each candidate sample.

    With :math:`\theta^v = \theta - \mathrm{lr}\, \nabla_\theta \ell(f_\theta(B), y_B)` (the mean
    cross-entropy of ``batch``), the score of a candidate :math:`(x, y)` is

    .. math:: s(x) = \ell(f_{\theta^v}(x), y) - \ell(f_\theta(x), y)

    (Aljundi et al., 2019, Sec. 3.1, "MI-1"). Everything runs in eval mode (no dropout draws,
    batch-norm statistics untouched) and the model's parameters, gradients and mode, the
    optimizer and the random state are left as they were: the virtual parameters are a
    separate dict passed through ``torch.func.functional_call``.

    Args:
        module: the model; called as ``module(x, t)``.
        batch: the current ``(x, y, t)``.
        candidates: the memory samples ``(x, y, t)`` to score.
        lr: the virtual step's learning rate.
        reduce: applied to the flat gradient before the step (an all-reduce mean under DDP, so
            every rank takes the step of the global batch).

    Returns:
        One score per candidate (float32, on the candidates' device).

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear = model
        ...     def forward(self, x, t=None):
        ...         return self.linear(x)
        >>> x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
        >>> interference_scores(Net(), (x, y, y * 0), (x, y, y * 0), lr=0.1).shape
        torch.Size([4])
    """
    virtual = virtual_parameters(module, batch, lr, reduce)
    was_training = module.training
    module.eval()
    try:
        cx, cy, ct = candidates
        with torch.no_grad():
            before = F.cross_entropy(module(cx, ct).float(), cy, reduction="none")
            after = F.cross_entropy(functional_call(module, virtual, (cx, ct)).float(), cy, reduction="none")
    finally:
        module.train(was_training)
    return after - before


class MIR(ContinualCallback):
    r"""MIR: replay the memory samples whose loss a virtual step on the current batch raises most.

    At every training step (Aljundi et al., 2019, "Online continual learning with maximally
    interfered retrieval", Alg. 1):

    1. a virtual SGD step on the current batch, :math:`\theta^v = \theta - \alpha \nabla \ell(B_n)`;
    2. a random subsample :math:`B_C` of ``subsample`` memory samples (of ``candidates``);
    3. the ``mem_batch_size`` samples of :math:`B_C` with the largest
       :math:`\ell(f_{\theta^v}(x), y) - \ell(f_\theta(x), y)` (:func:`interference_scores`) form
       :math:`B_M`;
    4. the step's loss gets :math:`\mathrm{CE}(f_\theta(B_M))` (a ``penalty``, on the real model:
       the step minimises :math:`\ell(B_n) + \ell(B_M)`, the paper's sum of the two mean losses);
    5. after the step the memory takes the batch by reservoir sampling (Vitter's algorithm R, the
       paper's buffer; see :class:`~lightning_cl.methods.ReplayBuffer`).

    Choices, stated:

    - :math:`\alpha` is the optimizer's learning rate (``lr=None``, the paper's) or ``lr``; the
      virtual step is plain SGD (no momentum), and it and the scores run in eval mode.
    - The memory is updated after every step (online, task-free), from the step's samples on
      all ranks in stream order, or at experience end (``online=False``, a random subset per
      experience as :class:`~lightning_cl.methods.Replay`'s memory).
    - Under DDP the virtual step uses the gradient of the global batch (all-reduced), the
      subsample is drawn with a generator seeded from the shared seed and the step, so every
      rank scores the same candidates identically and takes its share of :math:`B_M`.
    - The current batch is what the module trains on in the step (a replay batch of another
      method included).
    - ``candidates``, the memory samples :math:`B_C` is drawn from: ``"earlier"`` (default) the
      memory as it stood when the experience began, so the current experience's own samples are
      never retrieved (the paper's code samples the buffer with ``exclude_task`` set to the
      current task; on a ``split_online`` stream every mini-experience is an experience);
      ``"all"``, the memory as the last step left it, the current experience's samples included;
      ``"other_classes"``, that memory less the classes of the step's batch (all ranks'), as
      Avalanche's ``MIRPlugin``. On the README's online SplitDigits stream (seed 1) they score
      0.723, 0.710 and 0.736.

    Args:
        mem_size: memory size in samples.
        subsample: memory samples scored per step (:math:`|B_C|`, paper: 25-100).
        mem_batch_size: memory samples replayed per step (:math:`|B_M|`, paper: 10).
        lr: the virtual step's learning rate (``None``: the optimizer's first group's ``lr``).
        policy: the memory's grouping (default ``"reservoir"``, the paper's).
        online: update the memory after every step (default) or at experience end.
        seed: seed of the memory and the subsamples (``None``: torch's initial seed on rank 0).
        candidates: the memory samples retrieval draws from, one of :data:`MIR_CANDIDATES`.

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, ``subsample`` or ``mem_batch_size`` below 1,
            ``mem_batch_size > subsample``, a non-positive ``lr``, a ``seed`` that is not an int
            or ``candidates`` not in :data:`MIR_CANDIDATES`.

    Example:
        >>> mir = MIR(mem_size=500, subsample=50, mem_batch_size=10)
        >>> len(mir.buffer), mir.subsample
        (0, 50)
    """

    def __init__(
        self,
        mem_size: int = 500,
        subsample: int = 50,
        mem_batch_size: int = 10,
        lr: float | None = None,
        policy: str = "reservoir",
        online: bool = True,
        seed: int | None = None,
        candidates: str = "earlier",
    ):
        check_memory_size(mem_size, "MIR")
        if not isinstance(subsample, int) or isinstance(subsample, bool) or subsample < 1:
            raise ValueError(f"subsample must be an int >= 1, got {subsample!r}")
        if not isinstance(mem_batch_size, int) or isinstance(mem_batch_size, bool) or not 1 <= mem_batch_size:
            raise ValueError(f"mem_batch_size must be an int >= 1, got {mem_batch_size!r}")
        if mem_batch_size > subsample:
            raise ValueError(f"mem_batch_size={mem_batch_size} must not exceed subsample={subsample}")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0):
            raise ValueError(f"lr must be a number > 0 or None, got {lr!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if not isinstance(online, bool):
            raise ValueError(f"online must be True or False, got {online!r}")
        if candidates not in MIR_CANDIDATES:
            raise ValueError(f"candidates must be one of {MIR_CANDIDATES}, got {candidates!r}")
        self.buffer = ReplayBuffer(mem_size, policy)
        self.subsample = subsample
        self.mem_batch_size = mem_batch_size
        self.lr = None if lr is None else float(lr)
        self.online = online
        self.seed = seed
        self.candidates = candidates
        self._seed: int | None = None
        self._offers = 0
        self._memory: DatasetView | None = None
        self.last_choice: Tensor | None = None
        """Base-dataset indices of the memory samples replayed at the last step (all ranks')."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.buffer.mem_size, subsample=self.subsample)

    def _shared_seed(self, trainer: L.Trainer) -> int:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        return self._seed

    def _group(self, experience: Experience) -> int:
        """The experience group: the origin experience on an online stream with known boundaries."""
        origin = experience.online
        if origin is not None and origin.access_task_boundaries:
            return origin.origin_experience.index
        return experience.index

    @override
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        origin = experience.online
        if (
            self.buffer.policy == "experience_balanced"
            and origin is not None
            and not origin.access_task_boundaries
        ):
            raise MisconfigurationException(
                "MIR(policy='experience_balanced') needs the experience boundaries, which this online "
                "stream hides: use policy='reservoir' or 'class_balanced'"
            )
        self._shared_seed(trainer)
        self._memory = self.buffer.dataset(experience.dataset)

    @override
    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._memory = self.buffer.dataset(experience.dataset)

    def _virtual_lr(self, module: Any) -> float:
        return inner_learning_rate(self.lr, module.trainer.optimizers, "MIR")

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        memory = self._memory
        if memory is None or len(memory) == 0:
            return None
        trainer = module.trainer
        x, y, t = batch
        eligible = torch.arange(len(memory))
        if self.candidates == "other_classes":
            targets = memory.targets
            width = max(int(logits.shape[1]), int(targets.max()) + 1)
            present = torch.zeros(width, device=y.device).index_fill_(0, y, 1.0)
            present = all_reduce_tensors(trainer, {"present": present})["present"].cpu() > 0
            eligible = torch.nonzero(~present[targets]).flatten()
            if not len(eligible):
                return None
        generator = step_generator(self._shared_seed(trainer), int(module.draw_index))
        pool = eligible[torch.randperm(len(eligible), generator=generator)[: self.subsample]]
        device = logits.device
        cx, cy, ct = (v.to(device) for v in memory.__getitems__(pool))

        def reduce(flat: Tensor) -> Tensor:
            return trainer.strategy.reduce(flat, reduce_op="mean") if trainer.world_size > 1 else flat

        scores = interference_scores(module, (x, y, t), (cx, cy, ct), self._virtual_lr(module), reduce)
        chosen = scores.cpu().argsort(descending=True, stable=True)[: self.mem_batch_size]
        self.last_choice = memory.indices[pool[chosen]]
        share = chosen[trainer.global_rank :: trainer.world_size].to(device)
        if not len(share):
            return None
        return F.cross_entropy(module(cx[share], ct[share]).float(), cy[share])

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.online or trainer.current_epoch > 0 or self.buffer.mem_size == 0:
            return
        samples = step_samples(trainer, batch_idx)
        if samples is None:
            return
        experience = trainer.datamodule  # type: ignore[attr-defined]
        # Seeds apart from the subsamples' (seed + 1 + 7919 k never equals seed + 7919 j).
        generator = step_generator(self._shared_seed(trainer) + 1, self._offers)
        self.buffer.offer(samples, self._group(experience), generator)
        self._offers += 1
        if self.candidates != "earlier":  # "earlier" keeps the memory as the experience began
            self._memory = self.buffer.dataset(experience.dataset)

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if self.online:
            return
        generator = experience_generator(self._shared_seed(trainer), experience.index)
        self.buffer.update(experience.dataset, self._group(experience), generator)
        self._memory = self.buffer.dataset(experience.dataset)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "seed": self._seed, "offers": self._offers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
        self._seed = state_dict.get("seed")
        self._offers = int(state_dict.get("offers", 0))
