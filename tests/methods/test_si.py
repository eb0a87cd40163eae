from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_cl.data import LoaderSettings, SplitDigits
from lightning_cl.methods import SI
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import quiet_trainer_kwargs
from tests.methods.permuted_digits import run_permuted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(si_lambda=-1.0), "si_lambda must be a number >= 0, got -1.0"),
        (dict(eps=0.0), "eps must be a number > 0, got 0.0"),
        (dict(max_importance=0), "max_importance must be a number > 0 or None, got 0"),
        (dict(path_gradient="full"), r"path_gradient must be one of \('task', 'total'\), got 'full'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SI(**kwargs)


class _OmegaProbe(L.Callback):
    """Reads SI's running path integral at the end of the fit, before SI folds it in (listed first)."""

    def __init__(self, si: SI) -> None:
        self.si = si
        self.omega_sums: list[float] = []

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.omega_sums.append(float(sum(o.sum() for o in self.si.omega.values())))


def _full_batch_loss(module: ContinualModule, experience: Any) -> float:
    x, y, t = experience.dataset.__getitems__(torch.arange(len(experience)))
    with torch.no_grad():
        return float(F.cross_entropy(module(x, t), y))


def test_the_path_integral_is_the_loss_decrease() -> None:
    # SI's defining property: summed over the weights, omega is the decrease of the task loss
    # along the training path (to first order: full-batch gradient descent, small steps). On the
    # second experience the loss includes SI's penalty, and omega still tracks the task loss alone.
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=10_000))
    module = ContinualModule(
        MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0),
        optimizer=partial(torch.optim.SGD, lr=0.02),
    )
    si = SI(si_lambda=0.5, eps=1e-3)
    probe = _OmegaProbe(si)
    for experience in bench.train_stream[:2]:
        module.eval()
        before = _full_batch_loss(module, experience)
        module.train()
        L.Trainer(**quiet_trainer_kwargs(max_epochs=60), callbacks=[probe, si]).fit(
            module, datamodule=experience
        )
        module.eval()
        decrease = before - _full_batch_loss(module, experience)
        module.train()
        assert decrease > 0.3
        assert probe.omega_sums[-1] == pytest.approx(decrease, rel=0.05)
    assert si.importance and all(float(v.min()) >= 0 for v in si.importance.values())


def test_importances_are_clipped_and_anchored_on_copies() -> None:
    bench = SplitDigits(n_experiences=5)  # classes [0, 1], then [2, 3], ...
    module = ContinualModule(
        MLP(num_classes=2, input_size=64, hidden_size=32, drop_rate=0.0, head="incremental")
    )
    si = SI(max_importance=0.5)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=3), callbacks=[si])
    trainer.fit(module, datamodule=bench.train_stream[0])
    weights = dict(module.named_parameters())
    weights_after_first = {n: w.detach().clone() for n, w in weights.items()}
    anchor = {n: a.clone() for n, a in si.anchor.items()}
    importance = {n: a.clone() for n, a in si.importance.items()}
    held = si.anchor["model.features.1.weight"]  # the object itself: a view would follow the weights
    assert all(torch.equal(anchor[n], weights[n].detach()) for n in anchor)
    assert max(float(v.max()) for v in si.importance.values()) == 0.5
    assert min(float(v.min()) for v in si.importance.values()) == 0.0
    L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[si]).fit(
        module, datamodule=bench.train_stream[1]
    )
    # The grown head's importance grew with it; importances only accumulate (up to the clip).
    head = "model.head.classifier.weight"
    assert si.importance[head].shape[0] == 4 and si.anchor[head].shape[0] == 4
    assert all(bool((si.importance[n][: len(v)] >= v).all()) for n, v in importance.items())
    assert not torch.equal(si.anchor[head][:2], anchor[head])  # a new anchor ...
    trunk = "model.features.1.weight"
    assert not torch.equal(weights[trunk], weights_after_first[trunk])
    assert torch.equal(held, weights_after_first[trunk])  # ... and the old one a copy


def test_si_reduces_forgetting_on_permuted_digits() -> None:
    naive = run_permuted([])
    si = run_permuted([SI(si_lambda=0.1)])
    assert naive.average_accuracy < 0.65
    assert si.average_accuracy > naive.average_accuracy + 0.15
    assert si.matrix[-1, 0] > naive.matrix[-1, 0] + 0.2  # the first permutation, after the last


class _ReferencePath(L.Callback):
    """SI's path integral computed the plain way, per step, beside SI (listed before it).

    Each step: the task gradient ``g - 2 c Omega (theta - theta*)`` (Omega and theta* as SI held
    them when the fit started, on the slice that existed), the weights before and after the
    optimizer step, and ``omega += g_task * (theta_before - theta_after)`` in fresh tensors.
    """

    def __init__(self, si: SI) -> None:
        self.si = si
        self.omega: dict[str, torch.Tensor] = {}
        self.si_omega: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.importance = {n: v.clone() for n, v in self.si.importance.items()}
        self.anchor = {n: v.clone() for n, v in self.si.anchor.items()}
        self.omega = {n: torch.zeros_like(p) for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.grad, self.before = {}, {}
        for name, p in pl_module.named_parameters():
            grad = p.grad.detach().clone()
            if name in self.importance and self.si.path_gradient == "task":
                omega, anchor = self.importance[name], self.anchor[name]
                old = tuple(slice(0, k) for k in omega.shape)
                grad[old] -= 2 * self.si.si_lambda * omega * (p.detach()[old] - anchor)
            self.grad[name], self.before[name] = grad, p.detach().clone()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        for name, p in pl_module.named_parameters():
            self.omega[name] += self.grad[name] * (self.before[name] - p.detach())

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:  # before SI folds omega in
        self.si_omega = {n: v.clone() for n, v in self.si.omega.items()}


@pytest.mark.parametrize("path_gradient", ["task", "total"])
def test_the_flat_path_integral_equals_a_plain_computation(path_gradient: str) -> None:
    # Two experiences on a growing head with momentum SGD (weights move at every step, the
    # penalty is on from the second one and the head's new units are outside its anchor).
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, loader=LoaderSettings(batch_size=64))
    module = ContinualModule(
        MLP(num_classes=2, input_size=64, hidden_size=16, drop_rate=0.0, head="incremental"),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )
    si = SI(si_lambda=0.5, path_gradient=path_gradient)
    reference = _ReferencePath(si)
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[reference, si]).fit(
            module, datamodule=experience
        )
        assert set(reference.si_omega) == set(reference.omega)
        for name, omega in reference.omega.items():
            torch.testing.assert_close(reference.si_omega[name], omega, rtol=1e-6, atol=1e-6)
        assert max(float(o.abs().max()) for o in reference.omega.values()) > 1e-3
    assert si.importance["model.head.classifier.weight"].shape[0] == 4


def test_the_penalty_and_its_gradient_are_the_quadratic_penalty() -> None:
    from lightning_cl.methods.penalties import quadratic_penalty

    torch.manual_seed(0)
    module = ContinualModule(MLP(num_classes=4, input_size=6, hidden_size=5, drop_rate=0.0))
    si = SI(si_lambda=0.3)
    params = dict(module.named_parameters())
    head = "model.head.weight"
    # A head that grew from 3 to 4 units since the anchor was taken.
    si.importance = {n: torch.rand(p.shape if n != head else (3, 5)) for n, p in params.items()}
    si.anchor = {n: torch.randn(v.shape) for n, v in si.importance.items()}
    expected = 0.3 * quadratic_penalty(
        module, {n: v.clone() for n, v in si.importance.items()}, {n: v.clone() for n, v in si.anchor.items()}
    )
    expected_grads = torch.autograd.grad(expected, list(params.values()))
    for _ in range(2):  # the second call reuses the buffers
        value = si.penalty(module, None, None)  # type: ignore[arg-type]
        assert value is not None and value.dtype == torch.float32
        grads = torch.autograd.grad(value, list(params.values()))
        si.on_train_batch_end(None, module, None, None, 0)  # type: ignore[arg-type]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert float(grads[list(params).index(head)][3].abs().sum()) == 0.0  # the new unit is free
