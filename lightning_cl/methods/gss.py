"""GSS-greedy (Aljundi et al., 2019): a memory of samples whose gradients point in diverse directions."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback, step_generator, stream_seed
from lightning_cl.methods.buffers import check_memory_size
from lightning_cl.methods.per_sample import per_sample_gradient_inner, per_sample_gradients
from lightning_cl.methods.replay import step_samples

__all__ = ["GSSGreedy", "gss_greedy_replace", "gss_scores", "gss_scores_from_inner", "sample_gradients"]


def sample_gradients(module: torch.nn.Module, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """The cross-entropy gradient of every sample, flattened: ``(len(x), n_params)`` float32.

    :func:`~lightning_cl.methods.per_sample.per_sample_gradients` (``torch.func.vmap``; one
    backward per sample where a model cannot be traced): eval mode, the module's ``.grad`` and mode
    left as they were.
    """
    return per_sample_gradients(module, x, y, t)


def gss_scores(gradients: Tensor, reference: Tensor) -> Tensor:
    r"""GSS's score of each sample: :math:`c = \max_j \cos(g, G_j) + 1` (Alg. 2, line 8).

    Args:
        gradients: ``(B, P)``, one gradient per incoming sample.
        reference: ``(n, P)``, the gradients of a random subset of the memory.

    Returns:
        ``(B,)`` scores in ``[0, 2]``; ``1`` (a cosine of 0) where ``reference`` is empty.

    Example:
        >>> gss_scores(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        tensor([2., 1.])
    """
    if len(reference) == 0:
        return torch.ones(len(gradients))
    cos = F.normalize(gradients.double(), dim=1) @ F.normalize(reference.double(), dim=1).T
    return (cos.max(dim=1).values + 1).float()


def gss_scores_from_inner(inner: Tensor, norms: Tensor, reference_norms: Tensor) -> Tensor:
    r""":func:`gss_scores` from inner products and squared norms of the gradients (no gradient in memory).

    Args:
        inner: ``(B, n)``, :math:`\langle g_i, G_j \rangle`.
        norms: ``(B,)``, :math:`\|g_i\|^2`.
        reference_norms: ``(n,)``, :math:`\|G_j\|^2`.

    Returns:
        ``(B,)`` scores :math:`\max_j \cos(g_i, G_j) + 1`, as :func:`gss_scores` (a zero gradient
        has cosine 0).

    Example:
        >>> inner = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])  # the gradients (1, 0), (-1, 0); (2, 0), (0, 1)
        >>> gss_scores_from_inner(inner, torch.ones(2), torch.tensor([4.0, 1.0]))
        tensor([2., 1.])
    """
    if inner.shape[1] == 0:
        return torch.ones(inner.shape[0])
    eps = 1e-12  # as F.normalize
    cos = inner.double() / (
        norms.double().sqrt().clamp(min=eps)[:, None]
        * reference_norms.double().sqrt().clamp(min=eps)[None, :]
    )
    return (cos.max(dim=1).values + 1).float()


def gss_greedy_replace(
    scores: Tensor, incoming: Tensor, mem_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    r"""GSS-greedy's rule (Aljundi et al., 2019, Alg. 2, lines 9-19), for incoming samples in order.

    A sample with score :math:`c` enters a memory that is not full. In a full memory, if
    :math:`c < 1` (its gradient has a negative cosine with every one it was compared to), a slot
    :math:`i` is drawn with probability :math:`C_i / \sum_j C_j` and replaced, with probability
    :math:`C_i / (C_i + c)`, by the sample, whose score takes its place.

    Args:
        scores: the scores :math:`C` of the samples held (one per slot).
        incoming: the incoming samples' scores, in stream order.
        mem_size: the memory size.
        generator: the draws (two per incoming sample with :math:`c < 1` in a full memory).

    Returns:
        The slot each incoming sample took (``-1``: not kept; a later one may overwrite an
        earlier one's slot) and the new scores, one per slot.

    Example:
        >>> slots, new = gss_greedy_replace(torch.tensor([0.5]), torch.tensor([1.5, 0.2]), 2,
        ...                                 torch.Generator().manual_seed(0))
        >>> slots[0].item(), len(new)
        (1, 2)
    """
    held = [float(v) for v in scores.tolist()]
    slots = []
    for c in incoming.tolist():
        if len(held) < mem_size:
            slots.append(len(held))
            held.append(c)
        elif c < 1 and held:
            weights = torch.tensor(held, dtype=torch.float64)
            i = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
            r = float(torch.rand(1, generator=generator, dtype=torch.float64))
            if r < held[i] / (held[i] + c):
                held[i] = c
                slots.append(i)
            else:
                slots.append(-1)
        else:
            slots.append(-1)
    return torch.tensor(slots, dtype=torch.long), torch.tensor(held, dtype=torch.float)


class GSSGreedy(ContinualCallback):
    r"""GSS-greedy: fill the memory with samples whose gradients are diverse, replay it at random.

    After every training step (Aljundi et al., 2019, "Gradient based sample selection for online
    continual learning", Sec. 3.3 and Alg. 2), each of the step's samples gets the score
    :math:`c = \max_j \cos(g, G_j) + 1` (:func:`gss_scores`), :math:`g` its loss gradient and
    :math:`G_j` those of ``n_reference`` random memory samples (at the model after the step);
    :func:`gss_greedy_replace` decides whether it enters the memory. At every step the loss gets
    :math:`\mathrm{CE}` of ``mem_batch_size`` random memory samples (the rehearsal of the
    paper's experiments, as experience replay).

    Choices, stated:

    - The step's samples are scored one by one against one reference subset drawn per step
      (the paper receives "one or few consecutive examples"); gradients in eval mode.
    - The memory holds indices (with their scores), updated in the first epoch of each
      experience only (a stream is seen once).
    - Under DDP every rank scores the step's samples of all ranks (in stream order, see
      :func:`~lightning_cl.methods.replay.step_samples`) on its identical weights with
      generators seeded from the shared seed and the step counter, so the memory is the same on
      every rank; each rank replays its share of the memory batch.

    Args:
        mem_size: memory size in samples (> 0).
        n_reference: memory samples whose gradients each step compares to (paper: 10).
        mem_batch_size: memory samples replayed per step (paper: 10).
        seed: seed of the draws (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for a non-positive ``mem_size``, ``n_reference`` or ``mem_batch_size``, or a
            ``seed`` that is not an int.

    Example:
        >>> gss = GSSGreedy(mem_size=200)
        >>> len(gss), gss.n_reference
        (0, 10)
    """

    def __init__(
        self, mem_size: int = 200, n_reference: int = 10, mem_batch_size: int = 10, seed: int | None = None
    ):
        check_memory_size(mem_size, "GSSGreedy")
        for name, value in (
            ("n_reference", n_reference),
            ("mem_batch_size", mem_batch_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.mem_size = mem_size
        self.n_reference = n_reference
        self.mem_batch_size = mem_batch_size
        self.seed = seed
        self.indices = torch.zeros(0, dtype=torch.long)
        """Base-dataset indices of the samples held, one per slot."""
        self.task_labels = torch.zeros(0, dtype=torch.long)
        self.targets = torch.zeros(0, dtype=torch.long)
        self.scores = torch.zeros(0)
        """GSS's score of every slot."""
        self._seed: int | None = None
        self._offers = 0
        self._memory: DatasetView | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.mem_size, n_reference=self.n_reference)

    def _shared_seed(self, trainer: L.Trainer) -> int:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        return self._seed

    def _bind(self, data: DatasetView) -> None:
        if not len(self.indices):
            self._memory = None
            return
        n = len(data.base_targets)
        if int(self.indices.max()) >= n or not torch.equal(data.base_targets[self.indices], self.targets):
            raise ValueError(
                "GSSGreedy's memory points to other samples in this dataset: build all experiences of a "
                "stream from one dataset (or the checkpoint belongs to another benchmark)"
            )
        self._memory = DatasetView(data.base, self.indices, self.task_labels, data.base_targets)

    @override
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._shared_seed(trainer)
        self._bind(experience.dataset)

    @override
    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._bind(experience.dataset)

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        memory = self._memory
        if memory is None:
            return None
        trainer = module.trainer
        generator = step_generator(self._shared_seed(trainer), int(module.draw_index))
        sample = torch.randperm(len(memory), generator=generator)[: self.mem_batch_size * trainer.world_size]
        share = sample[trainer.global_rank :: trainer.world_size]
        if not len(share):
            return None
        x, y, t = (v.to(logits.device) for v in memory.__getitems__(share))
        return F.cross_entropy(module(x, t).float(), y)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch > 0:
            return  # a stream is seen once
        samples = step_samples(trainer, batch_idx)
        if samples is None:
            return
        experience = trainer.datamodule  # type: ignore[attr-defined]
        # Seeds apart from the memory batches' (seed + 1 + 7919 k never equals seed + 7919 j).
        generator = step_generator(self._shared_seed(trainer) + 1, self._offers)
        device = pl_module.device
        x, y, t = (v.to(device) for v in samples.__getitems__(torch.arange(len(samples))))
        incoming = torch.ones(len(x))  # a cosine of 0 with an empty memory
        if self._memory is not None and len(self._memory) > 0:
            chosen = torch.randperm(len(self._memory), generator=generator)[: self.n_reference]
            reference = tuple(v.to(device) for v in self._memory.__getitems__(chosen))
            inner, norms, ref_norms = per_sample_gradient_inner(pl_module, (x, y, t), reference)  # type: ignore[arg-type]
            incoming = gss_scores_from_inner(inner, norms, ref_norms).cpu()
        slots, scores = gss_greedy_replace(self.scores, incoming, self.mem_size, generator)
        size = len(scores)
        indices, tasks, targets = (
            torch.cat([v, torch.zeros(size - len(v), dtype=torch.long)])
            for v in (self.indices, self.task_labels, self.targets)
        )
        kept = (slots >= 0).nonzero().flatten()
        for i in kept.tolist():  # in stream order: a later sample overwrites an earlier one
            slot = int(slots[i])
            indices[slot] = samples.indices[i]
            tasks[slot] = samples.task_labels[i]
            targets[slot] = samples.targets[i]
        self.indices, self.task_labels, self.targets, self.scores = indices, tasks, targets, scores
        self._offers += 1
        self._bind(experience.dataset)

    def state_dict(self) -> dict[str, Any]:
        return {
            "indices": self.indices.clone(),
            "task_labels": self.task_labels.clone(),
            "targets": self.targets.clone(),
            "scores": self.scores.clone(),
            "seed": self._seed,
            "offers": self._offers,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.indices = state_dict["indices"].long()
        self.task_labels = state_dict["task_labels"].long()
        self.targets = state_dict["targets"].long()
        self.scores = state_dict["scores"].float()
        self._seed = state_dict.get("seed")
        self._offers = int(state_dict.get("offers", 0))
