"""Synaptic Intelligence (Zenke, Poole and Ganguli, 2017)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.penalties import quadratic_penalty
from lightning_cl.models.heads import pad_to, slice_to

__all__ = ["SI", "SI_GRADIENTS"]

SI_GRADIENTS = ("task", "total")


class SI(ContinualCallback):
    r"""Synaptic Intelligence: importance from each weight's contribution to the loss decrease.

    While training experience :math:`\mu`, every optimizer step adds
    :math:`-g_i \, \Delta\theta_i` to a running path integral :math:`\omega^\mu_i`
    (:math:`g` the loss gradient, :math:`\Delta\theta` the step). When the experience ends,

    .. math:: \Omega_i \leftarrow \Omega_i + \mathrm{clip}\Big(
              \frac{\omega^\mu_i}{(\theta_i^{\mu} - \theta_i^{\mu-1})^2 + \xi}, 0, \Omega_{max}\Big)

    with :math:`\theta^{\mu-1}, \theta^{\mu}` the weights at the start and the end of the
    experience, and :math:`\theta^* \leftarrow \theta^\mu`. Later experiences add
    :math:`c \sum_i \Omega_i (\theta_i - \theta^*_i)^2` to the loss.

    Choices, stated:

    - ``path_gradient="task"`` (the paper's code): :math:`g` is the gradient of the loss
      without SI's own penalty (that penalty's gradient, known in closed form, is subtracted);
      ``"total"`` (Avalanche) uses the whole gradient, penalty included.
    - The gradient is the one the optimizer uses: read in ``on_before_optimizer_step``, after
      the DDP all-reduce and AMP unscaling, before clipping. Under DDP every rank therefore holds
      the same :math:`\omega` and :math:`\Omega`.
    - :math:`\omega/(\Delta^2 + \xi)` is clipped from below at 0 (a weight that moved against its
      gradient is not important) and :math:`\Omega` from above at ``max_importance``: importances
      beyond :math:`1/(c \cdot lr)` make plain SGD on the penalty unstable.
    - Snapshots are copies into buffers held for the experience, never views of the live
      weights. The running integral, the weights at the experience's start and the per-step
      snapshots of the gradient and the weights are views of one flat float32 tensor each (per
      device), and so are :math:`\Omega`, :math:`\theta^*` and the penalty's three work
      buffers: a step allocates nothing of the weights' size, and the integral's update is one
      pass over the flat tensors. The buffers are built at the experience's first step (and
      penalty), for the parameters the model has then; SI holds about nine float32 copies of
      the trainable weights while an experience trains.
    - The penalty has no factor 1/2 (the paper's form). Avalanche's ``SynapticIntelligence``
      halves it and scales :math:`\Omega` by 0.0015, so its ``si_lambda`` is about
      ``si_lambda / 0.00075`` here.
    - Parameters that grew (a dynamic head) are anchored on the slice that existed.

    Args:
        si_lambda: penalty strength :math:`c \geq 0`.
        eps: damping :math:`\xi > 0` (the paper uses 1e-3 on split MNIST; Avalanche 1e-7).
        max_importance: upper clip :math:`\Omega_{max} > 0` of the importances (``None``: none).
        path_gradient: ``"task"`` or ``"total"``, as above.

    Raises:
        ValueError: for a negative ``si_lambda``, ``eps <= 0``, ``max_importance <= 0`` or an
            unknown ``path_gradient``.

    Example:
        >>> si = SI(si_lambda=1.0)
        >>> si.eps, si.path_gradient
        (0.001, 'task')
    """

    needs_optimizer_step = "reads the gradient and the update of every optimizer step for its path integral"

    def __init__(
        self,
        si_lambda: float = 1.0,
        eps: float = 1e-3,
        max_importance: float | None = 10.0,
        path_gradient: str = "task",
    ):
        if not isinstance(si_lambda, int | float) or si_lambda < 0:
            raise ValueError(f"si_lambda must be a number >= 0, got {si_lambda!r}")
        if not isinstance(eps, int | float) or eps <= 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        bounded = isinstance(max_importance, int | float) and max_importance > 0
        if max_importance is not None and not bounded:
            raise ValueError(f"max_importance must be a number > 0 or None, got {max_importance!r}")
        if path_gradient not in SI_GRADIENTS:
            raise ValueError(f"path_gradient must be one of {SI_GRADIENTS}, got {path_gradient!r}")
        self.si_lambda = float(si_lambda)
        self.eps = float(eps)
        self.max_importance = None if max_importance is None else float(max_importance)
        self.path_gradient = path_gradient
        self.importance: dict[str, Tensor] = {}  # Omega
        self.anchor: dict[str, Tensor] = {}  # theta*, the weights at the end of the last experience
        self.omega: dict[str, Tensor] = {}  # path integral of the running experience
        self.start: dict[str, Tensor] = {}  # weights at the start of the running experience
        # The running experience's flat buffers (built at its first step), the parameters whose
        # gradient and weights this step's snapshots hold (their positions), and the penalty's
        # flat Omega, theta* and work buffers (built at the experience's first penalty).
        self._path: _Path | None = None
        self._step: list[int] | None = None
        self._anchored: _Anchored | None = None
        # Omega (theta - theta*) by name, left by this step's `penalty` for the optimizer step.
        self._pull: dict[str, Tensor] = {}
        self._key: tuple[tuple[float, float], str] | None = None

    @property
    def state_key(self) -> str:
        # Lightning reads it at every hook call (its profiler's action names): built once per setting.
        settings = (self.si_lambda, self.eps)
        if self._key is None or self._key[0] != settings:
            self._key = (settings, self._generate_state_key(si_lambda=self.si_lambda, eps=self.eps))
        return self._key[1]

    @staticmethod
    def _params(module: Any) -> dict[str, Tensor]:
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        # A fresh integral (a retried experience starts over). Resuming inside an experience,
        # Lightning restores the running integral after this hook.
        self.omega, self.start, self._step, self._pull = {}, {}, None, {}
        self._path, self._anchored = None, None

    def _new_path(self, module: Any) -> _Path | None:
        """The running experience's buffers, at its first step: the model has its final shape now."""
        params = self._params(module)
        resumed = bool(self.start)  # a checkpoint inside the experience: its integral goes on
        names = [n for n in params if n in self.omega] if resumed else list(params)
        if not names:
            return None
        shapes = [params[n].shape for n in names]
        devices = [params[n].device for n in names]
        path = _Path(names, [params[n] for n in names], *(_Flat(shapes, devices) for _ in range(4)))
        with torch.no_grad():
            for i, name in enumerate(names):
                path.start.views[i].copy_(self.start[name] if resumed else params[name].detach())
                if resumed:
                    path.omega.views[i].copy_(self.omega[name])
        self.start = dict(zip(names, path.start.views))
        self.omega = dict(zip(names, path.omega.views))
        return path

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        path = self._path
        if path is None:
            path = self._path = self._new_path(pl_module)
            if path is None:
                self._step = None
                return
        params = path.params
        live = [i for i, p in enumerate(params) if p.grad is not None]
        if not live:
            self._step = None
            return
        # The gradient the optimizer will use and the weights before its step, copied into the
        # experience's buffers. The penalty's half-gradient Omega (theta - theta*) that this
        # step's `penalty` computed (the weights have not moved since) is subtracted in the same
        # pass: g - 2 c Omega (theta - theta*).
        pull, self._pull = self._pull, {}
        if self.path_gradient == "total":
            pull = {}
        scale = -2.0 * self.si_lambda
        targets, sources, grown = [], [], []
        for i in live:
            grad = params[i].grad.detach()  # type: ignore[union-attr]
            w = pull.get(path.names[i])
            if w is not None and w.shape == grad.shape and grad.dtype == torch.float32:
                torch.add(grad, w, alpha=scale, out=path.grads.views[i])
                continue
            targets.append(path.grads.views[i])
            sources.append(grad)
            if w is not None:  # a parameter that grew: the units that existed are anchored
                grown.append((path.grads.views[i][tuple(slice(0, k) for k in w.shape)], w))
        if targets:
            torch._foreach_copy_(targets, sources)
        for target, w in grown:
            target.add_(w, alpha=scale)
        torch._foreach_copy_([path.weights.views[i] for i in live], [params[i].detach() for i in live])
        self._step = live

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._anchored is not None:  # the batch's backward pass is over: the penalty's buffers are free
            self._anchored.busy = False
        # No optimizer step in this batch (gradient accumulation):
        if self._step is None or self._path is None:
            return
        live, self._step = self._step, None
        path = self._path
        after = [path.params[i].detach() for i in live]
        after = [p if p.dtype == torch.float32 else p.float() for p in after]
        with torch.no_grad():
            if len(live) == len(path.params):  # every parameter stepped: one pass over the flat buffers
                torch._foreach_sub_(path.weights.views, after)  # theta_before - theta_after = -delta
                for omega, grads, step in zip(path.omega.flats, path.grads.flats, path.weights.flats):
                    omega.addcmul_(grads, step)
            else:
                moved = [path.weights.views[i] for i in live]
                torch._foreach_sub_(moved, after)
                torch._foreach_addcmul_(
                    [path.omega.views[i] for i in live], [path.grads.views[i] for i in live], moved
                )

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if not self.start:  # no step was taken
            return
        end = {n: p.detach().float().clone() for n, p in self._params(module).items()}
        for name, omega in self.omega.items():
            delta = end[name] - self.start[name]
            new = (omega / (delta.pow(2) + self.eps)).clamp_min(0.0)
            if name in self.importance:
                new = pad_to(self.importance[name].to(new.device), new.shape) + new
            self.importance[name] = new if self.max_importance is None else new.clamp_max(self.max_importance)
        self.anchor = {n: end[n] for n in self.importance}
        self.omega, self.start, self._step = {}, {}, None
        self._path, self._anchored = None, None

    def _new_anchored(self, module: Any) -> _Anchored | None:
        """Omega and theta* packed into flat buffers (the dicts then hold views of them)."""
        entries = [(n, p) for n, p in module.named_parameters() if n in self.importance]
        if not entries:
            return None
        shapes = [self.importance[n].shape for n, _ in entries]
        devices = [p.device for _, p in entries]
        omega, anchor, offset, pull, grad = (_Flat(shapes, devices) for _ in range(5))
        with torch.no_grad():
            for i, (name, _) in enumerate(entries):
                omega.views[i].copy_(self.importance[name])
                anchor.views[i].copy_(self.anchor[name])
                self.importance[name], self.anchor[name] = omega.views[i], anchor.views[i]
        names = [n for n, _ in entries]
        params = [p for _, p in entries]
        return _Anchored(module, params, omega, anchor, offset, pull, grad, dict(zip(names, pull.views)))

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        r"""SI's term :math:`c \sum_i \Omega_i (\theta_i - \theta^*_i)^2`.

        A sum over the parameters' entries (not a mean; it does not depend on the batch): a
        float32 scalar on the parameters' device, whatever the training precision, with the
        gradient :math:`2 c \Omega (\theta - \theta^*)` (the form of
        :func:`~lightning_cl.methods.penalties.quadratic_penalty`, computed in SI's flat
        buffers); ``None`` before the first experience ended.
        """
        if not self.importance or self.si_lambda == 0.0:
            return None
        anchored = self._anchored
        if anchored is None or anchored.module is not module:
            anchored = self._anchored = self._new_anchored(module)
        if anchored is None or anchored.busy:
            # A second term before this batch's backward pass (an owner of the optimisation step
            # adding penalties to several losses): the first one's buffers are still needed.
            self._pull = {}
            return self.si_lambda * quadratic_penalty(module, self.importance, self.anchor, pull=self._pull)
        anchored.busy = True
        self._pull = anchored.pull_by_name
        return self.si_lambda * _FlatAnchoredQuadratic.apply(anchored, *anchored.params)

    def state_dict(self) -> dict[str, Any]:
        names = ("importance", "anchor", "omega", "start")
        return {name: getattr(self, name) for name in names}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.importance = dict(state_dict["importance"])
        self.anchor = dict(state_dict["anchor"])
        self.omega = dict(state_dict["omega"])
        self.start = dict(state_dict["start"])
        self._step, self._path, self._anchored, self._pull = None, None, None, {}


class _Flat:
    """Float32 values for a list of tensors: views of one flat tensor per device.

    An element-wise operation on :attr:`flats` updates every view in one pass and one call.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], devices: Sequence[torch.device]) -> None:
        sizes: dict[torch.device, int] = {}
        layout = []
        for shape, device in zip(shapes, devices):
            numel = math.prod(shape)
            layout.append((device, sizes.get(device, 0), numel, tuple(shape)))
            sizes[device] = sizes.get(device, 0) + numel
        by_device = {d: torch.zeros(n, dtype=torch.float32, device=d) for d, n in sizes.items()}
        self.flats = list(by_device.values())
        self.views = [by_device[d].narrow(0, o, n).view(s) for d, o, n, s in layout]


class _Path:
    """The running experience's parameters and its flat buffers: integral, start, snapshots."""

    def __init__(
        self, names: list[str], params: list[Tensor], omega: _Flat, start: _Flat, grads: _Flat, weights: _Flat
    ) -> None:
        self.names, self.params = names, params
        self.omega, self.start, self.grads, self.weights = omega, start, grads, weights


class _Anchored:
    """The penalised parameters, flat Omega and theta*, and the penalty's work buffers.

    ``busy`` from a penalty until its batch's backward pass is over (``on_train_batch_end``).
    """

    def __init__(
        self,
        module: Any,
        params: list[Tensor],
        omega: _Flat,
        anchor: _Flat,
        offset: _Flat,
        pull: _Flat,
        grad: _Flat,
        pull_by_name: dict[str, Tensor],
    ) -> None:
        self.module, self.params = module, params
        self.omega, self.anchor, self.offset, self.pull, self.grad = omega, anchor, offset, pull, grad
        self.pull_by_name = pull_by_name
        self.busy = False


class _FlatAnchoredQuadratic(torch.autograd.Function):
    """``sum(omega * (param - anchor) ** 2)`` over the parameters, in preallocated flat buffers.

    Forward: the offsets (one pass per parameter, into ``offset``), ``omega * offset`` into
    ``pull`` and a dot product (one pass each over the flat buffers); nothing allocated.
    ``pull`` is saved for the backward pass, so its version counter reports an overwrite before
    it. Backward: ``2 * pull`` scaled by the incoming gradient, one pass into ``grad``, whose
    views are the gradients handed to autograd. SI holds references to them, so autograd never
    adopts one as a ``.grad``: it adds them into the task gradient (or copies them), and the
    buffer is free again when the backward pass ends. Under ``create_graph`` (a second-order
    owner of the optimisation step) the gradients are new tensors. Units a head grew since
    the anchor get zero.
    """

    @staticmethod
    def forward(ctx: Any, anchored: _Anchored, *params: Tensor) -> Tensor:
        for param, offset, anchor in zip(params, anchored.offset.views, anchored.anchor.views):
            weights = param.detach()
            if weights.shape != offset.shape:
                weights = slice_to(weights, offset.shape)
            torch.sub(weights, anchor, out=offset)
        total: Tensor | None = None
        for omega, offset, pull in zip(anchored.omega.flats, anchored.offset.flats, anchored.pull.flats):
            torch.mul(omega, offset, out=pull)
            term = torch.dot(pull, offset)
            total = term if total is None else total + term.to(total.device)
        ctx.anchored = anchored
        ctx.save_for_backward(*anchored.pull.flats)
        return total  # type: ignore[return-value]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        ctx.saved_tensors  # noqa: B018 (raises if the buffers were overwritten since the forward pass)
        anchored = ctx.anchored
        grads: list[Tensor | None] = [None]
        if torch.is_grad_enabled():  # create_graph: gradients that outlive this pass
            for param, pull in zip(anchored.params, anchored.pull.views):
                g = pull * (2.0 * grad.to(pull.device))
                grads.append(pad_to(g, param.shape).to(param.dtype))
            return tuple(grads)
        for pull, out in zip(anchored.pull.flats, anchored.grad.flats):
            torch.mul(pull, 2.0 * grad.to(pull.device), out=out)
        for param, g in zip(anchored.params, anchored.grad.views):
            grads.append(pad_to(g, param.shape).to(param.dtype))
        return tuple(grads)
