from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import MAS, output_sensitivity
from lightning_cl.models import CNN, MLP, ContinualModule
from tests.conftest import quiet_trainer_kwargs
from tests.methods.permuted_digits import run_permuted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lambda_reg=-1), "lambda_reg must be a number >= 0, got -1"),
        (dict(alpha=1.5), r"alpha must lie in \[0, 1\], got 1.5"),
        (dict(estimator="exact"), r"estimator must be one of \('per_sample', 'minibatch'\), got 'exact'"),
        (dict(batch_size=0), "batch_size must be a positive int or None, got 0"),
        (dict(max_importance=-2.0), "max_importance must be a number > 0 or None, got -2.0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MAS(**kwargs)


def _by_hand(model: torch.nn.Module, x: torch.Tensor, batch: int | None) -> dict[str, torch.Tensor]:
    """Absolute gradients of the squared output norm: per sample (batch=None) or per batch mean."""
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    groups = [x[i : i + 1] for i in range(len(x))] if batch is None else list(x.split(batch))
    for part in groups:
        model.zero_grad()
        model(part).pow(2).sum(-1).mean().backward()
        for n, p in model.named_parameters():
            sums[n] += p.grad.abs()
    return sums


@pytest.mark.parametrize(
    ("model_kind", "estimator", "batch"),
    [("mlp", "per_sample", None), ("cnn", "per_sample", None), ("mlp", "minibatch", 4)],
)
def test_output_sensitivity_matches_a_loop(model_kind: str, estimator: str, batch: int | None) -> None:
    # The MLP takes the closed form for linear layers, the CNN torch.func.vmap.
    torch.manual_seed(0)
    view = SplitDigits().train_stream[0].dataset
    if model_kind == "mlp":
        model: torch.nn.Module = MLP(num_classes=3, input_size=64, hidden_size=8, drop_rate=0.0)
    else:
        model = CNN(num_classes=3, in_channels=1, channels=(4,), drop_rate=0.0)
    model.eval()
    positions = torch.arange(10)
    sums, count = output_sensitivity(model, view, positions, batch_size=4, estimator=estimator)
    expected = _by_hand(model, view.__getitems__(positions)[0], batch)
    assert count == (10 if batch is None else 3)
    for name, value in expected.items():
        torch.testing.assert_close(sums[name], value, rtol=1e-4, atol=1e-6)


def test_importance_is_a_running_average_and_clipped() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    mas = MAS(alpha=0.25, max_importance=1e9)
    history = []
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[mas]).fit(module, datamodule=experience)
        data = experience.dataset
        sums, count = output_sensitivity(module, data, torch.arange(len(data)), batch_size=64)
        history.append({n: v / count for n, v in sums.items()})
    assert set(mas.importance) == set(history[0])
    for name, value in mas.importance.items():
        torch.testing.assert_close(value, 0.25 * history[0][name] + 0.75 * history[1][name])
    clipped = MAS(max_importance=1e-3)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[clipped]).fit(module, datamodule=bench.train_stream[2])
    assert max(float(v.max()) for v in clipped.importance.values()) == pytest.approx(1e-3)
    weights = dict(module.named_parameters())
    assert all(torch.equal(a, weights[n].detach()) for n, a in clipped.anchor.items())


def test_mas_reduces_forgetting_on_permuted_digits() -> None:
    naive = run_permuted([])
    mas = run_permuted([MAS(lambda_reg=0.1)])
    assert mas.average_accuracy > naive.average_accuracy + 0.2
    assert mas.matrix[-1, 0] > naive.matrix[-1, 0] + 0.4  # the first permutation, after the last
