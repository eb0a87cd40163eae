"""Memory Aware Synapses (Aljundi et al., 2018)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.penalties import pad_to, quadratic_penalty
from lightning_cl.methods.per_sample import add_linear_per_sample, linear_layers

__all__ = ["MAS", "MAS_ESTIMATORS", "output_sensitivity"]

MAS_ESTIMATORS = ("per_sample", "minibatch")


def output_sensitivity(
    module: torch.nn.Module,
    data: DatasetView,
    positions: Tensor,
    *,
    batch_size: int,
    estimator: str = "per_sample",
) -> tuple[dict[str, Tensor], int]:
    r"""Sums of :math:`|\nabla_\theta \|f(x)\|_2^2|` over ``data[positions]``, and how many terms.

    ``per_sample`` (the paper): one gradient per sample, its absolute value summed; in closed
    form for models whose trainable parameters are all linear layers
    (:func:`~lightning_cl.methods.per_sample.add_linear_per_sample`), else with
    ``torch.func.vmap``. ``minibatch`` (Avalanche's ``MASPlugin``): the absolute gradient of the
    batch mean, one term per batch. Divide by the count for the mean. :math:`f` is the module's output (the
    logits; masked units of a dynamic head are constants and add no gradient). The module runs
    in eval mode and is left in its former mode.
    """
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in module.named_buffers()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device

    def squared_norm(logits: Tensor) -> Tensor:
        # Masked units of a dynamic head are a constant: they add nothing to the gradient.
        return logits.float().pow(2).sum(-1)

    def sample_norm(p: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        return squared_norm(functional_call(module, (p, buffers), (x.unsqueeze(0), t)))[0]

    per_sample = vmap(grad(sample_norm), in_dims=(None, 0, None))
    linears = linear_layers(module, params) if estimator == "per_sample" else None
    count = 0
    was_training = module.training
    module.eval()
    try:
        for chunk in positions.split(batch_size):
            x, _, t = (v.to(device) for v in data.__getitems__(chunk))
            if linears is not None and add_linear_per_sample(
                module, linears, squared_norm, x, t, sums, "abs"
            ):
                count += len(chunk)
                continue
            linears = None  # the closed form does not apply to this model: vmap from here on
            if estimator == "minibatch":
                with torch.enable_grad():
                    value = squared_norm(module(x, t)).mean()
                    live = [p for p in module.parameters() if p.requires_grad]
                    grads = torch.autograd.grad(value, live, allow_unused=True)
                for name, g in zip(params, grads):
                    if g is not None:
                        sums[name] += g.float().abs()
                count += 1
                continue
            for task in torch.unique(t).tolist():
                mask = t == task
                for name, g in per_sample(params, x[mask], t[mask][:1]).items():
                    sums[name] += g.float().abs().sum(0)
            count += len(chunk)
    finally:
        module.train(was_training)
    return sums, count


class MAS(ContinualCallback):
    r"""Memory Aware Synapses: importance from how much each weight moves the model's output.

    After each experience, each weight's importance is the mean, over that experience's data,
    of the absolute gradient of the squared L2 norm of the output,
    :math:`\Omega^{new}_i = \frac1N \sum_n |\partial \|f(x_n)\|_2^2 / \partial \theta_i|` (no labels
    needed), folded into the running importance :math:`\Omega \leftarrow \alpha \Omega + (1 - \alpha)
    \Omega^{new}` (the first experience sets it), and the weights are anchored,
    :math:`\theta^* \leftarrow \theta`. Later experiences add
    :math:`\lambda \sum_i \Omega_i (\theta_i - \theta^*_i)^2` to the loss.

    Choices, stated:

    - ``estimator="per_sample"`` follows the paper (one gradient per sample);
      ``"minibatch"`` takes the gradient of the batch mean, as Avalanche's ``MASPlugin`` does
      (smaller values: absolute values of averages, not averages of absolute values).
    - The running average with ``alpha`` is Avalanche's (its default 0.5); ``alpha=0`` keeps
      only the last experience's importance.
    - Computed in eval mode on the experience's own data. Under DDP each rank computes its
      shard and the sums are all-reduced, so every rank holds the same importance.
    - Importances are clipped from above at ``max_importance`` (and are non-negative by
      construction): beyond :math:`1/(\lambda \cdot lr)` plain SGD on the penalty diverges.
      Parameters that grew are anchored on the slice that existed.

    Args:
        lambda_reg: penalty strength :math:`\lambda \geq 0`.
        alpha: weight :math:`\alpha \in [0, 1]` of the old importance in the running average.
        estimator: ``"per_sample"`` or ``"minibatch"``.
        batch_size: batch size of the estimation (default: the experience's eval batch size).
        max_importance: upper clip of the importances (``None``: none).

    Raises:
        ValueError: for a negative ``lambda_reg``, ``alpha`` outside [0, 1], an unknown
            estimator, a non-positive batch size or ``max_importance``.

    Example:
        >>> mas = MAS(lambda_reg=1.0, alpha=0.5)
        >>> mas.estimator
        'per_sample'
    """

    def __init__(
        self,
        lambda_reg: float = 1.0,
        alpha: float = 0.5,
        estimator: str = "per_sample",
        batch_size: int | None = None,
        max_importance: float | None = 10.0,
    ):
        if not isinstance(lambda_reg, int | float) or lambda_reg < 0:
            raise ValueError(f"lambda_reg must be a number >= 0, got {lambda_reg!r}")
        if not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        if estimator not in MAS_ESTIMATORS:
            raise ValueError(f"estimator must be one of {MAS_ESTIMATORS}, got {estimator!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        bounded = isinstance(max_importance, int | float) and max_importance > 0
        if max_importance is not None and not bounded:
            raise ValueError(f"max_importance must be a number > 0 or None, got {max_importance!r}")
        self.lambda_reg = float(lambda_reg)
        self.alpha = float(alpha)
        self.estimator = estimator
        self.batch_size = batch_size
        self.max_importance = None if max_importance is None else float(max_importance)
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(lambda_reg=self.lambda_reg, alpha=self.alpha)

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        data = experience.dataset
        shard = torch.arange(trainer.global_rank, len(data), trainer.world_size)
        sums, count = output_sensitivity(
            module,
            data,
            shard,
            batch_size=self.batch_size or experience.eval_batch_size,
            estimator=self.estimator,
        )
        names = list(sums)
        device = sums[names[0]].device
        flat = torch.cat([sums[n].flatten() for n in names] + [torch.tensor([float(count)], device=device)])
        flat = trainer.strategy.reduce(flat, reduce_op="sum")
        total, offset = max(float(flat[-1]), 1.0), 0
        for name in names:
            k = sums[name].numel()
            new = (flat[offset : offset + k] / total).view_as(sums[name])
            offset += k
            if name in self.importance:
                old = pad_to(self.importance[name].to(device), new.shape)
                new = self.alpha * old + (1 - self.alpha) * new
            self.importance[name] = new if self.max_importance is None else new.clamp_max(self.max_importance)
        weights = dict(module.named_parameters())
        self.anchor = {n: weights[n].detach().float().clone() for n in self.importance}

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        if not self.importance or self.lambda_reg == 0.0:
            return None
        return self.lambda_reg * quadratic_penalty(module, self.importance, self.anchor).to(logits.device)

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.importance = dict(state_dict["importance"])
        self.anchor = dict(state_dict["anchor"])
