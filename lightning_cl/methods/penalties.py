"""The anchored quadratic penalty that importance-based methods (SI, MAS) add to the loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["pad_to", "quadratic_penalty"]


def pad_to(value: Tensor, shape: torch.Size) -> Tensor:
    """``value`` zero-padded to ``shape`` (a parameter that grew since it was recorded)."""
    if value.shape == shape:
        return value
    out = value.new_zeros(shape)
    out[tuple(slice(0, s) for s in value.shape)] = value
    return out


def quadratic_penalty(module: Any, importance: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
    r""":math:`\sum_i \Omega_i (\theta_i - \theta^*_i)^2` over the named parameters of ``module``, in float32.

    Parameters that grew since the anchor was taken (a dynamic head) are penalised on the slice
    that existed. ``importance`` and ``anchor`` are moved to the parameters' device the first
    time (in place, so once per device, not per step).

    Example:
        >>> layer = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(3.0)
        >>> omega, anchor = {"weight": torch.tensor([[2.0]])}, {"weight": torch.tensor([[1.0]])}
        >>> float(quadratic_penalty(layer, omega, anchor).detach())
        8.0
    """
    total: Tensor | None = None
    for name, param in module.named_parameters():
        omega = importance.get(name)
        if omega is None:
            continue
        if omega.device != param.device:
            importance[name] = omega = omega.to(param.device)
            anchor[name] = anchor[name].to(param.device)
        if param.shape != omega.shape:
            param = param[tuple(slice(0, s) for s in omega.shape)]
        term = (omega * (param.float() - anchor[name]).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total
