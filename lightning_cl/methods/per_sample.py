"""Sums of per-sample gradients, squared or absolute: the importance estimates of EWC and MAS.

:func:`per_sample_gradient_sums` is the one loop both share (and any importance method may
use): in closed form for linear layers (:func:`add_linear_per_sample`), with
``torch.func.vmap`` for other models, or over minibatches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

__all__ = [
    "ESTIMATORS",
    "REDUCTIONS",
    "SupportsGetItems",
    "add_linear_per_sample",
    "linear_layers",
    "per_sample_gradient_inner",
    "per_sample_gradient_sums",
    "per_sample_gradients",
]

REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"square": lambda v: v.pow(2), "abs": torch.abs}
"""How a gradient becomes an importance: squared (EWC's Fisher) or absolute (MAS)."""
ESTIMATORS = ("per_sample", "minibatch")
"""One gradient per sample (the papers), or one per minibatch mean (Avalanche)."""


class SupportsGetItems(Protocol):
    """A dataset that gathers a batch ``(x, y, t)`` from a tensor of positions (a ``DatasetView``)."""

    def __getitems__(self, positions: Any) -> Any: ...


def per_sample_gradient_sums(
    module: torch.nn.Module,
    data: SupportsGetItems,
    positions: Tensor,
    *,
    batch_size: int,
    per_sample_loss: Callable[[Tensor, Tensor], Tensor],
    reduction: str = "square",
    estimator: str = "per_sample",
) -> tuple[dict[str, Tensor], int]:
    r"""Sums of :math:`r(
    abla_	heta \ell_n)` over ``data[positions]``, by parameter, and how many terms.

        ``estimator="per_sample"``: :math:`\sum_n r(
    abla_	heta \ell(f(x_n), y_n))`, one gradient
        per sample; the count is the number of samples. ``"minibatch"``:
        :math:`\sum_b r(
    abla_	heta rac{1}{|b|}\sum_{n \in b} \ell_n)` over minibatches of
        ``batch_size``; the count is the number of batches. Divide by the count for the mean. With
        :math:`r(v) = v^2` and :math:`\ell` the negative log-likelihood this is EWC's Fisher; with
        :math:`r(v) = |v|` and :math:`\ell = \|f(x)\|_2^2`, MAS's sensitivity.

        How ``per_sample`` is computed: when every trainable parameter belongs to an ``nn.Linear``
        that sees one 2-d input per forward (MLPs, linear and dynamic heads), in closed form
        (:func:`add_linear_per_sample`: one backward pass per batch); otherwise with
        ``torch.func.vmap`` over the samples of each task label in the batch. Both give the same
        sums. The module runs in eval mode (no dropout, frozen batch-norm statistics; samples do not
        interact) and is left in its former mode. Sums are float32, on the parameters' device.

        Args:
            module: called as ``module(x, t)``; its trainable parameters are the ones summed.
            data: gives ``(x, y, t)`` for a tensor of positions (a ``DatasetView``).
            positions: the samples to use (a rank's shard under DDP).
            batch_size: samples per forward pass (and per term, for ``minibatch``).
            per_sample_loss: maps float32 logits ``(B, C)`` and targets ``(B,)`` to one loss per
                sample ``(B,)``; samples must not interact.
            reduction: ``"square"`` or ``"abs"``.
            estimator: ``"per_sample"`` or ``"minibatch"``.

        Returns:
            The sums by parameter name (the module's trainable parameters, their shapes), and the
            number of terms.

        Raises:
            ValueError: for an unknown reduction or estimator, ``batch_size < 1``, or a module
                without trainable parameters.

        Example:
            >>> from lightning_cl.data import DatasetView, TensorClassificationDataset
            >>> class Net(torch.nn.Linear):
            ...     def forward(self, x, t):
            ...         return super().forward(x)
            >>> net = Net(1, 1, bias=False)
            >>> with torch.no_grad():
            ...     _ = net.weight.fill_(1.0)
            >>> base = TensorClassificationDataset(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]))
            >>> data = DatasetView(base, torch.arange(2), 0)
            >>> squared_output = lambda z, y: z.pow(2).sum(-1)  # gradient 2 w x^2: 2 and 8
            >>> sums, count = per_sample_gradient_sums(
            ...     net, data, torch.arange(2), batch_size=2, per_sample_loss=squared_output, reduction="abs"
            ... )
            >>> sums["weight"], count
            (tensor([[10.]]), 2)
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"the module has no trainable parameters: {type(module).__name__}")
    live = [p for p in module.parameters() if p.requires_grad]
    buffers = {n: b.detach() for n, b in module.named_buffers()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    reduce = REDUCTIONS[reduction]

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        logits = functional_call(module, (p, buffers), (x.unsqueeze(0), t))
        return per_sample_loss(logits.float(), y.unsqueeze(0))[0]

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0, None))
    linears = linear_layers(module, params) if estimator == "per_sample" else None
    count = 0
    was_training = module.training
    module.eval()
    try:
        for chunk in positions.split(batch_size):
            x, y, t = (v.to(device) for v in data.__getitems__(chunk))

            def loss_of(logits: Tensor, y: Tensor = y) -> Tensor:
                return per_sample_loss(logits, y)

            if linears is not None and add_linear_per_sample(module, linears, loss_of, x, t, sums, reduction):
                count += len(chunk)
                continue
            linears = None  # the closed form does not apply to this model: vmap from here on
            if estimator == "minibatch":
                with torch.enable_grad():
                    loss = per_sample_loss(module(x, t).float(), y).mean()
                    grads = torch.autograd.grad(loss, live, allow_unused=True)
                for name, g in zip(params, grads):
                    if g is not None:
                        sums[name] += reduce(g.float())
                count += 1
                continue
            for task in torch.unique(t).tolist():
                mask = t == task
                for name, g in per_sample_grads(params, x[mask], y[mask], t[mask][:1]).items():
                    sums[name] += reduce(g.float()).sum(0)
            count += len(chunk)
    finally:
        module.train(was_training)
    return sums, count


def per_sample_gradients(
    module: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    t: Tensor,
    per_sample_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    r"""The gradient of every sample's loss, flattened: ``(len(x), n_params)`` float32.

    Row :math:`i` is :math:`\nabla_\theta \ell(f(x_i, t_i), y_i)` over the module's trainable
    parameters, concatenated in ``module.parameters()`` order (a parameter a sample's forward does
    not reach contributes zeros). Computed with ``torch.func.vmap`` over the samples of each task
    label (one vectorised backward pass per label, instead of one backward per sample); a model
    whose forward ``vmap`` cannot trace (data-dependent control flow) falls back to one
    ``torch.autograd.grad`` per sample, with the same result. The module runs in eval mode (no
    dropout draws, batch-norm statistics untouched) and is left in its former mode; its ``.grad``
    fields are not touched. Memory: ``len(x) * n_params`` floats.

    Args:
        module: called as ``module(x, t)``.
        x: inputs ``(B, ...)``.
        y: targets ``(B,)``.
        t: task labels ``(B,)``.
        per_sample_loss: maps float32 logits ``(B, C)`` and targets ``(B,)`` to one loss per
            sample; the cross-entropy by default.

    Returns:
        ``(B, P)`` float32 on the parameters' device (``(0, P)`` for an empty batch).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = net
        ...     def forward(self, x, t):
        ...         return self.fc(x)
        >>> x, y, t = torch.randn(3, 2), torch.tensor([0, 1, 0]), torch.zeros(3, dtype=torch.long)
        >>> per_sample_gradients(Net(), x, y, t).shape
        torch.Size([3, 6])
    """
    loss_fn = per_sample_loss or (lambda z, target: F.cross_entropy(z, target, reduction="none"))
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    n_params = sum(p.numel() for p in params.values())
    device = next(iter(params.values())).device if params else x.device
    if len(x) == 0:
        return torch.zeros(0, n_params, device=device)
    buffers = {n: b.detach() for n, b in module.named_buffers()}

    def sample_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor, ti: Tensor) -> Tensor:
        logits = functional_call(module, (p, buffers), (xi.unsqueeze(0), ti))
        return loss_fn(logits.float(), yi.unsqueeze(0))[0]

    def flat(grads: dict[str, Tensor], rows: int) -> Tensor:
        return torch.cat([grads[n].reshape(rows, -1).float() for n in names], dim=1)

    was_training = module.training
    module.eval()
    try:
        out = torch.empty(len(x), n_params, device=device)
        try:
            per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, None))
            for task in torch.unique(t).tolist():
                rows = (t == task).nonzero().flatten()
                out[rows] = flat(per_sample(params, x[rows], y[rows], t[rows][:1]), len(rows))
        except RuntimeError:  # a forward vmap cannot trace: one backward per sample
            live = [p for p in module.parameters() if p.requires_grad]
            with torch.enable_grad():
                for i in range(len(x)):
                    loss = loss_fn(module(x[i : i + 1], t[i : i + 1]).float(), y[i : i + 1])[0]
                    grads = torch.autograd.grad(loss, live, allow_unused=True)
                    out[i] = torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(q)).flatten().float()
                            for g, q in zip(grads, live)
                        ]
                    )
        return out
    finally:
        module.train(was_training)


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


def _record_linear_calls(
    linears: dict[str, torch.nn.Linear],
) -> tuple[dict[str, list[tuple[Tensor, Tensor]]], list[Any]]:
    """Forward hooks that record each linear layer's (input, output) per call; remove the handles after."""
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in linears}

    def recorder(name: str) -> Any:
        def hook(_: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            calls[name].append((inputs[0].detach(), output))

        return hook

    return calls, [m.register_forward_hook(recorder(n)) for n, m in linears.items()]


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
    calls, handles = _record_linear_calls(linears)
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


def per_sample_gradient_inner(
    module: torch.nn.Module,
    a: tuple[Tensor, Tensor, Tensor],
    b: tuple[Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Inner products between the per-sample cross-entropy gradients of two batches, and their norms.

    For samples :math:`i` of ``a`` and :math:`j` of ``b``: :math:`\langle \nabla_\theta \ell_i,
    \nabla_\theta \ell_j \rangle` over the module's trainable parameters, and the squared norms
    :math:`\|\nabla_\theta \ell_i\|^2`, :math:`\|\nabla_\theta \ell_j\|^2`. When every trainable
    parameter belongs to an ``nn.Linear`` that sees the whole batch once, 2-d (MLPs and linear heads),
    in closed form without any per-sample gradient in memory: a linear layer's per-sample weight
    gradient is :math:`g a^\top` (the gradient at its output, its input), so
    :math:`\langle g_i a_i^\top, g_j a_j^\top \rangle = (g_i \cdot g_j)(a_i \cdot a_j)`; one forward
    and backward pass over both batches. Otherwise from :func:`per_sample_gradients` (``(A + B) x P``
    floats). Eval mode, the module's mode and ``.grad`` left as they were.

    Args:
        module: called as ``module(x, t)``.
        a: ``(x, y, t)`` of the first batch, ``A`` samples.
        b: ``(x, y, t)`` of the second batch, ``B`` samples.

    Returns:
        ``(A, B)`` inner products, ``(A,)`` and ``(B,)`` squared norms, float64.

    Example:
        >>> from lightning_cl.models import MLP
        >>> net = MLP(num_classes=3, input_size=4, hidden_size=5)
        >>> batch = lambda n: (torch.randn(n, 4), torch.randint(0, 3, (n,)), torch.zeros(n, dtype=torch.long))
        >>> inner, na, nb = per_sample_gradient_inner(net, batch(6), batch(2))
        >>> inner.shape, na.shape, nb.shape
        (torch.Size([6, 2]), torch.Size([6]), torch.Size([2]))
    """
    n_a = len(a[0])
    x, y, t = (torch.cat([u, v]) for u, v in zip(a, b))
    params: dict[str, Tensor] = {n: p for n, p in module.named_parameters() if p.requires_grad}
    linears = linear_layers(module, params)
    if linears is not None and len(x) > 0:
        found = _linear_inner(module, linears, params, x, y, t, n_a)
        if found is not None:
            return found
    rows = per_sample_gradients(module, x, y, t).double()
    ra, rb = rows[:n_a], rows[n_a:]
    return ra @ rb.T, ra.pow(2).sum(1), rb.pow(2).sum(1)


def _linear_inner(
    module: torch.nn.Module,
    linears: dict[str, torch.nn.Linear],
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    t: Tensor,
    n_a: int,
) -> tuple[Tensor, Tensor, Tensor] | None:
    calls, handles = _record_linear_calls(linears)
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(module(x, t).float(), y, reduction="sum")
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    if any(len(c) > 1 or (c and (c[0][0].ndim != 2 or len(c[0][0]) != len(x))) for c in calls.values()):
        return None  # a layer used twice, on sequences or on part of the batch: not outer products
    used = [(n, c[0]) for n, c in calls.items() if c and c[0][1].requires_grad]
    if not used:
        return None
    grads = torch.autograd.grad(loss, [out for _, (_, out) in used], allow_unused=True)
    inner = torch.zeros(n_a, len(x) - n_a, dtype=torch.float64, device=x.device)
    norms = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for (name, (inputs, _)), g in zip(used, grads):
        if g is None:
            continue
        g, act = g.double(), inputs.double()
        prefix = f"{name}." if name else ""
        gg = g[:n_a] @ g[n_a:].T
        g2 = g.pow(2).sum(1)
        if prefix + "weight" in params:
            inner += gg * (act[:n_a] @ act[n_a:].T)
            norms += g2 * act.pow(2).sum(1)
        if prefix + "bias" in params:
            inner += gg
            norms += g2
    return inner, norms[:n_a], norms[n_a:]
