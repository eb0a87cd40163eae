"""Reference backbones with a swappable classification head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from lightning_cl.models.heads import IncrementalClassifier, MultiHeadClassifier

__all__ = ["CNN", "MLP", "MLP_ACTIVATIONS", "HeadKind", "make_head"]

HeadKind = Literal["linear", "incremental", "multihead"]
_HEADS = ("linear", "incremental", "multihead")


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """A classification head: ``"linear"`` (fixed ``num_classes`` outputs), ``"incremental"``
    (:class:`IncrementalClassifier`, grows with the classes seen) or ``"multihead"``
    (:class:`MultiHeadClassifier`, one head per task label).

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "incremental":
        return IncrementalClassifier(in_features)
    if kind == "multihead":
        return MultiHeadClassifier(in_features)
    raise ValueError(f"head must be one of {_HEADS}, got {kind!r}")


class _Backbone(nn.Module):
    """Features then head; ``forward(x, task_labels)`` routes task labels to a multi-head."""

    features: nn.Module
    head: nn.Module

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, features: Tensor, task_labels: Tensor | None = None) -> Tensor:
        if isinstance(self.head, MultiHeadClassifier):
            if task_labels is None:
                raise ValueError("a multi-head model needs task labels: call model(x, task_labels)")
            return self.head(features, task_labels)
        return self.head(features)

    def forward(self, x: Tensor, task_labels: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x), task_labels)


MLP_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
"""The hidden nonlinearities of :class:`MLP`, by name."""


class MLP(_Backbone):
    """A multi-layer perceptron, by default the shape of Avalanche's ``SimpleMLP``.

    Inputs are flattened; each hidden layer is ``Linear -> ReLU -> Dropout`` (``Tanh`` in place of
    the ReLU with ``activation="tanh"``, as continual-learning-baselines' ``relu_act=False``).

    Args:
        num_classes: outputs of a ``"linear"`` head (dynamic heads size themselves).
        input_size: number of input features after flattening (784 for MNIST, 64 for digits).
        hidden_size: width of the hidden layers.
        hidden_layers: number of hidden layers.
        drop_rate: dropout probability.
        head: ``"linear"``, ``"incremental"`` or ``"multihead"`` (see :func:`make_head`).
        activation: the hidden layers' nonlinearity, one of :data:`MLP_ACTIVATIONS`.

    Raises:
        ValueError: for sizes < 1, ``hidden_layers < 0``, a ``drop_rate`` outside [0, 1) or an
            unknown ``activation``.

    Example:
        >>> import torch
        >>> MLP(num_classes=10, input_size=64, hidden_size=32)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_size: int = 28 * 28,
        hidden_size: int = 512,
        hidden_layers: int = 1,
        drop_rate: float = 0.5,
        head: HeadKind = "linear",
        activation: str = "relu",
    ):
        super().__init__()
        if activation not in MLP_ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(MLP_ACTIVATIONS)}, got {activation!r}")
        for name, value in (
            ("num_classes", num_classes),
            ("input_size", input_size),
            ("hidden_size", hidden_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 0:
            raise ValueError(f"hidden_layers must be an int >= 0, got {hidden_layers!r}")
        if (
            isinstance(drop_rate, bool)
            or not isinstance(drop_rate, int | float)
            or not 0.0 <= drop_rate < 1.0
        ):
            raise ValueError(f"drop_rate must be a number in [0, 1), got {drop_rate!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_size
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_size), MLP_ACTIVATIONS[activation](), nn.Dropout(drop_rate)]
            width = hidden_size
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = make_head(head, width, num_classes)


class CNN(_Backbone):
    """A small convolutional network for small images (digits, MNIST, CIFAR).

    Each stage is ``Conv3x3 -> ReLU -> Conv3x3 -> ReLU -> MaxPool2 -> Dropout`` (with
    ``batch_norm``, a ``BatchNorm2d`` after each convolution); global average pooling makes it
    independent of the image size.

    Args:
        num_classes: outputs of a ``"linear"`` head.
        in_channels: image channels (1 for grey-scale).
        channels: output channels of each stage.
        drop_rate: dropout probability after each stage.
        batch_norm: a ``BatchNorm2d`` after each convolution (the convolutions then have no bias).
        head: ``"linear"``, ``"incremental"`` or ``"multihead"``.

    Example:
        >>> import torch
        >>> CNN(num_classes=10, in_channels=1)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64),
        drop_rate: float = 0.25,
        head: HeadKind = "linear",
        batch_norm: bool = False,
    ):
        super().__init__()
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        layers: list[nn.Module] = []
        prev = in_channels
        for c in channels:
            for conv_in in (prev, c):
                layers.append(nn.Conv2d(conv_in, c, 3, padding=1, bias=not batch_norm))
                layers += [nn.BatchNorm2d(c), nn.ReLU()] if batch_norm else [nn.ReLU()]
            layers += [
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Dropout(drop_rate),
            ]
            prev = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.num_features = prev
        self.head = make_head(head, prev, num_classes)
