"""Riemannian Walk (Chaudhry et al., 2018): online Fisher (EWC++) plus path-integral scores."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cl.data.batch import Batch
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.penalties import quadratic_penalty
from lightning_cl.models.heads import pad_to, slice_to

__all__ = ["RWalk"]

_EPS = float(torch.finfo(torch.float32).eps)


class RWalk(ContinualCallback):
    r"""RWalk: a quadratic penalty weighted by the Fisher and by each weight's share of the loss decrease.

    During training, after every optimizer step (Chaudhry et al., 2018, Sec. 4):

    - the Fisher is a moving average of squared gradients (EWC++, Eq. 6):
      :math:`F \leftarrow \alpha g^2 + (1 - \alpha) F`;
    - the first-order loss change of each weight is accumulated,
      :math:`\ell \mathrel{-}= g \, \Delta\theta`, and every ``delta_t`` steps turned into a
      score normalised by the distance travelled in the Fisher metric (Eq. 7):
      :math:`s \mathrel{+}= \ell / (\tfrac12 F (\theta - \theta_{t_0})^2 + \epsilon)`.

    When an experience ends, the stream's score becomes the mean of the previous one and the
    experience's, :math:`S \leftarrow \tfrac12 (S + s)`, the weights :math:`\theta^*` are kept,
    and later experiences add (Eq. 8)

    .. math::
        \lambda \sum_i \Big(\frac{F_i}{\max F} + \frac{\max(S_i, 0)}{\max S}\Big)
        (\theta_i - \theta^*_i)^2 .

    Choices, stated:

    - :math:`g` is the gradient of the loss without RWalk's own penalty (its analytic gradient is
      subtracted from the gradient the optimizer sees), read in ``on_before_optimizer_step``: after
      the DDP all-reduce and AMP unscaling, so every rank integrates the same numbers. Avalanche's
      ``RWalkPlugin`` runs an extra forward and backward in eval mode on each batch for it (no
      other method's term, no dropout); here the step's own gradient is reused, at no extra
      pass. List RWalk before GEM or A-GEM to integrate the gradient before their projection.
    - Both terms are normalised by their maxima over all weights (the paper's suggestion,
      Avalanche's choice); negative scores are cut at 0. :math:`\epsilon` is float32's epsilon.
    - The penalty has no :math:`\tfrac12` and is a sum over weights (Avalanche's form). Weights a
      dynamic head grew since are not penalised; the Fisher of a grown head starts at 0 for
      the new units.

    Args:
        ewc_lambda: strength :math:`\lambda` of the penalty (>= 0).
        ewc_alpha: weight :math:`\alpha` of the newest squared gradient in the Fisher's moving
            average, in [0, 1].
        delta_t: optimizer steps between score updates (>= 1).

    Raises:
        ValueError: for a negative or non-finite ``ewc_lambda``, ``ewc_alpha`` outside [0, 1], or
            a ``delta_t`` that is not an int >= 1 (a bool included).

    Example:
        >>> rwalk = RWalk(ewc_lambda=0.1, ewc_alpha=0.9, delta_t=10)
        >>> rwalk.weights is None
        True
    """

    needs_optimizer_step = "reads the gradient and update of every optimizer step (Fisher, path integral)"

    def __init__(self, ewc_lambda: float = 0.1, ewc_alpha: float = 0.9, delta_t: int = 10):
        if (
            isinstance(ewc_lambda, bool)
            or not isinstance(ewc_lambda, int | float)
            or not math.isfinite(ewc_lambda)
            or ewc_lambda < 0
        ):
            raise ValueError(f"ewc_lambda must be a finite number >= 0, got {ewc_lambda!r}")
        if (
            isinstance(ewc_alpha, bool)
            or not isinstance(ewc_alpha, int | float)
            or not 0.0 <= ewc_alpha <= 1.0
        ):
            raise ValueError(f"ewc_alpha must be a number in [0, 1], got {ewc_alpha!r}")
        if isinstance(delta_t, bool) or not isinstance(delta_t, int) or delta_t < 1:
            raise ValueError(f"delta_t must be an int >= 1 (not a bool), got {delta_t!r}")
        self.ewc_lambda = float(ewc_lambda)
        self.ewc_alpha = float(ewc_alpha)
        self.delta_t = delta_t
        # Across the stream.
        self.fisher: dict[str, Tensor] = {}
        self.scores: dict[str, Tensor] | None = None
        self.weights: dict[str, Tensor] | None = None
        self.anchors: dict[str, Tensor] = {}
        # Within the running experience (checkpointed too, for a resume inside it).
        self._loss: dict[str, Tensor] = {}
        self._since: dict[str, Tensor] = {}
        self._experience_scores: dict[str, Tensor] = {}
        self._steps = 0
        # Within one step: views of the buffers below (kept for the experience).
        self._grad: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}
        self._grad_buffer: dict[str, Tensor] = {}
        self._before_buffer: dict[str, Tensor] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            ewc_lambda=self.ewc_lambda, ewc_alpha=self.ewc_alpha, delta_t=self.delta_t
        )

    @staticmethod
    def _params(module: Any) -> dict[str, Tensor]:
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._experience_scores, self._loss, self._since, self._steps = {}, {}, {}, 0
        self._grad_buffer, self._before_buffer = {}, {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        # After the heads grew: the running sums take the parameters' present shapes.
        for name, param in self._params(pl_module).items():
            value = param.detach().float()
            self.fisher[name] = self._fit(self.fisher.get(name), value)
            self._experience_scores[name] = self._fit(self._experience_scores.get(name), value)
            self._loss[name] = self._fit(self._loss.get(name), value)
            if name not in self._since or self._since[name].shape != value.shape:
                self._since[name] = value.clone()

    @staticmethod
    def _fit(saved: Tensor | None, like: Tensor) -> Tensor:
        if saved is None:
            return torch.zeros_like(like)
        return pad_to(saved.to(like.device), like.shape)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        # The gradient and the weights before the step go into buffers kept for the experience
        # (allocated at its first step, reused after): no tensor of the weights' size per step.
        stepped = []
        for name, param in self._params(pl_module).items():
            if param.grad is None:
                continue
            grad = self._grad_buffer.get(name)
            if grad is None or grad.shape != param.shape or grad.device != param.device:
                grad = self._grad_buffer[name] = torch.empty_like(param, dtype=torch.float32)
                self._before_buffer[name] = torch.empty_like(grad)
            grad.copy_(param.grad.detach())
            if self.weights is not None and name in self.weights and self.ewc_lambda:
                weight, anchor = self.weights[name], self.anchors[name]
                own = (
                    2
                    * self.ewc_lambda
                    * weight.to(grad.device)
                    * (slice_to(param.detach().float(), weight.shape) - anchor.to(grad.device))
                )
                slice_to(grad, weight.shape).sub_(own)
            self.fisher[name].mul_(1 - self.ewc_alpha).add_(grad.pow(2), alpha=self.ewc_alpha)
            self._before_buffer[name].copy_(param.detach())
            stepped.append(name)
        self._grad = {n: self._grad_buffer[n] for n in stepped}
        self._before = {n: self._before_buffer[n] for n in stepped}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._grad:
            return
        params = self._params(pl_module)
        with torch.no_grad():
            for name, grad in self._grad.items():
                # loss -= g * (theta_after - theta_before), as loss += g * (theta_before - theta_after)
                before = self._before[name].sub_(params[name].detach())
                self._loss[name].addcmul_(grad, before)
            self._steps += 1
            if self._steps % self.delta_t == 0:
                for name, param in params.items():
                    if name not in self._loss:
                        continue
                    now = param.detach().float()
                    moved = 0.5 * self.fisher[name] * (now - self._since[name]).pow(2) + _EPS
                    self._experience_scores[name].add_(self._loss[name] / moved)
                    self._loss[name].zero_()
                    self._since[name].copy_(now)
        self._grad, self._before = {}, {}

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        new = self._experience_scores
        if self.scores is None:
            scores = {n: s.clone() for n, s in new.items()}
        else:
            scores = {n: 0.5 * (self._fit(self.scores.get(n), s) + s) for n, s in new.items()}
        self.scores = scores
        self.anchors = {n: p.detach().float().clone() for n, p in self._params(module).items()}
        max_fisher = max((float(f.max()) for f in self.fisher.values()), default=0.0)
        max_score = max((float(s.max()) for s in scores.values()), default=0.0)
        self.weights = {
            n: self.fisher[n] / max(max_fisher, _EPS) + F.relu(scores[n]) / max(max_score, _EPS)
            for n in self.anchors
            if n in scores
        }
        self._experience_scores, self._loss, self._since, self._steps = {}, {}, {}, 0

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        """:math:`\\lambda \\sum w (\\theta - \\theta^*)^2`: a sum over weights, float32, on their device."""
        if self.weights is None or self.ewc_lambda == 0.0:
            return None
        return self.ewc_lambda * quadratic_penalty(module, self.weights, self.anchors)

    def state_dict(self) -> dict[str, Any]:
        return {
            "fisher": self.fisher,
            "scores": self.scores,
            "weights": self.weights,
            "anchors": self.anchors,
            "loss": self._loss,
            "since": self._since,
            "experience_scores": self._experience_scores,
            "steps": self._steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fisher = dict(state_dict["fisher"])
        self.scores = state_dict["scores"]
        self.weights = state_dict["weights"]
        self.anchors = dict(state_dict["anchors"])
        self._loss = dict(state_dict["loss"])
        self._since = dict(state_dict["since"])
        self._experience_scores = dict(state_dict["experience_scores"])
        self._steps = int(state_dict["steps"])
