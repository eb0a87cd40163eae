from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cl.data import DatasetView, TensorClassificationDataset
from lightning_cl.methods.per_sample import (
    add_linear_per_sample,
    linear_layers,
    per_sample_gradient_inner,
    per_sample_gradient_sums,
    per_sample_gradients,
)
from lightning_cl.models import CNN, MLP


def _nll(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _squared_norm(logits: Tensor, y: Tensor) -> Tensor:
    return logits.pow(2).sum(-1)


LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], str]] = {
    "fisher": (_nll, "square"),
    "sensitivity": (_squared_norm, "abs"),
}


class _SharedLayer(nn.Module):
    """One linear layer applied twice: per-sample gradients are not outer products (vmap path)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.layer(torch.tanh(self.layer(x)))[:, :3]


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":  # every parameter in a linear layer: the closed form
        return MLP(num_classes=3, input_size=16, hidden_size=6, drop_rate=0.5)
    if kind == "cnn":  # convolutions: torch.func.vmap
        return CNN(num_classes=3, in_channels=1, channels=(2,), drop_rate=0.5)
    return _SharedLayer()


def _data(kind: str, n: int = 10) -> DatasetView:
    g = torch.Generator().manual_seed(1)
    shape = {"mlp": (n, 16), "cnn": (n, 1, 4, 4), "shared": (n, 4)}[kind]
    base = TensorClassificationDataset(torch.randn(shape, generator=g), torch.arange(n) % 3)
    return DatasetView(base, torch.arange(n), 0)


def _brute_force(
    model: nn.Module,
    data: DatasetView,
    loss: Callable[[Tensor, Tensor], Tensor],
    reduction: str,
    groups: list,
) -> dict[str, Tensor]:
    """One backward pass per group of positions, in eval mode: r(grad of the group's mean loss), summed."""
    reduce = torch.square if reduction == "square" else torch.abs
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for group in groups:
        x, y, t = data.__getitems__(group)
        model.zero_grad()
        loss(model(x, t).float(), y).mean().backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                sums[n] += reduce(p.grad)
    model.train()
    return sums


@pytest.mark.parametrize("kind", ["mlp", "cnn", "shared"])
@pytest.mark.parametrize("loss_name", ["fisher", "sensitivity"])
def test_per_sample_sums_equal_a_loop_over_samples(kind: str, loss_name: str) -> None:
    model, data = _model(kind), _data(kind)
    loss, reduction = LOSSES[loss_name]
    positions = torch.tensor([0, 2, 3, 5, 6, 7, 9])
    sums, count = per_sample_gradient_sums(
        model, data, positions, batch_size=3, per_sample_loss=loss, reduction=reduction
    )
    assert count == 7
    expected = _brute_force(model, data, loss, reduction, [[int(i)] for i in positions])
    assert set(sums) == set(expected)
    for name, value in expected.items():
        assert sums[name].dtype == torch.float32
        torch.testing.assert_close(sums[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert sum(float(v.sum()) for v in sums.values()) > 0


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_minibatch_sums_reduce_the_gradient_of_each_batch_mean(kind: str) -> None:
    model, data = _model(kind), _data(kind)
    sums, count = per_sample_gradient_sums(
        model, data, torch.arange(10), batch_size=4, per_sample_loss=_nll, estimator="minibatch"
    )
    assert count == 3  # batches of 4, 4 and 2
    expected = _brute_force(model, data, _nll, "square", [list(c) for c in torch.arange(10).split(4)])
    for name, value in expected.items():
        torch.testing.assert_close(sums[name], value, rtol=1e-4, atol=1e-7, msg=name)


def test_the_estimate_runs_in_eval_mode_and_restores_the_mode() -> None:
    model, data = _model("mlp"), _data("mlp")  # dropout 0.5: train mode would draw masks
    model.train()
    first, _ = per_sample_gradient_sums(model, data, torch.arange(10), batch_size=5, per_sample_loss=_nll)
    second, _ = per_sample_gradient_sums(model, data, torch.arange(10), batch_size=2, per_sample_loss=_nll)
    assert model.training
    for name in first:
        torch.testing.assert_close(first[name], second[name])


def test_samples_of_several_task_labels_in_one_batch() -> None:
    torch.manual_seed(0)
    model = CNN(num_classes=3, in_channels=1, channels=(2,), drop_rate=0.0, head="multihead")
    g = torch.Generator().manual_seed(1)
    base = TensorClassificationDataset(torch.randn(8, 1, 4, 4, generator=g), torch.arange(8) % 3)
    data = DatasetView(base, torch.arange(8), (torch.arange(8) % 2).long())
    model.head.adaptation([0, 1, 2], data.task_labels, data.targets)
    sums, count = per_sample_gradient_sums(model, data, torch.arange(8), batch_size=8, per_sample_loss=_nll)
    expected = _brute_force(model, data, _nll, "square", [[i] for i in range(8)])
    assert count == 8
    for name, value in expected.items():
        torch.testing.assert_close(sums[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert all(float(sums[f"head.heads.{task}.classifier.weight"].sum()) > 0 for task in (0, 1))


def test_linear_layers_and_the_closed_form_apply_only_to_linear_models() -> None:
    mlp, cnn, shared = _model("mlp"), _model("cnn"), _model("shared")
    trainable = {n: p for n, p in mlp.named_parameters()}
    assert set(linear_layers(mlp, trainable) or {}) == {"features.1", "head"}
    assert linear_layers(cnn, dict(cnn.named_parameters())) is None
    layers = linear_layers(shared, dict(shared.named_parameters()))
    assert layers is not None
    sums = {n: torch.zeros_like(p) for n, p in shared.named_parameters()}
    x = torch.randn(3, 4)
    applied = add_linear_per_sample(
        shared, layers, lambda z: z.pow(2).sum(-1), x, torch.zeros(3), sums, "abs"
    )
    assert not applied and all(float(v.abs().sum()) == 0 for v in sums.values())  # left untouched


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(reduction="cube"), r"reduction must be one of \('square', 'abs'\), got 'cube'"),
        (dict(estimator="exact"), r"estimator must be one of \('per_sample', 'minibatch'\), got 'exact'"),
        (dict(batch_size=0), "batch_size must be a positive int, got 0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    arguments = dict(batch_size=4, per_sample_loss=_nll) | kwargs
    with pytest.raises(ValueError, match=match):
        per_sample_gradient_sums(_model("mlp"), _data("mlp"), torch.arange(4), **arguments)


def test_a_module_without_trainable_parameters_is_refused() -> None:
    model = _model("mlp").requires_grad_(False)
    with pytest.raises(ValueError, match="the module has no trainable parameters: MLP"):
        per_sample_gradient_sums(model, _data("mlp"), torch.arange(4), batch_size=4, per_sample_loss=_nll)


class _TaskBranching(torch.nn.Module):
    """Two heads chosen per batch by a Python branch on the data: vmap cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 5)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)])
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.body(x)))
        if bool((h.sum() > 1e9).item()):  # data-dependent control flow
            h = h * 0
        return self.heads[int(t[0])](h)


def _one_backward_each(
    module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    module.eval()
    rows = []
    for i in range(len(x)):
        module.zero_grad()
        torch.nn.functional.cross_entropy(module(x[i : i + 1], t[i : i + 1]), y[i : i + 1]).backward()
        rows.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                    for p in module.parameters()
                ]
            )
        )
    module.zero_grad()
    return torch.stack(rows)


class _TaskHeads(_TaskBranching):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.heads[int(t[0])](self.drop(torch.relu(self.body(x))))


@pytest.mark.parametrize("model", [_TaskHeads, _TaskBranching])
def test_per_sample_gradients_are_one_backward_per_sample_in_input_order(model: type) -> None:
    torch.manual_seed(0)
    module = model().train()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.tensor([1, 0, 1, 0, 0, 1])  # task labels interleaved: rows come back in input order
    rows = per_sample_gradients(module, x, y, t)
    assert rows.shape == (6, sum(p.numel() for p in module.parameters()))
    assert module.training  # its mode restored
    assert all(p.grad is None for p in module.parameters())
    assert torch.allclose(rows, _one_backward_each(module, x, y, t), atol=1e-6)
    # the head of the other task gets zeros
    n_body = sum(p.numel() for p in module.body.parameters())
    n_head = sum(p.numel() for p in module.heads[0].parameters())
    assert torch.count_nonzero(rows[0, n_body : n_body + n_head]) == 0  # sample 0 is of task 1
    assert per_sample_gradients(module, x[:0], y[:0], t[:0]).shape == (0, rows.shape[1])


class _RowHeads(_TaskBranching):
    """Every head on the whole batch, each row taking its task's: mixed task labels in one batch."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.body(x)))
        return torch.stack([head(h) for head in self.heads], dim=1)[torch.arange(len(x)), t]


@pytest.mark.parametrize("model", ["mlp", "heads"])
def test_per_sample_gradient_inner_products_match_the_gradients(model: str) -> None:
    torch.manual_seed(0)
    module: torch.nn.Module = (
        MLP(num_classes=3, input_size=4, hidden_size=6, drop_rate=0.5) if model == "mlp" else _RowHeads()
    )
    module.train()
    a = (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 0, 1, 0]))
    b = (torch.randn(3, 4), torch.tensor([2, 2, 1]), torch.tensor([1, 0, 0]))
    if model == "mlp":  # a frozen layer does not count
        module.features[1].weight.requires_grad_(False)  # type: ignore[index, union-attr]
    inner, norms_a, norms_b = per_sample_gradient_inner(module, a, b)
    ga, gb = per_sample_gradients(module, *a).double(), per_sample_gradients(module, *b).double()
    torch.testing.assert_close(inner, ga @ gb.T)
    torch.testing.assert_close(norms_a, ga.pow(2).sum(1))
    torch.testing.assert_close(norms_b, gb.pow(2).sum(1))
    assert module.training and all(p.grad is None for p in module.parameters())
