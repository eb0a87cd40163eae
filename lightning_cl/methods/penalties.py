"""The anchored quadratic penalty that importance-based methods (SI, MAS) add to the loss.

:func:`pad_to` and :func:`slice_to` (defined in :mod:`lightning_cl.models.heads`, next to the
heads that grow) are re-exported here for method authors: a value recorded before a head grew
is padded to the parameter's present shape, a parameter sliced to the recorded shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_cl.models.heads import pad_to, slice_to

__all__ = ["pad_to", "quadratic_penalty", "slice_to"]


def quadratic_penalty(
    module: Any,
    importance: dict[str, Tensor],
    anchor: dict[str, Tensor],
    pull: dict[str, Tensor] | None = None,
) -> Tensor:
    r""":math:`\sum_i \Omega_i (\theta_i - \theta^*_i)^2` over the named parameters of ``module``.

    A sum over the parameters' entries (no mean, and no dependence on the batch): a float32
    scalar on the parameters' device, whatever the training precision, with its gradient
    :math:`2 \Omega (\theta - \theta^*)`. Parameters without an importance are not penalised;
    parameters that grew since the anchor was taken (a dynamic head) are penalised on the slice
    that existed (:func:`slice_to`). ``importance`` and ``anchor`` are moved to the parameters'
    device the first time (in place, so once per device, not per step).

    Args:
        module: its ``named_parameters()`` are penalised.
        importance: :math:`\Omega` by parameter name (float32).
        anchor: :math:`\theta^*` by parameter name, the same shapes as ``importance``.
        pull: if given, filled with :math:`\Omega (\theta - \theta^*)` by parameter name (float32,
            the shapes of ``importance``): half the penalty's gradient at these weights, which a
            method that needs the gradient of the loss without its penalty (SI's path integral)
            subtracts without computing it again.

    Returns:
        The penalty, a scalar (0 when no parameter has an importance).

    Example:
        >>> layer = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(3.0)
        >>> omega, anchor = {"weight": torch.tensor([[2.0]])}, {"weight": torch.tensor([[1.0]])}
        >>> float(quadratic_penalty(layer, omega, anchor).detach())
        8.0
    """
    total: Tensor | None = None
    device = None
    for name, param in module.named_parameters():
        device = param.device
        omega = importance.get(name)
        if omega is None:
            continue
        if omega.device != param.device:
            importance[name] = omega = omega.to(param.device)
            anchor[name] = anchor[name].to(param.device)
        term = _AnchoredQuadratic.apply(slice_to(param, omega.shape), omega, anchor[name], pull, name)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=device)
    return total


class _AnchoredQuadratic(torch.autograd.Function):
    """``sum(omega * (param - anchor) ** 2)`` with its gradient ``2 omega (param - anchor)``, fused.

    Autograd's version of the same expression makes about eight passes over the weights per
    step (three temporaries forward, their products backward); this one makes four: the
    offset, its product with ``omega`` (kept for the backward), a dot product, and one scaled
    copy for the gradient.
    """

    @staticmethod
    def forward(
        ctx: Any, param: Tensor, omega: Tensor, anchor: Tensor, pull: dict[str, Tensor] | None, name: str
    ) -> Tensor:
        offset = param.detach().float() - anchor
        weighted = omega * offset
        ctx.save_for_backward(weighted)
        if pull is not None:
            pull[name] = weighted
        ctx.param_dtype = param.dtype
        return torch.dot(weighted.reshape(-1), offset.reshape(-1))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        (weighted,) = ctx.saved_tensors
        return (weighted * (2.0 * grad)).to(ctx.param_dtype), None, None, None, None
