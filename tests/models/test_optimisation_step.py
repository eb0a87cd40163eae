"""The optimisation-step extension point: one callback may own the whole update of a training step."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ERACE, ContinualCallback
from lightning_cl.models import OptimisationStep, StepResult, optimisation_step_owner
from tests.conftest import digits_module, quiet_trainer_kwargs


class _Owner(ContinualCallback, OptimisationStep):
    """Plain SGD on the merged batch, through the optimizer (``via_optimizer``) or by hand."""

    def __init__(self, via_optimizer: bool = True, steps: int = 1, lr: float = 0.05) -> None:
        self.via_optimizer, self.steps, self.lr = via_optimizer, steps, lr
        self.losses: list[float] = []
        self.automatic: list[bool] = []

    def optimisation_step(self, module: Any, batch: Any, parts: Any, optimizer: Any) -> StepResult:
        self.automatic.append(module.automatic_optimization)
        x, y, t = batch
        logits = module(x, t)
        loss, penalties = module.add_penalties(F.cross_entropy(logits, y), batch, logits)
        if self.via_optimizer:
            optimizer.zero_grad()
            module.manual_backward(loss)
            for _ in range(self.steps):
                optimizer.step()
        else:
            grads = torch.autograd.grad(loss, list(module.parameters()))
            with torch.no_grad():
                for p, g in zip(module.parameters(), grads):
                    p.sub_(self.lr * g)
        self.losses.append(float(loss.detach()))
        return StepResult(loss.detach(), logits.detach(), penalties)


class _SecondOwner(_Owner):
    pass


class _Constant(ContinualCallback):
    def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0.0 + 0.25


def _fit(
    callbacks: list[Any], module: Any = None, experience: int = 0, **trainer: Any
) -> tuple[Any, L.Trainer]:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module() if module is None else module
    fit = L.Trainer(**quiet_trainer_kwargs(**trainer), callbacks=callbacks)
    fit.fit(module, datamodule=bench.train_stream[experience])
    return module, fit


def test_owner_lookup_refuses_a_second_owner_naming_both() -> None:
    assert optimisation_step_owner([object(), ContinualCallback()]) is None
    with pytest.raises(
        MisconfigurationException, match="_Owner, _SecondOwner each own the optimisation step"
    ):
        _fit([_Owner(), _SecondOwner()])


def test_without_an_owner_lightning_optimises_automatically() -> None:
    L.seed_everything(0)
    module, trainer = _fit([])
    assert module.automatic_optimization
    assert trainer.global_step == trainer.num_training_batches > 0


@pytest.mark.parametrize("via_optimizer", [True, False])
def test_the_owners_steps_count_once_each_and_its_loss_is_logged(via_optimizer: bool) -> None:
    L.seed_everything(0)
    owner = _Owner(via_optimizer=via_optimizer)
    before = [p.detach().clone() for p in digits_module().parameters()]
    module, trainer = _fit([owner], max_epochs=2)
    assert owner.automatic == [False] * len(owner.losses)
    assert trainer.global_step == len(owner.losses) == 2 * trainer.num_training_batches
    assert module.global_step_all == trainer.global_step
    # The epoch's logged loss is the weighted mean of the losses the owner reported in it.
    assert 0.0 < float(trainer.callback_metrics["train/loss_epoch"]) < max(owner.losses)
    assert float(trainer.callback_metrics["train/acc_epoch"]) > 0.5
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))
    # The next experience without an owner is optimised by Lightning again.
    _, second = _fit([], module=module, experience=1)
    assert module.automatic_optimization and second.global_step == second.num_training_batches
    # ... with the settings only automatic optimisation has (checked by Lightning before `setup`).
    _, third = _fit([], module=module, experience=2, gradient_clip_val=1.0)
    assert third.global_step == third.num_training_batches


def test_the_same_sgd_owned_or_automatic_gives_the_same_weights() -> None:
    from functools import partial

    def plain() -> Any:
        return digits_module(optimizer=partial(torch.optim.SGD, lr=0.05))

    L.seed_everything(0)
    auto, _ = _fit([], module=plain())
    L.seed_everything(0)
    owned, _ = _fit([_Owner(via_optimizer=False, lr=0.05)], module=plain())
    for a, b in zip(auto.parameters(), owned.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_two_optimizer_steps_in_one_training_step_are_refused() -> None:
    with pytest.raises(MisconfigurationException, match=r"called optimizer.step\(\) 2 times"):
        _fit([_Owner(steps=2)])


def test_other_callbacks_penalties_are_added_and_logged() -> None:
    L.seed_everything(0)
    owner = _Owner()
    _, trainer = _fit([owner, _Constant()])
    assert float(trainer.callback_metrics["train/penalty/_constant_epoch"]) == pytest.approx(0.25)
    assert min(owner.losses) >= 0.25


@pytest.mark.parametrize(
    ("callbacks", "trainer", "match"),
    [
        ([ERACE(mem_size=20)], {}, "_Owner owns the optimisation step .* ERACE's replaced task loss"),
        ([], {"gradient_clip_val": 1.0}, r"remove Trainer\(gradient_clip_val=1.0\)"),
        ([], {"accumulate_grad_batches": 2}, r"remove Trainer\(accumulate_grad_batches=2\)"),
    ],
)
def test_combinations_an_owner_cannot_honour_are_refused_at_set_up(
    callbacks: list[Any], trainer: dict[str, Any], match: str
) -> None:
    module = digits_module()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(MisconfigurationException, match=match):
        _fit([_Owner(), *callbacks], module=module, **trainer)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


def test_a_scheduler_is_stepped_per_epoch_under_an_owner() -> None:
    from functools import partial

    module = digits_module(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    _, trainer = _fit([_Owner()], module=module, max_epochs=3)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)


class _Returns(ContinualCallback, OptimisationStep):
    """An owner whose step returns ``make(logits, loss)`` (something other than a good StepResult)."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def optimisation_step(self, module: Any, batch: Any, parts: Any, optimizer: Any) -> Any:
        x, y, t = batch
        logits = module(x, t)
        return self.make(logits, F.cross_entropy(logits, y))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda z, loss: None,
            TypeError,
            "_Returns.optimisation_step returned None; it must return a StepResult",
        ),
        (lambda z, loss: (loss, z), TypeError, "returned a tuple .*; it must return a StepResult"),
        (lambda z, loss: StepResult(float(loss), z), TypeError, "whose loss is a float; it must be a tensor"),
        (
            lambda z, loss: StepResult(loss, z[:1]),
            ValueError,
            r"logits of shape \(1, 10\); .* B = \d\d+, one row per row",
        ),
        (
            lambda z, loss: StepResult(z.sum(1), z),
            ValueError,
            r"a loss of shape \(\d\d+,\); it must be a scalar",
        ),
    ],
)
def test_a_step_that_returns_no_step_result_is_refused_naming_the_owner(
    make: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        _fit([_Returns(make)])


class _NotACallback(OptimisationStep):
    def optimisation_step(self, module: Any, batch: Any, parts: Any, optimizer: Any) -> StepResult:
        raise AssertionError("never called")


def test_an_owner_that_is_no_lightning_callback_is_refused_before_any_hook() -> None:
    module = digits_module()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(
        TypeError, match=r"_NotACallback owns the optimisation step but is not a Lightning Callback"
    ):
        _fit([_NotACallback()], module=module)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


def test_inner_loss_scaling_keeps_fp16_gradients_that_underflow_unscaled() -> None:
    # Under fp16 autocast, d(1e-8 * out)/d out = 1e-8 rounds to 0 in half precision: the weight's
    # gradient vanishes unless the loss is scaled first (GradScaler's reason to be).
    from lightning_cl.models.optimisation_step import InnerLossScaling

    w = torch.full((1, 3), 0.5, requires_grad=True)
    x = torch.full((2, 3), 2.0)

    def loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.float16):
            return ((x @ w.T) * 1e-8).float().sum()

    (plain,) = InnerLossScaling(None).grad(loss(), [w])
    assert plain is not None and torch.count_nonzero(plain) == 0
    scaling = InnerLossScaling(torch.amp.GradScaler("cpu", init_scale=2.0**10))
    (scaled,) = scaling.grad(loss(), [w])
    assert scaled is not None
    torch.testing.assert_close(scaled, torch.full((1, 3), 4e-8), rtol=1e-2, atol=0.0)
    assert scaling.finish(trainer=None) and scaling.scaler.state_dict()["_growth_tracker"] == 1


def test_inner_loss_scaling_backs_off_and_grows_as_grad_scaler() -> None:
    from lightning_cl.models.optimisation_step import InnerLossScaling

    scaler = torch.amp.GradScaler("cpu", init_scale=1e38, growth_interval=2)
    scaling = InnerLossScaling(scaler)
    w = torch.ones(1, requires_grad=True)
    (g,) = scaling.grad((w * 10.0).sum(), [w])  # 1e39 overflows float32
    assert not bool(scaling.finite)
    assert torch.equal(scaling.where_finite(torch.ones(2)), torch.zeros(2))  # the update is skipped
    assert not scaling.finish(trainer=None) and scaler.get_scale() == pytest.approx(5e37)
    for _ in range(2):
        (g,) = scaling.grad((w * 3.0).sum(), [w])
        assert scaling.finish(trainer=None)
    assert float(g) == pytest.approx(3.0) and scaler.get_scale() == pytest.approx(1e38)  # grew after 2


def test_an_inner_loop_refuses_a_precision_plugin_it_cannot_follow() -> None:
    from lightning.pytorch.plugins.precision import Precision

    from lightning_cl.models.optimisation_step import InnerLossScaling

    class _Sharded(Precision):
        pass

    trainer = L.Trainer(**quiet_trainer_kwargs(), plugins=[_Sharded()])
    with pytest.raises(MisconfigurationException, match=r"MER takes its own gradients .* _Sharded"):
        InnerLossScaling.for_trainer(trainer, "MER")
    assert (
        InnerLossScaling.for_trainer(L.Trainer(**quiet_trainer_kwargs(precision="bf16-mixed")), "MER").scaler
        is None
    )


def test_an_inner_rate_of_none_needs_an_optimizer() -> None:
    from lightning_cl.models.optimisation_step import inner_learning_rate

    with pytest.raises(
        MisconfigurationException, match=r"MER\(lr=None\) takes the optimizer's learning rate"
    ):
        inner_learning_rate(None, [], "MER")
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    sgd.param_groups[0]["lr"] = 0.01  # as a scheduler would: read at each call
    assert inner_learning_rate(None, sgd, "MER") == 0.01
