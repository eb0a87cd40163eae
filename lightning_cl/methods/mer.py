"""MER (Riemer et al., 2019): experience replay with Reptile meta-updates, in an owned optimisation step."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
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
from lightning_cl.methods.buffers import ReplayBuffer
from lightning_cl.methods.distributed import all_reduce_tensors
from lightning_cl.methods.replay import step_samples
from lightning_cl.models.optimisation_step import (
    InnerLossScaling,
    OptimisationStep,
    StepResult,
    inner_learning_rate,
)

__all__ = ["MER", "MER_INNER_STEPS", "reptile_batches"]

MER_INNER_STEPS = ("sgd", "optimizer")


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_rate(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be a number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters an inner loop updates: those of ``module`` that require gradients, by name."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def reptile_batches(
    params: Mapping[str, Tensor],
    loss_fn: Callable[[Batch], Tensor],
    batches: Sequence[Batch],
    lr: float,
    beta: float,
    gamma: float,
    inner_batch_size: int = 1,
    scaling: InnerLossScaling | None = None,
    inner_step: Callable[[Sequence[Tensor], Sequence[Tensor | None]], None] | None = None,
) -> None:
    r"""MER's update of the weights for one incoming batch (Riemer et al., 2019, Algorithm 1), in place.

    With :math:`\theta^A_0 = \theta` and, for each batch :math:`B_i` (:math:`i = 1..s`),
    :math:`\theta^W_{i,0} = \theta`, plain SGD steps over the samples of :math:`B_i` in order
    (``inner_batch_size`` samples per step, 1 in the paper),
    :math:`\theta \leftarrow \theta - \alpha \nabla \ell(x_j, y_j)`, then the within-batch Reptile
    meta-update :math:`\theta \leftarrow \theta^W_{i,0} + \beta (\theta - \theta^W_{i,0})`; after
    the last batch the across-batch meta-update
    :math:`\theta \leftarrow \theta^A_0 + \gamma (\theta - \theta^A_0)`.

    Args:
        params: the weights to update (leaf tensors that ``loss_fn`` reads), by name.
        loss_fn: the loss of a batch ``(x, y, t)`` at the current values of ``params``.
        batches: :math:`B_1 .. B_s`.
        lr: :math:`\alpha`, the inner SGD steps' learning rate.
        beta: the within-batch meta-learning rate.
        gamma: the across-batch meta-learning rate.
        inner_batch_size: samples per inner SGD step. An inner step whose loss no weight of
            ``params`` reaches (samples of a frozen column or expert) moves nothing.
        scaling: the loss scaling of the inner gradients under ``precision="16-mixed"``
            (:class:`~lightning_cl.models.InnerLossScaling`); an inner step whose gradients (or an
            earlier one's in this call) were not finite moves nothing. ``None``: plain
            ``torch.autograd.grad``.
        inner_step: ``inner_step(weights, grads)`` updates the weights in place in place of the
            SGD step (``lr`` is then unused): MER's ``inner_steps="optimizer"``.

    Example:
        >>> w = torch.zeros(1, requires_grad=True)
        >>> loss = lambda b: ((w * b[0] - b[1]) ** 2).mean()
        >>> one = (torch.ones(1), torch.ones(1), torch.zeros(1))
        >>> reptile_batches({"w": w}, loss, [one], lr=0.5, beta=0.5, gamma=1.0)
        >>> w  # SGD: 0 - 0.5 * (-2) = 1; Reptile: 0 + 0.5 * (1 - 0)
        tensor([0.5000], requires_grad=True)
    """
    names = list(params)
    tensors = [params[n] for n in names]
    if not tensors:
        return
    with torch.no_grad():
        across = [p.detach().clone() for p in tensors]
    for x, y, t in batches:
        with torch.no_grad():
            within = [p.detach().clone() for p in tensors]
        for start in range(0, len(y), inner_batch_size):
            rows = slice(start, start + inner_batch_size)
            with torch.enable_grad():
                loss = loss_fn((x[rows], y[rows], t[rows]))
                grads: Sequence[Tensor | None]
                if not loss.requires_grad:
                    # No trainable weight reaches these samples (a frozen column or expert of an
                    # earlier task, PNN's or ExpertGate's): they move nothing.
                    grads = [None] * len(tensors)
                elif scaling is None:
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                else:
                    grads = scaling.grad(loss, tensors)
            if inner_step is not None:
                inner_step(tensors, grads)
                continue
            with torch.no_grad():
                for p, g in zip(tensors, grads):
                    if g is not None:
                        step = g.to(p.dtype) * lr
                        p.sub_(step if scaling is None else scaling.where_finite(step))
        with torch.no_grad():
            for p, w0 in zip(tensors, within):
                p.copy_(w0 + beta * (p - w0))
    with torch.no_grad():
        for p, a0 in zip(tensors, across):
            p.copy_(a0 + gamma * (p - a0))


class _MetaReplay(ContinualCallback, OptimisationStep):
    """A reservoir memory of indices, updated after every step or per experience, and draws from it."""

    def __init__(self, mem_size: int, mem_batch_size: int, online: bool, seed: int | None, lr: float | None):
        _check_int("mem_size", mem_size, 1)
        _check_int("mem_batch_size", mem_batch_size, 0)
        if not isinstance(online, bool):
            raise ValueError(f"online must be True or False, got {online!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.buffer = ReplayBuffer(mem_size, "reservoir")
        self.mem_batch_size = mem_batch_size
        self.online = online
        self.seed = seed
        self.lr = None if lr is None else _check_rate("lr", lr)
        self._seed: int | None = None
        self._offers = 0
        self._memory: DatasetView | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.buffer.mem_size)

    def _shared_seed(self, trainer: L.Trainer) -> int:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        return self._seed

    @override
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        InnerLossScaling.for_trainer(trainer, type(self).__name__)  # refuses what it cannot follow
        self._shared_seed(trainer)
        self._memory = self.buffer.dataset(experience.dataset)

    @override
    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._memory = self.buffer.dataset(experience.dataset)

    def _step_start(self, module: Any, batch: Batch) -> tuple[Tensor, Tensor, dict[str, nn.Parameter]]:
        """The incoming batch's logits and loss at the weights before the step, and the weights to update."""
        x, y, t = batch
        with torch.no_grad():
            logits = module(x, t)
            loss = module.criterion(logits, y)
        return logits, loss, trainable(module)

    def _memory_batches(self, module: Any, n_batches: int, device: torch.device) -> list[Batch | None]:
        """``n_batches`` draws of this rank's share of ``mem_batch_size`` samples each (same on all ranks)."""
        memory = self._memory
        if memory is None or len(memory) == 0 or self.mem_batch_size == 0:
            return [None] * n_batches
        trainer = module.trainer
        world, rank = trainer.world_size, trainer.global_rank
        generator = step_generator(self._shared_seed(trainer), int(module.global_step_all))
        out: list[Batch | None] = []
        for _ in range(n_batches):
            chosen = torch.randperm(len(memory), generator=generator)[: self.mem_batch_size * world]
            share = chosen[rank::world]
            if not len(share):
                out.append(None)
                continue
            x, y, t = memory.__getitems__(share)
            out.append((x.to(device), y.to(device), t.to(device)))
        return out

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.online or trainer.current_epoch > 0:
            return
        samples = step_samples(trainer, batch_idx)
        if samples is None:
            return
        experience = trainer.datamodule  # type: ignore[attr-defined]
        # Seeds apart from the memory draws' (seed + 1 + 7919 k never equals seed + 7919 j).
        generator = step_generator(self._shared_seed(trainer) + 1, self._offers)
        self.buffer.offer(samples, experience.index, generator)
        self._offers += 1
        self._memory = self.buffer.dataset(experience.dataset)

    @override
    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if self.online:
            return
        generator = experience_generator(self._shared_seed(trainer), experience.index)
        self.buffer.update(experience.dataset, experience.index, generator)
        self._memory = self.buffer.dataset(experience.dataset)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "seed": self._seed, "offers": self._offers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
        self._seed = state_dict.get("seed")
        self._offers = int(state_dict.get("offers", 0))


def _all_finite(tensors: Sequence[Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class MER(_MetaReplay):
    r"""MER, meta-experience replay (Riemer et al., ICLR 2019, "Learning to Learn without Forgetting
    by Maximizing Transfer and Minimizing Interference", Algorithm 1).

    Each training step owns the whole update (:class:`~lightning_cl.models.OptimisationStep`):
    the incoming batch is mixed into ``n_batches`` batches :math:`B_1 .. B_s`, each the incoming
    samples plus ``mem_batch_size`` samples drawn from a reservoir memory, and the weights are
    updated by :func:`reptile_batches`: plain SGD steps over each batch's samples in order, a
    within-batch Reptile meta-update with rate :math:`\beta` after each batch, and an
    across-batch one with rate :math:`\gamma` after the last. Reptile's meta-updates approximate
    the gradient of :math:`\ell + \ell' - \alpha \nabla\ell \cdot \nabla\ell'` over pairs of samples:
    they favour weights where the gradients of new and memory samples agree (transfer) over
    where they conflict (interference).

    Choices, stated:

    - The algorithm is the paper's Algorithm 1 (the authors' ``mattriemer/MER``,
      ``model/meralg1.py``): a within-batch meta-update with :math:`\beta` after each batch and an
      across-batch one with :math:`\gamma`. Their Algorithm 6 (``meralg6.py``: one meta-update per
      batch, with :math:`\gamma`, and no across-batch update) is ``beta=`` that rate and
      ``gamma=1.0``.
    - ``inner_steps="sgd"`` (default, the paper's; the authors' code steps a plain
      ``optim.SGD(lr)``): plain SGD with learning rate ``lr`` (:math:`\alpha`; ``None``: the
      module optimizer's first group's ``lr``) on one sample at a time (``inner_batch_size=1``,
      the paper's); the module's optimizer is not stepped (its state stays empty).
      ``inner_steps="optimizer"`` (Avalanche's ``MER._inner_updates``, which calls
      ``self.optimizer.step()`` after each sample's backward): each inner step puts its
      gradients in the weights' ``.grad`` and steps the module's torch optimizer (its momentum,
      weight decay and learning rate; ``lr`` must be ``None``); the optimizer's state carries
      over the inner steps, the meta-updates and the training steps, and is checkpointed by
      Lightning; under DDP its state (momentum, moments) is averaged over the ranks after each
      step, as the update is. It is stepped directly, not through Lightning's ``optimizer.step()``:
      ``on_before_optimizer_step`` callbacks do not see the inner steps, and the step is counted
      once by the module. The batch order is the incoming samples, then the memory samples (the
      authors' code puts the incoming sample last). Penalties of other callbacks (EWC, ...)
      are added to each inner step's loss.
    - Precision: under ``Trainer(precision="16-mixed")`` the inner losses are scaled by the
      trainer's ``GradScaler`` and their gradients unscaled
      (:class:`~lightning_cl.models.InnerLossScaling`); a training step in which an inner
      gradient was not finite is skipped (the weights as before it) and the scale backed off, as
      ``GradScaler`` skips an optimizer step; with ``inner_steps="optimizer"`` the optimizer's
      state keeps the inner steps taken before the overflow. ``"bf16-mixed"``, ``"16-true"``,
      ``"bf16-true"``, 32 and 64 bits take the gradients as they come; DeepSpeed's, FSDP's and
      other precision plugins are refused at set-up.
    - Defaults are the paper's MNIST settings (Appendix, Table: :math:`\beta = 0.03`,
      :math:`\gamma = 1.0`, ``n_batches`` :math:`s = 10`, ``mem_batch_size`` :math:`k - 1 = 10`).
      Avalanche's ``MER`` (``n_inner_steps=5``, ``beta=0.1``, ``gamma=0.1``,
      ``batch_size_mem=10``) uses ``beta`` for the within-batch rate too; its memory is updated at
      experience end (``online=False``) and its inner steps use the strategy's optimizer.
    - The memory is a reservoir (Vitter's algorithm R) offered every step's samples of each
      experience's first epoch (``online=True``, the paper's), or a random subset per experience
      (``online=False``). Memory draws come from a generator seeded from the shared seed and the
      step, without replacement within a batch.
    - The logits and loss reported for the step's metrics are those of the incoming batch at the
      weights before the step.
    - DDP: each rank runs the inner loop on its shard of the batch and its share of the memory
      draw; the update :math:`\theta_{new} - \theta` is then averaged over the ranks
      (:func:`~lightning_cl.methods.all_reduce_tensors`), so every rank holds the same weights.
    - A step whose new weights are not finite is undone and reported as a non-finite loss
      (``ContinualModule(on_nonfinite=...)`` decides).

    Args:
        mem_size: memory size in samples.
        mem_batch_size: memory samples in each batch :math:`B_i` (:math:`k - 1`).
        n_batches: batches per incoming batch (:math:`s`).
        beta: within-batch Reptile rate, in ``(0, 1]`` usually.
        gamma: across-batch Reptile rate.
        lr: the inner SGD steps' learning rate (``None``: the optimizer's).
        inner_batch_size: samples per inner SGD step (1: the paper's per-sample SGD).
        online: update the memory after every step (default) or at experience end.
        seed: seed of the memory and its draws (``None``: torch's initial seed on rank 0).
        inner_steps: ``"sgd"`` (the paper's plain SGD) or ``"optimizer"`` (the module's
            optimizer, Avalanche's).

    Raises:
        ValueError: for a ``mem_size`` below 1, a negative ``mem_batch_size``, ``n_batches`` or
            ``inner_batch_size`` below 1, non-positive rates, a ``seed`` that is not an int, an
            unknown ``inner_steps``, or an ``lr`` with ``inner_steps="optimizer"``.
        MisconfigurationException: at set-up, for a precision plugin the inner loop cannot
            follow (DeepSpeed's, FSDP's, ...).

    Example:
        >>> mer = MER(mem_size=200, n_batches=5, beta=0.1, gamma=1.0)
        >>> len(mer.buffer), mer.n_batches, mer.inner_steps
        (0, 5, 'sgd')
    """

    def __init__(
        self,
        mem_size: int = 200,
        mem_batch_size: int = 10,
        n_batches: int = 10,
        beta: float = 0.03,
        gamma: float = 1.0,
        lr: float | None = None,
        inner_batch_size: int = 1,
        online: bool = True,
        seed: int | None = None,
        inner_steps: str = "sgd",
    ):
        super().__init__(mem_size, mem_batch_size, online, seed, lr)
        if inner_steps not in MER_INNER_STEPS:
            raise ValueError(f"inner_steps must be one of {MER_INNER_STEPS}, got {inner_steps!r}")
        if inner_steps == "optimizer" and lr is not None:
            raise ValueError(
                f"lr={lr!r} is the inner SGD steps' rate; inner_steps='optimizer' steps the module's "
                "optimizer at its own learning rate: leave lr=None"
            )
        self.inner_steps = inner_steps
        self.n_batches = _check_int("n_batches", n_batches, 1)
        self.inner_batch_size = _check_int("inner_batch_size", inner_batch_size, 1)
        self.beta = _check_rate("beta", beta)
        self.gamma = _check_rate("gamma", gamma)

    @override
    def optimisation_step(
        self, module: Any, batch: Batch, parts: Mapping[str, slice], optimizer: Any
    ) -> StepResult:
        x, y, t = batch
        logits, loss, params = self._step_start(module, batch)
        start = {n: p.detach().clone() for n, p in params.items()}
        batches = []
        for drawn in self._memory_batches(module, self.n_batches, x.device):
            if drawn is None:
                batches.append(batch)
            else:
                batches.append((torch.cat([x, drawn[0]]), torch.cat([y, drawn[1]]), torch.cat([t, drawn[2]])))
        penalties: dict[str, Tensor] = {}

        def loss_fn(b: Batch) -> Tensor:
            out = module(b[0], b[2])
            total, terms = module.add_penalties(module.criterion(out, b[1]), b, out)
            penalties.update(terms)
            return total

        trainer = module.trainer
        scaling = InnerLossScaling.for_trainer(trainer, type(self).__name__)
        inner_step = (
            None if self.inner_steps == "sgd" else _optimizer_step(optimizer, scaling, trainer.world_size)
        )
        try:
            reptile_batches(
                params,
                loss_fn,
                batches,
                inner_learning_rate(self.lr, optimizer, type(self).__name__) if inner_step is None else 0.0,
                self.beta,
                self.gamma,
                self.inner_batch_size,
                scaling,
                inner_step,
            )
            if not scaling.finish(trainer):
                # An overflow of the scaled fp16 gradients: the step is skipped, as GradScaler would.
                self._restore(params, start)
                return StepResult(loss, logits, penalties)
            if trainer.world_size > 1:
                deltas = {n: p.detach() - start[n] for n, p in params.items()}
                mean = all_reduce_tensors(trainer, deltas, op="mean")
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(start[n] + mean[n])
                if inner_step is not None:
                    _average_optimizer_state(trainer, optimizer, params)
        except BaseException:
            self._restore(params, start)
            raise
        if not _all_finite([p.detach() for p in params.values()]):
            self._restore(params, start)
            loss = torch.full_like(loss, float("nan"))
        return StepResult(loss, logits, penalties)

    @staticmethod
    def _restore(params: Mapping[str, Tensor], start: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])


def _average_optimizer_state(trainer: Any, optimizer: Any, params: Mapping[str, Tensor]) -> None:
    """Average the optimizer's floating-point state (momentum, moments) of ``params`` over the ranks."""
    raw = getattr(optimizer, "optimizer", optimizer)
    tensors = {
        f"{n}.{key}": value
        for n, p in params.items()
        for key, value in raw.state.get(p, {}).items()
        if isinstance(value, Tensor) and value.is_floating_point() and value.ndim > 0
    }
    if tensors:
        mean = all_reduce_tensors(trainer, tensors, op="mean")
        with torch.no_grad():
            for key, value in tensors.items():
                value.copy_(mean[key])


def _optimizer_step(
    optimizer: Any, scaling: InnerLossScaling, world_size: int = 1
) -> Callable[[Sequence[Tensor], Sequence[Tensor | None]], None]:
    """An inner step through the module's torch optimizer (the one Lightning wraps), not counted."""
    raw = getattr(optimizer, "optimizer", optimizer)
    if raw is None or not hasattr(raw, "step"):
        raise MisconfigurationException(
            "MER(inner_steps='optimizer') steps the module's optimizer, but the module has none"
        )

    def step(tensors: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
        if scaling.scaler is not None and not bool(scaling.finite):
            return  # the step is skipped at its end; no further state in the optimizer
        for p, g in zip(tensors, grads):
            # Under DDP an unused weight gets a zero gradient, so that every rank's optimizer
            # holds state for the same weights (averaged after the step).
            p.grad = (
                (None if world_size == 1 else torch.zeros_like(p)) if g is None else g.detach().to(p.dtype)
            )
        raw.step()
        for p in tensors:
            p.grad = None

    return step
