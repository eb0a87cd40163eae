"""Batch renormalisation (Ioffe, 2017): batch normalisation corrected towards the running moments."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenormSettings", "replace_batch_norm"]


def _number(name: str, value: object, low: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < low
    ):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return float(value)


def _steps(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class BatchRenormSettings:
    r"""The clipping schedule and moments' momentum of batch renormalisation.

    Ioffe (2017, Sec. 4, the paper's choice and the defaults here): :math:`r_{max} = 1` and
    :math:`d_{max} = 0` (plain batch normalisation) for the first ``warmup_steps`` = 5000 training
    steps, then relaxed linearly to reach ``r_max`` = 3 at ``r_max_steps`` = 40k steps and
    ``d_max`` = 5 at ``d_max_steps`` = 25k steps; the running moments are updated with rate
    ``momentum`` = 0.01 (:math:`\alpha` of Alg. 1). The step is the layer's count of training
    forward passes (``num_batches_tracked``, checkpointed with the weights). Avalanche's
    ``BatchRenorm2D`` relaxes by a fixed increment per step from its own start values instead: the
    same straight line with other end points (set ``warmup_steps=0`` and the ends to match).

    Args:
        momentum: update rate of the running mean and standard deviation, in (0, 1].
        r_max: the final bound of :math:`r` (>= 1): :math:`r \in [1/r_{max}, r_{max}]`.
        d_max: the final bound of :math:`d` (>= 0): :math:`d \in [-d_{max}, d_{max}]`.
        warmup_steps: steps with :math:`r_{max} = 1, d_{max} = 0`.
        r_max_steps: the step at which ``r_max`` is reached (>= ``warmup_steps``).
        d_max_steps: the step at which ``d_max`` is reached (>= ``warmup_steps``).

    Raises:
        ValueError: for a value outside those ranges.

    Example:
        >>> s = BatchRenormSettings(warmup_steps=10, r_max_steps=30, d_max_steps=20)
        >>> s.limits(5), s.limits(20), s.limits(100)
        ((1.0, 0.0), (2.0, 5.0), (3.0, 5.0))
    """

    momentum: float = 0.01
    r_max: float = 3.0
    d_max: float = 5.0
    warmup_steps: int = 5000
    r_max_steps: int = 40000
    d_max_steps: int = 25000

    def __post_init__(self) -> None:
        momentum = _number("momentum", self.momentum, 0.0)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must lie in (0, 1], got {self.momentum!r}")
        _number("r_max", self.r_max, 1.0)
        _number("d_max", self.d_max, 0.0)
        warmup = _steps("warmup_steps", self.warmup_steps)
        for name in ("r_max_steps", "d_max_steps"):
            if _steps(name, getattr(self, name)) < warmup:
                raise ValueError(
                    f"{name} must be >= warmup_steps={warmup} (the bound is relaxed after the warm-up), "
                    f"got {getattr(self, name)}"
                )

    def limits(self, step: int) -> tuple[float, float]:
        """``(r_max, d_max)`` at training step ``step`` (counted from 0)."""

        def ramp(end_step: int, final: float, start: float) -> float:
            if step < self.warmup_steps:
                return start
            span = end_step - self.warmup_steps
            share = 1.0 if span <= 0 else min(1.0, (step - self.warmup_steps) / span)
            return start + (final - start) * share

        return ramp(self.r_max_steps, float(self.r_max), 1.0), ramp(self.d_max_steps, float(self.d_max), 0.0)


class _BatchRenorm(_BatchNorm):
    """Batch renormalisation of any input rank; the maths and choices are in :class:`BatchRenorm2d`."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        settings: BatchRenormSettings | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not isinstance(eps, int | float) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        if settings is not None and not isinstance(settings, BatchRenormSettings):
            raise ValueError(f"settings must be a BatchRenormSettings or None, got {type(settings).__name__}")
        chosen = settings or BatchRenormSettings()
        super().__init__(
            num_features,
            eps=eps,
            momentum=chosen.momentum,
            affine=affine,
            track_running_stats=True,
            device=device,
            dtype=dtype,
        )
        self.settings = chosen

    def limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` for the next training step (the schedule at ``num_batches_tracked``)."""
        return self.settings.limits(int(self.num_batches_tracked))  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        shape = [1, -1] + [1] * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        assert self.running_mean is not None and self.running_var is not None
        running_mean = self.running_mean.float()
        running_std = (self.running_var.float() + self.eps).sqrt()
        xf = x.float()
        if self.training:
            mean = xf.mean(dim=dims)
            std = (xf.var(dim=dims, unbiased=False) + self.eps).sqrt()
            r_max, d_max = self.limits()
            with torch.no_grad():
                r = (std / running_std).clamp(1.0 / r_max, r_max)
                d = ((mean - running_mean) / running_std).clamp(-d_max, d_max)
            out = (xf - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
            with torch.no_grad():
                alpha = float(self.settings.momentum)
                new_std = running_std + alpha * (std.detach() - running_std)
                self.running_mean.add_((alpha * (mean.detach() - running_mean)).to(self.running_mean.dtype))
                self.running_var.copy_(new_std.pow(2) - self.eps)
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        else:
            out = (xf - running_mean.view(shape)) / running_std.view(shape)
        if self.affine:
            out = out * self.weight.float().view(shape) + self.bias.float().view(shape)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, settings={self.settings}"


class BatchRenorm1d(_BatchRenorm):
    """Batch renormalisation of ``(N, C)`` or ``(N, C, L)`` inputs (Ioffe, 2017; see ``BatchRenorm2d``).

    Example:
        >>> layer = BatchRenorm1d(3)
        >>> layer(torch.randn(8, 3)).shape, int(layer.num_batches_tracked)
        (torch.Size([8, 3]), 1)
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"BatchRenorm1d expects a 2D or 3D input (N, C[, L]), got {input.dim()}D")


class BatchRenorm2d(_BatchRenorm):
    r"""Batch renormalisation, Ioffe (2017), Alg. 1.

    In training, with the batch's mean :math:`\mu_B` and standard deviation
    :math:`\sigma_B = \sqrt{\mathrm{Var}_B + \epsilon}` (biased, as batch normalisation) per
    channel, and the running :math:`\mu, \sigma`:

    .. math::
        r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\big(\sigma_B / \sigma\big), \quad
        d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\big((\mu_B - \mu) / \sigma\big), \quad
        y = \gamma \Big(\frac{x - \mu_B}{\sigma_B}\, r + d\Big) + \beta,

    with :math:`r, d` treated as constants (no gradient), then
    :math:`\mu \mathrel{+}= \alpha(\mu_B - \mu)`, :math:`\sigma \mathrel{+}= \alpha(\sigma_B - \sigma)`.
    In eval mode :math:`y = \gamma (x - \mu) / \sigma + \beta`. With :math:`r_{max} = 1,
    d_{max} = 0` training is batch normalisation's.

    Choices, stated:

    - The parameters and buffers are batch normalisation's (``weight``, ``bias``,
      ``running_mean``, ``running_var``, ``num_batches_tracked``), so a checkpoint of either loads
      into the other: the running :math:`\sigma` is kept as ``running_var`` :math:`= \sigma^2 - \epsilon`
      (the paper's update is on :math:`\sigma`, done as such).
    - The statistics are computed in float32 whatever the input's precision.

    Args:
        num_features: channels :math:`C`.
        eps: :math:`\epsilon`.
        affine: learn :math:`\gamma, \beta`.
        settings: the clipping schedule and ``momentum`` (:class:`BatchRenormSettings`; default:
            the paper's).

    Raises:
        ValueError: for a non-positive ``num_features`` or ``eps``; at the forward pass, for an
            input of another rank.

    Example:
        >>> fast = BatchRenormSettings(warmup_steps=0, r_max_steps=0, d_max_steps=0)
        >>> layer = BatchRenorm2d(2, settings=fast)
        >>> layer(torch.randn(4, 2, 3, 3)).shape, layer.limits()
        (torch.Size([4, 2, 3, 3]), (3.0, 5.0))
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"BatchRenorm2d expects a 4D input (N, C, H, W), got {input.dim()}D")


_REPLACED: dict[type[nn.Module], type[_BatchRenorm]] = {
    nn.BatchNorm1d: BatchRenorm1d,
    nn.BatchNorm2d: BatchRenorm2d,
}


def replace_batch_norm(model: nn.Module, settings: BatchRenormSettings | None = None) -> nn.Module:
    """Put batch renormalisation layers in place of ``model``'s ``BatchNorm1d`` / ``BatchNorm2d``.

    Each new layer keeps the old one's ``weight``, ``bias``, running moments, ``eps``, step count
    (``num_batches_tracked``: a pretrained layer continues the schedule where its steps left it),
    device and dtype. Layers that are batch renormalisation already are left as they are. The model
    changes in place.

    Args:
        model: the network; a ``BatchNorm`` layer itself is replaced by the returned one.
        settings: the schedule of the new layers (default: the paper's).

    Returns:
        ``model`` (or, for a lone ``BatchNorm`` layer, its replacement).

    Raises:
        ValueError: for a batch normalisation layer without running statistics
            (``track_running_stats=False``): batch renormalisation corrects towards them.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        >>> type(replace_batch_norm(net)[1]).__name__
        'BatchRenorm1d'
    """

    def convert(layer: nn.Module, name: str) -> nn.Module:
        cls = _REPLACED.get(type(layer))
        if cls is None:
            return layer
        assert isinstance(layer, _BatchNorm)
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                f"the batch normalisation layer {name or type(layer).__name__!r} has no running "
                "statistics (track_running_stats=False); batch renormalisation needs them"
            )
        ref = layer.running_mean
        new = cls(
            layer.num_features,
            eps=layer.eps,
            affine=layer.affine,
            settings=settings,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            new.running_mean.copy_(layer.running_mean)  # type: ignore[union-attr]
            new.running_var.copy_(layer.running_var)  # type: ignore[union-attr]
            if layer.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(layer.num_batches_tracked)  # type: ignore[union-attr]
            if layer.affine:
                new.weight = layer.weight
                new.bias = layer.bias
        new.train(layer.training)
        return new

    converted = convert(model, "")
    if converted is not model:
        return converted
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = convert(child, f"{name}.{child_name}" if name else child_name)
            if new is not child:
                setattr(parent, child_name, new)
    return model
