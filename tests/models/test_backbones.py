from __future__ import annotations

import pytest
import torch

from lightning_cl.models import CNN, MLP, IncrementalClassifier, MultiHeadClassifier


def test_mlp_default_is_simple_mlp_shape() -> None:
    model = MLP()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 10)]
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("model", [MLP(input_size=64, hidden_size=16), CNN(in_channels=1, channels=(4, 8))])
def test_backbones_on_digit_images(model: torch.nn.Module) -> None:
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_heads_are_selected_by_name() -> None:
    assert isinstance(MLP(head="incremental").head, IncrementalClassifier)
    assert isinstance(CNN(head="multihead").head, MultiHeadClassifier)
    with pytest.raises(ValueError, match="head must be one of"):
        MLP(head="bogus")  # type: ignore[arg-type]


def test_multihead_backbone_needs_task_labels() -> None:
    model = MLP(input_size=4, hidden_size=8, head="multihead")
    with pytest.raises(ValueError, match="task labels"):
        model(torch.randn(2, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_classes=0), "num_classes"),
        (dict(hidden_layers=-1), "hidden_layers"),
        (dict(drop_rate=1.0), "drop_rate"),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_cnn_rejects_empty_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        CNN(channels=())


def test_mlp_activation_is_chosen_by_name() -> None:
    import torch
    from torch import nn

    from lightning_cl.models import MLP, MLP_ACTIVATIONS

    tanh = MLP(num_classes=3, input_size=4, hidden_size=5, hidden_layers=2, drop_rate=0.0, activation="tanh")
    kinds = [type(m) for m in tanh.features if not isinstance(m, nn.Linear | nn.Dropout | nn.Flatten)]
    assert kinds == [nn.Tanh, nn.Tanh]
    features = tanh.forward_features(torch.full((2, 4), 100.0))
    assert float(features.abs().max()) <= 1.0  # tanh bounds the hidden units
    relu = MLP(num_classes=3, input_size=4, hidden_size=5)
    assert [type(m) for m in relu.features if isinstance(m, nn.ReLU | nn.Tanh)] == [nn.ReLU]
    assert set(MLP_ACTIVATIONS) == {"relu", "tanh"}
    import pytest

    with pytest.raises(ValueError, match=r"activation must be one of \('relu', 'tanh'\), got 'gelu'"):
        MLP(activation="gelu")
