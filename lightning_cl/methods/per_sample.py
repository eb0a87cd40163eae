"""Sums of per-sample gradients (squared or absolute) of linear layers, in closed form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["add_linear_per_sample", "linear_layers"]

REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"square": lambda v: v.pow(2), "abs": torch.abs}


def linear_layers(module: torch.nn.Module, params: dict[str, Tensor]) -> dict[str, torch.nn.Linear] | None:
    """The ``nn.Linear`` layers by name, if they hold every trainable parameter; else ``None``."""
    linears = {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    covered = {
        f"{n}.{p}" if n else p
        for n, m in linears.items()
        for p, v in m.named_parameters(recurse=False)
        if v.requires_grad
    }
    return linears if linears and covered == set(params) else None


def add_linear_per_sample(
    module: torch.nn.Module,
    linears: dict[str, torch.nn.Linear],
    per_sample_loss: Callable[[Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    sums: dict[str, Tensor],
    reduction: str,
) -> bool:
    r"""Add :math:`\sum_n r(\nabla_\theta \ell_n)` over one batch to ``sums``; ``False`` if it does not apply.

    A linear layer's per-sample weight gradient is the outer product :math:`g_n a_n^\top` of the
    gradient at its output and its input, so for :math:`r(v) = v^2` (EWC's Fisher) or
    :math:`r(v) = |v|` (MAS), :math:`\sum_n r(g_n a_n^\top) = r(g)^\top r(a)`: one backward pass
    per batch, no per-sample gradient in memory. It applies when every trainable parameter
    belongs to an ``nn.Linear`` that sees one 2-d input per forward, and samples do not interact
    (eval mode).

    Args:
        module: called as ``module(x, t)``.
        linears: from :func:`linear_layers`.
        per_sample_loss: maps the logits to one loss per sample, shape ``(B,)``.
        x: inputs.
        t: task labels.
        sums: per-parameter accumulators, by name.
        reduction: ``"square"`` or ``"abs"``.
    """
    reduce = REDUCTIONS[reduction]
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in linears}

    def recorder(name: str) -> Any:
        def hook(_: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            calls[name].append((inputs[0].detach(), output))

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in linears.items()]
    try:
        with torch.enable_grad():
            loss = per_sample_loss(module(x, t).float()).sum()
    finally:
        for handle in handles:
            handle.remove()
    if any(len(c) > 1 or (c and c[0][0].ndim != 2) for c in calls.values()):
        return False  # a layer used twice, or on sequences: per-sample gradients are not outer products
    used = [(n, c[0]) for n, c in calls.items() if c and c[0][1].requires_grad]
    grads = torch.autograd.grad(loss, [out for _, (_, out) in used], allow_unused=True)
    for (name, (inputs, _)), g in zip(used, grads):
        if g is None:
            continue
        rg = reduce(g.float())
        prefix = f"{name}." if name else ""
        if prefix + "weight" in sums:
            sums[prefix + "weight"] += rg.T @ reduce(inputs.float())
        if prefix + "bias" in sums:
            sums[prefix + "bias"] += rg.sum(0)
    return True
