"""Elastic Weight Consolidation (Kirkpatrick et al., 2017)."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.per_sample import add_linear_per_sample, linear_layers

__all__ = ["EWC", "EWC_MODES", "FISHER_ESTIMATORS", "fisher_information"]

EWC_MODES = ("separate", "online")
FISHER_ESTIMATORS = ("per_sample", "minibatch")


def _shard(n: int, trainer: L.Trainer) -> Tensor:
    return torch.arange(trainer.global_rank, n, trainer.world_size)


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def fisher_information(
    module: torch.nn.Module,
    data: DatasetView,
    positions: Tensor,
    *,
    batch_size: int,
    estimator: str = "per_sample",
) -> tuple[dict[str, Tensor], int]:
    r"""Sums of squared log-likelihood gradients over ``data[positions]``, and how many terms.

    ``per_sample`` (the paper's empirical Fisher): :math:`\sum_n (\nabla_\theta \log p(y_n|x_n))^2`,
    one gradient per sample, computed with ``torch.func.vmap``. ``minibatch`` (Avalanche's):
    :math:`\sum_b (\nabla_\theta \bar\ell_b)^2` over minibatches of ``batch_size``, whose values
    are about ``batch_size`` times smaller. Divide by the count for the mean. The module runs
    in eval mode (no dropout, frozen batch-norm statistics) and is left in its former mode.

    When every trainable parameter belongs to an ``nn.Linear`` that sees one 2-d input per
    forward (MLPs, linear and dynamic heads), ``per_sample`` uses the closed form: a linear
    layer's per-sample gradient is the outer product :math:`g_n a_n^\top` of the gradient at its
    output and its input, so :math:`\sum_n (g_n a_n^\top)^2 = (g^2)^\top a^2`: one backward pass
    per batch, no per-sample gradient in memory. Other models use ``torch.func.vmap``.
    """
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in module.named_buffers()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    count = 0

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        logits = functional_call(module, (p, buffers), (x.unsqueeze(0), t))
        return F.cross_entropy(logits.float(), y.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0, None))
    linears = linear_layers(module, params) if estimator == "per_sample" else None
    was_training = module.training
    module.eval()
    try:
        for chunk in positions.split(batch_size):
            x, y, t = (v.to(device) for v in data.__getitems__(chunk))
            nll = partial(_nll, targets=y)
            if linears is not None and add_linear_per_sample(module, linears, nll, x, t, sums, "square"):
                count += len(chunk)
                continue
            linears = None  # the closed form does not apply to this model: vmap from here on
            if estimator == "minibatch":
                live = [p for p in module.parameters() if p.requires_grad]
                with torch.enable_grad():
                    loss = F.cross_entropy(module(x, t).float(), y)
                    grads = torch.autograd.grad(loss, live, allow_unused=True)
                for (name, _), g in zip(
                    ((n, p) for n, p in module.named_parameters() if p.requires_grad), grads
                ):
                    if g is not None:
                        sums[name] += g.float().pow(2)
                count += 1
                continue
            for task in torch.unique(t).tolist():
                mask = t == task
                g = per_sample_grads(params, x[mask], y[mask], t[mask][:1])
                for name, value in g.items():
                    sums[name] += value.float().pow(2).sum(0)
            count += len(chunk)
    finally:
        module.train(was_training)
    return sums, count


class EWC(ContinualCallback):
    r"""Elastic Weight Consolidation: a quadratic penalty that anchors important weights.

    After experience :math:`k`, EWC stores the weights :math:`\theta^*_k` and the diagonal
    Fisher information :math:`F_k` estimated on that experience's data; training later
    experiences adds

    .. math:: \Omega(\theta) = \frac{\lambda}{2} \sum_{k} \sum_i F_{k,i} (\theta_i - \theta^*_{k,i})^2

    to the loss (``"separate"`` mode: one term per past experience). In ``"online"`` mode
    (Schwarz et al., 2018) a single term is kept, :math:`F \leftarrow \gamma F + F_k` and
    :math:`\theta^* \leftarrow \theta^*_k`.

    Choices, stated:

    - The factor :math:`1/2` of the paper is kept; Avalanche omits it, so its ``ewc_lambda``
      equals ``ewc_lambda / 2`` here for the same Fisher.
    - The Fisher is the empirical Fisher at the true labels, from per-sample gradients
      (``fisher="per_sample"``, the paper's definition). ``fisher="minibatch"`` squares
      minibatch-mean gradients as Avalanche does; its values are about ``batch_size`` times
      smaller, so its ``ewc_lambda`` must be larger for the same effect.
    - Estimated in eval mode on the experience's own data (no replay samples). Under DDP each
      rank estimates on its shard and the sums are all-reduced, so every rank holds the same
      Fisher.
    - Parameters that grew (a dynamic head) are anchored on the slice that existed.
    - The penalty is computed in float32 whatever the training precision.

    Args:
        ewc_lambda: penalty strength :math:`\lambda \geq 0`.
        mode: ``"separate"`` or ``"online"``.
        decay_factor: :math:`\gamma \in [0, 1]` of the online mode.
        fisher: ``"per_sample"`` or ``"minibatch"``.
        fisher_batch_size: batch size of the estimation (default: the experience's eval batch size).

    Raises:
        ValueError: for ``ewc_lambda < 0``, an unknown mode or estimator, or ``decay_factor``
            outside [0, 1].

    Example:
        >>> ewc = EWC(ewc_lambda=10.0)
        >>> ewc.mode, ewc.fisher
        ('separate', 'per_sample')
    """

    def __init__(
        self,
        ewc_lambda: float = 1.0,
        mode: str = "separate",
        decay_factor: float = 1.0,
        fisher: str = "per_sample",
        fisher_batch_size: int | None = None,
    ):
        if not isinstance(ewc_lambda, (int, float)) or ewc_lambda < 0:
            raise ValueError(f"ewc_lambda must be a number >= 0, got {ewc_lambda!r}")
        if mode not in EWC_MODES:
            raise ValueError(f"mode must be one of {EWC_MODES}, got {mode!r}")
        if fisher not in FISHER_ESTIMATORS:
            raise ValueError(f"fisher must be one of {FISHER_ESTIMATORS}, got {fisher!r}")
        if not 0.0 <= decay_factor <= 1.0:
            raise ValueError(f"decay_factor must lie in [0, 1], got {decay_factor}")
        if fisher_batch_size is not None and fisher_batch_size < 1:
            raise ValueError(f"fisher_batch_size must be a positive int or None, got {fisher_batch_size}")
        self.ewc_lambda = float(ewc_lambda)
        self.mode = mode
        self.decay_factor = float(decay_factor)
        self.fisher = fisher
        self.fisher_batch_size = fisher_batch_size
        # experience index -> {"params": {name: tensor}, "fisher": {name: tensor}}
        self.anchors: dict[int, dict[str, dict[str, Tensor]]] = {}
        self._cache: tuple[Any, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ewc_lambda=self.ewc_lambda, mode=self.mode)

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        if not self.anchors or self.ewc_lambda == 0.0:
            return None
        importance, centre, constant = self._consolidated(logits.device)
        total = logits.new_full((), constant, dtype=torch.float32)
        for name, param in module.named_parameters():
            a = importance.get(name)
            if a is None:
                continue
            if param.shape != a.shape:  # a grown head: anchored on the units that existed
                param = param[tuple(slice(0, s) for s in a.shape)]
            total = total + (a * (param.float() - centre[name]).pow(2)).sum()
        return 0.5 * self.ewc_lambda * total

    def _consolidated(self, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor], float]:
        r"""The separate-mode sum as one quadratic, so a step costs the same after any number of experiences.

        :math:`\sum_k F_k (\theta - \theta^*_k)^2 = A (\theta - \mu)^2 + c` with
        :math:`A = \sum_k F_k`, :math:`\mu = \sum_k F_k \theta^*_k / A` and
        :math:`c = \sum_k F_k {\theta^*_k}^2 - A \mu^2 \geq 0`: the same value and gradient.
        Computed once per change of the anchors, in float64.
        """
        key = (id(self.anchors), tuple(self.anchors), device)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        importance: dict[str, Tensor] = {}
        weighted: dict[str, Tensor] = {}
        constant = 0.0
        for anchor in self.anchors.values():
            for name, fisher in anchor["fisher"].items():
                f = fisher.to(device, torch.float64)
                theta = anchor["params"][name].to(device, torch.float64)
                shape = (
                    tuple(max(a, b) for a, b in zip(importance[name].shape, f.shape))
                    if name in importance
                    else f.shape
                )
                for store in (importance, weighted):
                    if name in store and store[name].shape != shape:
                        grown = torch.zeros(shape, dtype=torch.float64, device=device)
                        grown[tuple(slice(0, s) for s in store[name].shape)] = store[name]
                        store[name] = grown
                    store.setdefault(name, torch.zeros(shape, dtype=torch.float64, device=device))
                region = tuple(slice(0, s) for s in f.shape)
                importance[name][region] += f
                weighted[name][region] += f * theta
                constant += float((f * theta.pow(2)).sum())
        centre = {}
        for name, a in importance.items():
            mu = torch.where(a > 0, weighted[name] / a.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
            constant -= float((a * mu.pow(2)).sum())
            centre[name] = mu.float()
            importance[name] = a.float()
        result = (importance, centre, max(constant, 0.0))
        self._cache = (key, result)
        return result

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        data = experience.dataset
        batch_size = self.fisher_batch_size or experience.eval_batch_size
        sums, count = fisher_information(
            module, data, _shard(len(data), trainer), batch_size=batch_size, estimator=self.fisher
        )
        names = list(sums)
        flat = torch.cat(
            [sums[n].flatten() for n in names] + [torch.tensor([float(count)], device=sums[names[0]].device)]
        )
        flat = trainer.strategy.reduce(flat, reduce_op="sum")
        total = float(flat[-1])
        fisher, offset = {}, 0
        for n in names:
            k = sums[n].numel()
            fisher[n] = (flat[offset : offset + k] / max(total, 1.0)).view_as(sums[n])
            offset += k
        params = {n: p.detach().float().clone() for n, p in module.named_parameters() if n in fisher}
        if self.mode == "online" and self.anchors:
            (previous,) = self.anchors.values()
            for n, f in fisher.items():
                old = previous["fisher"].get(n)
                if old is not None:
                    grown = torch.zeros_like(f)
                    grown[tuple(slice(0, s) for s in old.shape)] = old.to(f.device)
                    fisher[n] = self.decay_factor * grown + f
            self.anchors = {}
        self.anchors[experience.index] = {"params": params, "fisher": fisher}

    def state_dict(self) -> dict[str, Any]:
        return {"anchors": self.anchors}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.anchors = {int(k): v for k, v in state_dict["anchors"].items()}
