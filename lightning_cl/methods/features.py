"""Features from a named layer of a model: what feature-based methods (LFL, ...) compare."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

__all__ = ["capture_features", "resolve_layer"]


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule of ``model`` called ``layer`` (a ``named_modules()`` name, e.g. ``"features"``).

    Raises:
        ValueError: if ``model`` has no such submodule; the message lists the names it has.

    Example:
        >>> from lightning_cl.models import MLP
        >>> type(resolve_layer(MLP(input_size=4, hidden_size=3), "features")).__name__
        'Sequential'
    """
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [n for n in modules if n and "." not in n]
        raise ValueError(
            f"the model has no layer {layer!r}; its top-level layers are {names} "
            "(any name of model.named_modules() is allowed)"
        )
    return modules[layer]


@contextmanager
def capture_features(model: nn.Module, layer: str) -> Iterator[list[Tensor]]:
    """Record the output of ``model``'s layer ``layer`` on every forward pass inside the block.

    Yields a list that each forward appends the layer's output to, flattened to ``(B, D)``,
    still part of the autograd graph.

    Raises:
        ValueError: if ``model`` has no layer ``layer``.

    Example:
        >>> import torch
        >>> from lightning_cl.models import MLP
        >>> mlp = MLP(num_classes=3, input_size=4, hidden_size=5)
        >>> with capture_features(mlp, "features") as out:
        ...     _ = mlp(torch.zeros(2, 4))
        >>> tuple(out[0].shape)
        (2, 5)
    """
    outputs: list[Tensor] = []

    def hook(_: nn.Module, __: tuple[Tensor, ...], output: Tensor) -> None:
        outputs.append(output.flatten(1))

    handle = resolve_layer(model, layer).register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()
