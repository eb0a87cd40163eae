"""Elastic Weight Consolidation (Kirkpatrick et al., 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.distributed import all_reduce_tensors, rank_shard
from lightning_cl.methods.per_sample import ESTIMATORS, SupportsGetItems, per_sample_gradient_sums
from lightning_cl.models.heads import pad_to, slice_to

__all__ = ["EWC", "EWC_MODES", "FISHER_ESTIMATORS", "fisher_information"]

EWC_MODES = ("separate", "online")
FISHER_ESTIMATORS = ESTIMATORS


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def fisher_information(
    module: torch.nn.Module,
    data: SupportsGetItems,
    positions: Tensor,
    *,
    batch_size: int,
    estimator: str = "per_sample",
) -> tuple[dict[str, Tensor], int]:
    r"""Sums of squared log-likelihood gradients over ``data[positions]``, and how many terms.

    ``per_sample`` (the paper's empirical Fisher): :math:`\sum_n (\nabla_\theta \log p(y_n|x_n))^2`,
    one gradient per sample. ``minibatch`` (Avalanche's): :math:`\sum_b (\nabla_\theta \bar\ell_b)^2`
    over minibatches of ``batch_size``, whose values are about ``batch_size`` times smaller.
    Divide by the count for the mean. The module runs in eval mode (no dropout, frozen
    batch-norm statistics) and is left in its former mode.

    :func:`~lightning_cl.methods.per_sample.per_sample_gradient_sums` with the negative
    log-likelihood and ``reduction="square"``: in closed form when every trainable parameter
    belongs to an ``nn.Linear`` (MLPs, linear and dynamic heads; a linear layer's per-sample
    gradient is the outer product :math:`g_n a_n^\top`, so
    :math:`\sum_n (g_n a_n^\top)^2 = (g^2)^\top a^2`), else with ``torch.func.vmap``.

    Args:
        module: called as ``module(x, t)``.
        data: gives ``(x, y, t)`` for a tensor of positions (a ``DatasetView``).
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
        per_sample_loss=_nll,
        reduction="square",
        estimator=estimator,
    )


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
    - The penalty is computed in float32 whatever the training precision. It is cached in its
      consolidated form, keyed on a version of the anchors (bumped when an experience's anchor
      is set or replaced, as when the same experience is trained again, and when the state is
      loaded) and on the tensors' in-place versions.

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
        if (
            not isinstance(ewc_lambda, (int, float))
            or isinstance(ewc_lambda, bool)
            or not ewc_lambda >= 0
            or ewc_lambda == float("inf")
        ):
            raise ValueError(f"ewc_lambda must be a finite number >= 0, got {ewc_lambda!r}")
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
        self._anchors: dict[int, dict[str, dict[str, Tensor]]] = {}
        self._version = 0  # bumped at every change of the anchors: the key of the consolidated penalty
        self._cache: tuple[Any, tuple[dict[str, Tensor], dict[str, Tensor], float]] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ewc_lambda=self.ewc_lambda, mode=self.mode)

    @property
    def anchors(self) -> Mapping[int, Mapping[str, Mapping[str, Tensor]]]:
        r"""The anchored weights and Fisher of each past experience, read-only.

        ``anchors[k]["params"][name]`` is :math:`\theta^*_k`, ``anchors[k]["fisher"][name]``
        :math:`F_k` (the mean, float32). One entry in ``"online"`` mode. Assigning a new mapping
        replaces them all (and is checked); the entries cannot be assigned one by one.
        """
        return MappingProxyType(
            {
                k: MappingProxyType({part: MappingProxyType(v) for part, v in anchor.items()})
                for k, anchor in self._anchors.items()
            }
        )

    @anchors.setter
    def anchors(self, value: Mapping[int, Mapping[str, Mapping[str, Tensor]]]) -> None:
        anchors: dict[int, dict[str, dict[str, Tensor]]] = {}
        for k, anchor in value.items():
            params, fisher = dict(anchor["params"]), dict(anchor["fisher"])
            mismatch = [n for n, f in fisher.items() if n not in params or params[n].shape != f.shape]
            if mismatch:
                raise ValueError(
                    f"anchors[{k}] needs a 'params' tensor of the Fisher's shape for every Fisher "
                    f"entry; missing or of another shape: {mismatch}"
                )
            anchors[int(k)] = {"params": params, "fisher": fisher}
        self._anchors = anchors
        self._version += 1

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        r"""EWC's term :math:`\frac{\lambda}{2} \sum_k \sum_i F_{k,i} (\theta_i - \theta^*_{k,i})^2`.

        A sum over the parameters' entries and the past experiences (not a mean; it does not
        depend on the batch, so it weighs the same whatever the batch size): a float32 scalar on
        the parameters' device, whatever the training precision; ``None`` before the first
        experience ended. Computed from the consolidated quadratic of all past experiences (one
        term per parameter, whatever their number).
        """
        if not self._anchors or self.ewc_lambda == 0.0:
            return None
        device = next(module.parameters()).device
        importance, centre, constant = self._consolidated(device)
        total = torch.full((), constant, dtype=torch.float32, device=device)
        for name, param in module.named_parameters():
            a = importance.get(name)
            if a is None:
                continue
            # a grown head: anchored on the units that existed
            total = total + (a * (slice_to(param, a.shape).float() - centre[name]).pow(2)).sum()
        return 0.5 * self.ewc_lambda * total

    def _cache_key(self, device: torch.device) -> tuple[Any, ...]:
        # The anchors' own version, and each tensor's in-place version counter: a Fisher changed
        # in place (zeroed, copied into) is a change of the anchors too. Never ``id()``.
        versions = tuple(
            -1 if t.is_inference() else t._version  # inference tensors cannot change outside inference mode
            for anchor in self._anchors.values()
            for part in (anchor["fisher"], anchor["params"])
            for t in part.values()
        )
        return (self._version, str(device), versions)

    def _consolidated(self, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor], float]:
        r"""The separate-mode sum as one quadratic, so a step costs the same after any number of experiences.

        :math:`\sum_k F_k (\theta - \theta^*_k)^2 = A (\theta - \mu)^2 + c` with
        :math:`A = \sum_k F_k`, :math:`\mu = \sum_k F_k \theta^*_k / A` and
        :math:`c = \sum_k F_k {\theta^*_k}^2 - A \mu^2 \geq 0`: the same value and gradient.
        Computed once per change of the anchors (their version, bumped at every change, and the
        tensors' in-place versions), in float64.
        """
        key = self._cache_key(device)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        importance: dict[str, Tensor] = {}
        weighted: dict[str, Tensor] = {}
        constant = 0.0
        for anchor in self._anchors.values():
            for name, fisher in anchor["fisher"].items():
                f = fisher.to(device, torch.float64)
                theta = anchor["params"][name].to(device, torch.float64)
                if name in importance:  # a head that grew between the experiences
                    shape = tuple(max(a, b) for a, b in zip(importance[name].shape, f.shape))
                    importance[name] = pad_to(importance[name], shape)
                    weighted[name] = pad_to(weighted[name], shape)
                else:
                    importance[name] = torch.zeros(f.shape, dtype=torch.float64, device=device)
                    weighted[name] = torch.zeros(f.shape, dtype=torch.float64, device=device)
                slice_to(importance[name], f.shape).add_(f)
                slice_to(weighted[name], f.shape).add_(f * theta)
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
            module, data, rank_shard(trainer, len(data)), batch_size=batch_size, estimator=self.fisher
        )
        sums = all_reduce_tensors(trainer, sums)
        device = next(iter(sums.values())).device
        total = all_reduce_tensors(trainer, {"count": torch.tensor(float(count), device=device)})["count"]
        fisher = {n: s / max(float(total), 1.0) for n, s in sums.items()}
        params = {n: p.detach().float().clone() for n, p in module.named_parameters() if n in fisher}
        anchors = dict(self._anchors)
        if self.mode == "online" and anchors:
            (previous,) = anchors.values()
            for n, f in fisher.items():
                old = previous["fisher"].get(n)
                if old is not None:
                    fisher[n] = self.decay_factor * pad_to(old.to(f.device), f.shape) + f
            anchors = {}
        # The same experience trained again (``stream + stream``) replaces its anchor.
        anchors[experience.index] = {"params": params, "fisher": fisher}
        self.anchors = anchors

    def state_dict(self) -> dict[str, Any]:
        return {"anchors": {k: {part: dict(v) for part, v in a.items()} for k, a in self._anchors.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.anchors = state_dict["anchors"]
