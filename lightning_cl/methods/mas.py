"""Memory Aware Synapses (Aljundi et al., 2018)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.distributed import all_reduce_tensors, rank_shard
from lightning_cl.methods.penalties import quadratic_penalty
from lightning_cl.methods.per_sample import ESTIMATORS, SupportsGetItems, per_sample_gradient_sums
from lightning_cl.models.heads import pad_to

__all__ = ["MAS", "MAS_ESTIMATORS", "output_sensitivity"]

MAS_ESTIMATORS = ESTIMATORS


def _squared_norm(logits: Tensor, targets: Tensor) -> Tensor:
    # Masked units of a dynamic head are a constant: they add nothing to the gradient.
    return logits.pow(2).sum(-1)


def output_sensitivity(
    module: torch.nn.Module,
    data: SupportsGetItems,
    positions: Tensor,
    *,
    batch_size: int,
    estimator: str = "per_sample",
) -> tuple[dict[str, Tensor], int]:
    r"""Sums of :math:`|\nabla_\theta \|f(x)\|_2^2|` over ``data[positions]``, and how many terms.

    ``per_sample`` (the paper): one gradient per sample, its absolute value summed.
    ``minibatch`` (Avalanche's ``MASPlugin``): the absolute gradient of the batch mean, one term
    per batch. Divide by the count for the mean. :math:`f` is the module's output (the logits;
    masked units of a dynamic head are constants and add no gradient). The module runs in eval
    mode and is left in its former mode.

    :func:`~lightning_cl.methods.per_sample.per_sample_gradient_sums` with the squared output
    norm and ``reduction="abs"``: in closed form for models whose trainable parameters are all
    linear layers, else with ``torch.func.vmap``.

    Args:
        module: called as ``module(x, t)``.
        data: gives ``(x, y, t)`` for a tensor of positions (a ``DatasetView``); the labels are
            not used.
        positions: the samples to use.
        batch_size: samples per forward pass (and per term, for ``minibatch``).
        estimator: ``"per_sample"`` or ``"minibatch"``.

    Returns:
        The sums by trainable parameter name (float32), and the number of terms (samples, or
        batches for ``minibatch``).

    Raises:
        ValueError: for an unknown estimator or ``batch_size < 1``.
    """
    return per_sample_gradient_sums(
        module,
        data,
        positions,
        batch_size=batch_size,
        per_sample_loss=_squared_norm,
        reduction="abs",
        estimator=estimator,
    )


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
        sums, count = output_sensitivity(
            module,
            data,
            rank_shard(trainer, len(data)),
            batch_size=self.batch_size or experience.eval_batch_size,
            estimator=self.estimator,
        )
        sums = all_reduce_tensors(trainer, sums)
        device = next(iter(sums.values())).device
        total = all_reduce_tensors(trainer, {"count": torch.tensor(float(count), device=device)})["count"]
        for name, value in sums.items():
            new = value / max(float(total), 1.0)
            if name in self.importance:
                old = pad_to(self.importance[name].to(device), new.shape)
                new = self.alpha * old + (1 - self.alpha) * new
            self.importance[name] = new if self.max_importance is None else new.clamp_max(self.max_importance)
        weights = dict(module.named_parameters())
        self.anchor = {n: weights[n].detach().float().clone() for n in self.importance}

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        r"""MAS's term :math:`\lambda \sum_i \Omega_i (\theta_i - \theta^*_i)^2`.

        A sum over the parameters' entries (not a mean; it does not depend on the batch): a
        float32 scalar on the parameters' device, whatever the training precision
        (:func:`~lightning_cl.methods.penalties.quadratic_penalty`); ``None`` before the first
        experience ended.
        """
        if not self.importance or self.lambda_reg == 0.0:
            return None
        return self.lambda_reg * quadratic_penalty(module, self.importance, self.anchor)

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.importance = dict(state_dict["importance"])
        self.anchor = dict(state_dict["anchor"])
