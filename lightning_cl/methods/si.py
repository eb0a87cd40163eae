"""Synaptic Intelligence (Zenke, Poole and Ganguli, 2017)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.penalties import quadratic_penalty
from lightning_cl.models.heads import pad_to

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
    - Snapshots are copies into buffers held for the experience (one batched copy of the
      gradients and one of the weights per step), never views of the live weights.
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
        # The parameters stepped, with their gradient and weights read into the buffers before
        # the optimizer step, used after it.
        self._step: list[tuple[str, Tensor]] | None = None
        self._grad_buffer: dict[str, Tensor] = {}
        self._weight_buffer: dict[str, Tensor] = {}
        # Omega (theta - theta*) by name, left by this step's `penalty` for the optimizer step.
        self._pull: dict[str, Tensor] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(si_lambda=self.si_lambda, eps=self.eps)

    @staticmethod
    def _params(module: Any) -> dict[str, Tensor]:
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        # A fresh integral (a retried experience starts over). Resuming inside an experience,
        # Lightning restores the running integral after this hook.
        self.omega, self.start, self._step, self._pull = {}, {}, None, {}
        self._grad_buffer, self._weight_buffer = {}, {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        params = self._params(pl_module)
        if not self.start:  # the first step of the experience: the model has its final shape now
            self.start = {n: p.detach().float().clone() for n, p in params.items()}
            self.omega = {n: torch.zeros_like(s) for n, s in self.start.items()}
        live = [(n, p) for n, p in params.items() if p.grad is not None and n in self.omega]
        if not live:
            self._step = None
            return
        # Snapshots go into buffers kept for the experience (one batched copy per step, no new
        # tensors): the gradient the optimizer will use, and the weights before its step.
        for name, _ in live:
            if name not in self._grad_buffer:
                self._grad_buffer[name] = torch.zeros_like(self.omega[name])
                self._weight_buffer[name] = torch.zeros_like(self.omega[name])
        # The penalty's half-gradient Omega (theta - theta*) that this step's `penalty` computed
        # (the weights have not moved since): g - 2 c Omega (theta - theta*) is one fused pass.
        pull, self._pull = self._pull, {}
        if self.path_gradient == "total":
            pull = {}
        copied, fused = [], []
        for name, p in live:
            w = pull.get(name)
            if w is not None and w.shape == p.shape and p.grad.dtype == torch.float32:  # type: ignore[union-attr]
                fused.append((name, p, w))
            else:
                copied.append((name, p))
        if copied:
            torch._foreach_copy_(
                [self._grad_buffer[n] for n, _ in copied],
                [p.grad.detach() for _, p in copied],  # type: ignore[union-attr]
            )
        for name, p, w in fused:
            torch.add(p.grad.detach(), w, alpha=-2.0 * self.si_lambda, out=self._grad_buffer[name])  # type: ignore[union-attr]
        for name, _ in copied:
            w = pull.get(name)
            if w is not None:  # a parameter that grew: the units that existed are anchored
                old = tuple(slice(0, k) for k in w.shape)
                self._grad_buffer[name][old].add_(w, alpha=-2.0 * self.si_lambda)
        torch._foreach_copy_([self._weight_buffer[n] for n, _ in live], [p.detach() for _, p in live])
        self._step = live

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step is None:  # no optimizer step in this batch (gradient accumulation)
            return
        live, self._step = self._step, None
        names = [n for n, _ in live]
        before = [self._weight_buffer[n] for n in names]
        after = [p.detach() if p.dtype == torch.float32 else p.detach().float() for _, p in live]
        with torch.no_grad():
            torch._foreach_sub_(before, after)  # theta_before - theta_after = -delta
            torch._foreach_addcmul_(
                [self.omega[n] for n in names], [self._grad_buffer[n] for n in names], before
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
        self._grad_buffer, self._weight_buffer = {}, {}

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        r"""SI's term :math:`c \sum_i \Omega_i (\theta_i - \theta^*_i)^2`.

        A sum over the parameters' entries (not a mean; it does not depend on the batch): a
        float32 scalar on the parameters' device, whatever the training precision
        (:func:`~lightning_cl.methods.penalties.quadratic_penalty`); ``None`` before the first
        experience ended.
        """
        if not self.importance or self.si_lambda == 0.0:
            return None
        return self.si_lambda * quadratic_penalty(module, self.importance, self.anchor, pull=self._pull)

    def state_dict(self) -> dict[str, Any]:
        names = ("importance", "anchor", "omega", "start")
        return {name: getattr(self, name) for name in names}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.importance = dict(state_dict["importance"])
        self.anchor = dict(state_dict["anchor"])
        self.omega = dict(state_dict["omega"])
        self.start = dict(state_dict["start"])
        self._step = None
