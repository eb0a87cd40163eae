"""La-MAML (Gupta et al., 2020): look-ahead meta-learning with learnable per-parameter learning rates."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.func import functional_call
from typing_extensions import override

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch
from lightning_cl.methods.distributed import all_reduce_tensors
from lightning_cl.methods.mer import _all_finite, _check_int, _check_rate, _MetaReplay, trainable
from lightning_cl.models.optimisation_step import InnerLossScaling, StepResult

__all__ = ["LaMAML", "lamaml_meta_gradients"]


def lamaml_meta_gradients(
    params: Mapping[str, Tensor],
    alpha: Mapping[str, Tensor],
    forward: Callable[[Mapping[str, Tensor], Tensor, Tensor], Tensor],
    glances: list[Batch],
    meta_batch: Batch,
    criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    second_order: bool = False,
    inner_clip: float | None = None,
    extra_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    scaling: InnerLossScaling | None = None,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    r"""The meta-loss of La-MAML's look-ahead and its gradients (Gupta et al., 2020, Algorithm 1).

    From :math:`\theta_0 = \theta`, one SGD step per glance :math:`b_k` (the incoming batch split
    in order) with the learnable rates, :math:`\theta_{k} = \theta_{k-1} - \alpha \odot
    \nabla_{\theta_{k-1}} \ell(b_k)`, and after each the meta-loss on the incoming batch plus memory
    samples :math:`\ell_{meta,k} = \ell(\theta_k; B \cup M)`; the meta-loss is their mean,
    :math:`L = \frac1K \sum_k \ell_{meta,k}`. Returned: :math:`L`, :math:`\nabla_\theta L` and
    :math:`\nabla_\alpha L`.

    ``second_order=True`` differentiates through the inner gradients (MAML's Hessian-vector
    terms); ``False`` treats them as constants (first order: :math:`\nabla_\theta L` is the mean
    of the meta-gradients at the look-ahead weights, and
    :math:`\nabla_\alpha L = -\frac1K \sum_k \sum_{j \le k} g_j \odot \nabla_{\theta_k} \ell_{meta,k}`).
    The look-ahead weights are a dict passed to ``forward`` (``torch.func.functional_call``):
    the model itself is not copied or changed.

    Args:
        params: :math:`\theta`, by name (leaf tensors).
        alpha: :math:`\alpha`, one tensor per parameter, the same shapes (leaves that require grad).
        forward: ``forward(weights, x, t)`` -> outputs.
        glances: the inner batches :math:`b_1 .. b_K`, each ``(x, y, t)``.
        meta_batch: :math:`B \cup M`.
        criterion: ``criterion(outputs, y)`` -> scalar (default: cross-entropy).
        second_order: differentiate through the inner gradients.
        inner_clip: clamp each inner gradient elementwise to ``[-inner_clip, inner_clip]``.
        extra_loss: ``extra_loss(outputs, y)`` added to each meta-loss (other callbacks' penalties).
        scaling: the loss scaling of the inner and meta-gradients under ``precision="16-mixed"``
            (:class:`~lightning_cl.models.InnerLossScaling`: its ``finite`` says whether they all
            were); ``None``: plain ``torch.autograd.grad``.

    Returns:
        ``(L, grads of theta, grads of alpha)``, the gradients by name (``zeros`` where unused).

    Example:
        One glance on ``w * x`` with squared error, ``x = 1``, ``y = 0``: the look-ahead weight is
        ``w - a * 2w = 0.8``, so ``L = 0.64``, ``dL/dw = 2 * 0.8 = 1.6`` (first order) and
        ``dL/da = 2 * 0.8 * (-2w) = -3.2``: a larger rate would lower the loss.

        >>> w = torch.ones(1, requires_grad=True)
        >>> a = torch.full((1,), 0.1, requires_grad=True)
        >>> fwd = lambda p, x, t: x * p["w"]
        >>> b = (torch.ones(1), torch.zeros(1), torch.zeros(1))
        >>> mse = lambda z, y: ((z - y) ** 2).mean()
        >>> loss, gw, ga = lamaml_meta_gradients({"w": w}, {"w": a}, fwd, [b], b, criterion=mse)
        >>> round(float(loss), 4), round(float(gw["w"]), 4), round(float(ga["w"]), 4)
        (0.64, 1.6, -3.2)
    """
    names = list(params)
    fast = dict(params)
    meta_losses = []
    mx, my, mt = meta_batch
    for x, y, t in glances:
        loss = criterion(forward(fast, x, t), y)
        inputs = [fast[n] for n in names]
        if scaling is None:
            grads: list[Tensor | None] = list(
                torch.autograd.grad(
                    loss, inputs, create_graph=second_order, retain_graph=True, allow_unused=True
                )
            )
        else:
            grads = scaling.grad(loss, inputs, create_graph=second_order, retain_graph=True)
        step = {}
        for n, g in zip(names, grads):
            if g is None:
                step[n] = fast[n]
                continue
            if inner_clip is not None:
                g = g.clamp(-inner_clip, inner_clip)
            step[n] = fast[n] - alpha[n] * g
        fast = step
        logits = forward(fast, mx, mt)
        meta = criterion(logits, my)
        if extra_loss is not None:
            meta = meta + extra_loss(logits, my)
        meta_losses.append(meta)
    meta_loss = torch.stack(meta_losses).mean()
    leaves = [params[n] for n in names] + [alpha[n] for n in names]
    if scaling is None:
        found: list[Tensor | None] = list(torch.autograd.grad(meta_loss, leaves, allow_unused=True))
    else:
        found = scaling.grad(meta_loss, leaves)
    out = [g if g is not None else torch.zeros_like(v) for g, v in zip(found, leaves)]
    k = len(names)
    return (
        meta_loss.detach(),
        dict(zip(names, out[:k])),
        dict(zip(names, out[k:])),
    )


def _clip_norm(grads: dict[str, Tensor], max_norm: float | None) -> dict[str, Tensor]:
    if max_norm is None or not grads:
        return grads
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()])
    )
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return {n: g * scale.to(g.dtype) for n, g in grads.items()}


class LaMAML(_MetaReplay):
    r"""La-MAML, look-ahead meta-learning (Gupta et al., NeurIPS 2020, "La-MAML: Look-ahead Meta
    Learning for Continual Learning", Algorithm 1).

    A learnable learning rate :math:`\alpha` per weight (:attr:`alpha`, initialised to
    ``alpha_init``). Each training step owns the whole update
    (:class:`~lightning_cl.models.OptimisationStep`):

    1. the incoming batch :math:`B` is split, in order, into ``n_glances`` inner batches; one SGD
       step per glance with rates :math:`\alpha` gives look-ahead weights :math:`\theta_k`
       (``torch.func.functional_call``: no copy of the model);
    2. after each, the meta-loss on :math:`B` plus ``mem_batch_size`` memory samples at
       :math:`\theta_k`; :math:`L` is their mean (:func:`lamaml_meta_gradients`);
    3. :math:`\alpha \leftarrow \alpha - \eta \nabla_\alpha L` (``alpha_lr`` :math:`\eta`; plain SGD);
    4. :math:`\theta \leftarrow \theta - \max(0, \alpha) \odot \nabla_\theta L`, with the updated
       :math:`\alpha` (Algorithm 1's order): a weight whose rate went negative is not moved.

    Choices, stated:

    - ``second_order=False`` (default, first order: the inner gradients are constants) or
      ``True`` (through the inner gradients). The authors' code (``montrealrobotics/La-MAML``):
      ``parser.py`` has ``--second_order`` off by default and ``run_experiments.sh`` passes it
      to none of the MNIST runs (``model/lamaml.py``), only to the CIFAR-100 and TinyImageNet
      runs (``model/lamaml_cifar.py``); Avalanche's ``LaMAML`` defaults to ``True``.
    - ``grad_clip_norm`` (default 2.0): inner gradients are clamped elementwise and the
      meta-gradients of :math:`\theta` and of :math:`\alpha` are each clipped to that norm;
      ``None``: no clipping. 2.0 is the authors' ``parser.py`` default, which every MNIST run of
      ``run_experiments.sh`` keeps; their CIFAR-100 La-MAML run passes ``--grad_clip_norm 1.0``
      (Avalanche's default, 1.0). In their ``model/lamaml.py`` (MNIST) the elementwise clamp of
      the inner gradients discards its result (``torch.clamp`` not assigned), so only the
      meta-gradients are clipped there; ``model/lamaml_cifar.py`` clamps them.
    - The inner steps: the authors' MNIST code takes one look-ahead step per incoming sample
      (their ``--glances`` repeats the whole step over the shuffled batch), their CIFAR code
      splits the batch into ``--cifar_batches`` parts, as ``n_glances`` does here. Their MNIST
      inner step moves by :math:`\max(0, \alpha)`, their CIFAR one (and this class) by
      :math:`\alpha`.
    - Precision: under ``Trainer(precision="16-mixed")`` the inner and meta-losses are scaled by
      the trainer's ``GradScaler`` and their gradients unscaled
      (:class:`~lightning_cl.models.InnerLossScaling`); a step with a non-finite gradient is
      skipped (weights and rates unchanged) and the scale backed off, as ``GradScaler`` skips an
      optimizer step; with ``sync_update`` the optimizer gets the gradients scaled, so that
      Lightning's step unscales, checks and updates the scale itself. ``"bf16-mixed"``,
      ``"16-true"``, ``"bf16-true"``, 32 and 64 bits take the gradients as they come; DeepSpeed's,
      FSDP's and other precision plugins are refused at set-up.
    - ``sync_update=True`` (Avalanche's option) puts the meta-gradient into the weights'
      ``.grad`` and steps the module's optimizer instead of step 4 (:math:`\alpha` still learns).
    - :math:`\alpha` lives in this callback's state (checkpointed, saved on rank 0 and the same on
      every rank); a parameter that grows (a dynamic head) keeps the old rates and starts its
      new entries at ``alpha_init``.
    - The memory is a reservoir (Vitter's algorithm R) offered each step's samples of each
      experience's first epoch (``online=True``, the paper's), or a random subset per experience
      (``online=False``, Avalanche's). Penalties of other callbacks are added to each meta-loss;
      those on the weights (EWC, SI) read the weights before the look-ahead.
    - The logits and loss reported for the step's metrics are those of the incoming batch at the
      weights before the step.
    - DDP: each rank looks ahead on its shard and its share of the memory draw; the
      meta-gradients are averaged over the ranks before steps 3-4
      (:func:`~lightning_cl.methods.all_reduce_tensors`), so every rank holds the same weights
      and rates.

    Args:
        mem_size: memory size in samples.
        mem_batch_size: memory samples added to the meta-loss's batch.
        n_glances: inner SGD steps per incoming batch (the batch split in that many parts). A
            batch of fewer samples takes one glance per sample (a warning says so once per
            experience), as the authors' MNIST code, which steps once per sample.
        alpha_init: initial learning rate of every weight.
        alpha_lr: :math:`\eta`, the learning rate of :math:`\alpha`.
        second_order: differentiate through the inner gradients.
        grad_clip_norm: the clipping of the inner and meta-gradients (``None``: none).
        sync_update: update the weights with the module's optimizer.
        online: update the memory after every step (default) or at experience end.
        seed: seed of the memory and its draws (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for a ``mem_size`` below 1, a negative ``mem_batch_size``, ``n_glances``
            below 1, a non-positive ``alpha_init``, a negative ``alpha_lr`` or
            ``grad_clip_norm``, flags that are not bools, or a ``seed`` that is not an int.

    Example:
        >>> lamaml = LaMAML(mem_size=200, n_glances=5, alpha_init=0.1)
        >>> lamaml.alpha, lamaml.second_order, lamaml.grad_clip_norm
        ({}, False, 2.0)
    """

    def __init__(
        self,
        mem_size: int = 200,
        mem_batch_size: int = 10,
        n_glances: int = 5,
        alpha_init: float = 0.1,
        alpha_lr: float = 0.3,
        second_order: bool = False,
        grad_clip_norm: float | None = 2.0,
        sync_update: bool = False,
        online: bool = True,
        seed: int | None = None,
    ):
        super().__init__(mem_size, mem_batch_size, online, seed, None)
        self.n_glances = _check_int("n_glances", n_glances, 1)
        self.alpha_init = _check_rate("alpha_init", alpha_init)
        self.alpha_lr = _check_rate("alpha_lr", alpha_lr, allow_zero=True)
        for name, flag in (("second_order", second_order), ("sync_update", sync_update)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.second_order = second_order
        self.sync_update = sync_update
        # With sync_update each step ends in the optimizer's step (SI, GEM, ... see its gradient).
        self.steps_optimizer = sync_update
        self._glances_warned = False
        self.grad_clip_norm = (
            None if grad_clip_norm is None else _check_rate("grad_clip_norm", grad_clip_norm)
        )
        self.alpha: dict[str, Tensor] = {}
        """The learnable learning rates, one tensor per trainable parameter (by parameter name)."""

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._glances_warned = False
        # After the module's set-up: a dynamic head has grown by now.
        self._fit_alpha(pl_module)

    @override
    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        super().on_state_restored(trainer, module, experience)
        self._fit_alpha(module)

    def _fit_alpha(self, module: Any) -> None:
        """One rate per entry of every trainable parameter; grown parameters keep their old rates."""
        fitted = {}
        for name, p in trainable(module).items():
            old = self.alpha.get(name)
            new = torch.full(p.shape, self.alpha_init, dtype=torch.float32, device=p.device)
            if old is not None and old.shape == p.shape:
                new = old.to(p.device, torch.float32)
            elif old is not None and old.ndim == p.ndim and all(a <= b for a, b in zip(old.shape, p.shape)):
                new[tuple(slice(0, s) for s in old.shape)] = old.to(p.device, torch.float32)
            fitted[name] = new
        self.alpha = fitted

    @override
    def optimisation_step(
        self, module: Any, batch: Batch, parts: Mapping[str, slice], optimizer: Any
    ) -> StepResult:
        x, y, t = batch
        logits, loss, params = self._step_start(module, batch)
        if set(self.alpha) != set(params) or any(self.alpha[n].shape != p.shape for n, p in params.items()):
            self._fit_alpha(module)
        (drawn,) = self._memory_batches(module, 1, x.device)
        meta_batch = batch if drawn is None else tuple(torch.cat([a, b]) for a, b in zip(batch, drawn))
        if len(y) < self.n_glances and not self._glances_warned:
            self._glances_warned = True
            rank_zero_warn(
                f"LaMAML(n_glances={self.n_glances}) splits each batch into n_glances inner batches, but a "
                f"training batch has {len(y)} samples (per device): it takes {len(y)} glances of one sample "
                "each (n_glances is clamped to the batch size). Lower n_glances or raise the batch size"
            )
        size = math.ceil(len(y) / self.n_glances)
        glances = [(x[i : i + size], y[i : i + size], t[i : i + size]) for i in range(0, len(y), size)]
        alpha = {n: a.detach().requires_grad_(True) for n, a in self.alpha.items()}
        penalties: dict[str, Tensor] = {}

        def forward(weights: Mapping[str, Tensor], bx: Tensor, bt: Tensor) -> Tensor:
            return functional_call(module, dict(weights), (bx, bt))

        def criterion(out: Tensor, target: Tensor) -> Tensor:
            return module.criterion(out, target)

        def extra(out: Tensor, target: Tensor) -> Tensor:
            # Other callbacks' penalties on the meta-batch's look-ahead logits.
            total, terms = module.add_penalties(out.new_zeros(()).float(), meta_batch, out)
            penalties.update(terms)
            return total

        trainer = module.trainer
        scaling = InnerLossScaling.for_trainer(trainer, type(self).__name__)
        with torch.enable_grad():
            _, grad_theta, grad_alpha = lamaml_meta_gradients(
                params,
                alpha,
                forward,
                glances,
                meta_batch,  # type: ignore[arg-type]
                criterion,
                self.second_order,
                self.grad_clip_norm,
                extra,
                scaling,
            )
        if scaling.scaler is not None:
            # Under 16-mixed: a step with an overflow of the scaled gradients is skipped (the
            # weights and rates as they were) and the scale backed off, as GradScaler does. With
            # sync_update a clean step's scale is updated by Lightning's optimizer step instead.
            finite = scaling.all_finite(trainer)
            if not finite or not self.sync_update:
                scaling.update(finite)
            if not finite:
                return StepResult(loss, logits, penalties)
        if trainer.world_size > 1:
            tagged = {f"theta.{n}": g for n, g in grad_theta.items()} | {
                f"alpha.{n}": g for n, g in grad_alpha.items()
            }
            mean = all_reduce_tensors(trainer, tagged, op="mean")
            grad_theta = {n: mean[f"theta.{n}"] for n in grad_theta}
            grad_alpha = {n: mean[f"alpha.{n}"] for n in grad_alpha}
        grad_theta = _clip_norm(grad_theta, self.grad_clip_norm)
        grad_alpha = _clip_norm(grad_alpha, self.grad_clip_norm)
        new_alpha = {n: (self.alpha[n] - self.alpha_lr * grad_alpha[n].float()).detach() for n in self.alpha}
        if not _all_finite([*new_alpha.values(), *grad_theta.values()]):
            return StepResult(torch.full_like(loss, float("nan")), logits, penalties)
        self.alpha = new_alpha
        if self.sync_update:
            optimizer.zero_grad()
            for n, p in params.items():
                # Lightning's precision plugin unscales .grad by the scaler's scale (1 without one).
                p.grad = (grad_theta[n] * scaling.scale).to(p.dtype)
            optimizer.step()
        else:
            with torch.no_grad():
                for n, p in params.items():
                    p.sub_((F.relu(new_alpha[n]) * grad_theta[n].float()).to(p.dtype))
        return StepResult(loss, logits, penalties)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["alpha"] = {n: a.detach().cpu().clone() for n, a in self.alpha.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.alpha = {n: a.float().clone() for n, a in state_dict.get("alpha", {}).items()}
