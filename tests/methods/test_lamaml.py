"""La-MAML: look-ahead inner steps with learnable per-weight rates, updated by the meta-gradient."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import LaMAML, lamaml_meta_gradients
from lightning_cl.training import fit_stream
from lightning_cl.training.checkpoint import checkpoint_name
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average, stream_trainer_kwargs
from tests.methods.test_mer import TinyModule, one_sample_memory


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _step(alpha_lr: float, **kwargs: Any) -> tuple[TinyModule, LaMAML]:
    # Incoming sample (x=1, y=0), memory sample (x=1, y=1), weights 0, every rate 0.1.
    module = TinyModule([0.0, 0.0])
    lamaml = LaMAML(
        mem_size=10,
        mem_batch_size=1,
        n_glances=1,
        alpha_init=0.1,
        alpha_lr=alpha_lr,
        grad_clip_norm=None,
        **kwargs,
    )
    lamaml._seed, lamaml._memory = 0, one_sample_memory(1.0, 1)
    batch = (torch.tensor([[1.0]]), torch.tensor([0]), torch.tensor([0]))
    lamaml.optimisation_step(module, batch, {"current": slice(0, 1)}, optimizer=None)
    return module, lamaml


def _by_hand(alpha_lr: float) -> tuple[list[float], list[float]]:
    # Inner step on (1, 0): g = p - e0 = (-0.5, 0.5), look-ahead w1 = -0.1 * g = (0.05, -0.05).
    # Meta-loss: mean CE of (1, 0) and (1, 1) at w1; dL/dw1 = p1 - (0.5, 0.5) with p1 = softmax(w1).
    p = _sigmoid(0.1)
    grad_w = [p - 0.5, 0.5 - p]
    # First order: dL/dalpha = dL/dw1 * (-g): positive, the memory sample's loss rose.
    grad_alpha = [grad_w[0] * 0.5, grad_w[1] * -0.5]
    alpha = [0.1 - alpha_lr * g for g in grad_alpha]
    weights = [-max(a, 0.0) * g for a, g in zip(alpha, grad_w)]
    return alpha, weights


def test_alpha_shrinks_where_the_look_ahead_hurts_the_memory_and_weights_move_by_relu_alpha() -> None:
    module, lamaml = _step(alpha_lr=1.0)
    alpha, weights = _by_hand(1.0)
    assert all(0.0 < a < 0.1 for a in alpha)
    torch.testing.assert_close(lamaml.alpha["w"].flatten(), torch.tensor(alpha))
    torch.testing.assert_close(module.w.detach().flatten(), torch.tensor(weights))


def test_a_rate_driven_negative_leaves_its_weight_where_it_was() -> None:
    module, lamaml = _step(alpha_lr=20.0)
    alpha, _ = _by_hand(20.0)
    assert all(a < 0.0 for a in alpha)
    torch.testing.assert_close(lamaml.alpha["w"].flatten(), torch.tensor(alpha))
    assert torch.equal(module.w.detach(), torch.zeros(2, 1))


def test_second_order_adds_the_curvature_through_the_inner_step() -> None:
    w = torch.ones(1, requires_grad=True)
    a = torch.full((1,), 0.1, requires_grad=True)
    b = (torch.ones(1), torch.zeros(1), torch.zeros(1))

    def mse(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((z - y) ** 2).mean()

    def fwd(p: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * p["w"]

    first = lamaml_meta_gradients({"w": w}, {"w": a}, fwd, [b], b, criterion=mse)
    second = lamaml_meta_gradients({"w": w}, {"w": a}, fwd, [b], b, criterion=mse, second_order=True)
    # w1 = w - a * 2w = 0.8 w: dL/dw = 2 w1 * (1 - 2a) = 1.28 with the curvature, 1.6 without.
    assert float(first[1]["w"]) == pytest.approx(1.6)
    assert float(second[1]["w"]) == pytest.approx(1.28)
    assert float(first[2]["w"]) == pytest.approx(float(second[2]["w"])) == pytest.approx(-3.2)
    assert w.grad is None and a.grad is None  # gradients are returned, not accumulated


class _RatesAtStart(L.Callback):
    """Records LaMAML's rates when training starts (after the head grew, before any step)."""

    def __init__(self, lamaml: LaMAML) -> None:
        self.lamaml = lamaml
        self.seen: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen = {n: a.clone() for n, a in self.lamaml.alpha.items()}


def test_rates_grow_with_a_dynamic_head_and_keep_the_old_ones() -> None:
    from lightning_cl.models import MLP, ContinualModule

    module = ContinualModule(MLP(input_size=64, hidden_size=32, drop_rate=0.0, head="incremental"))
    lamaml = LaMAML(mem_size=20, n_glances=2, seed=0)
    bench = SplitDigits(n_experiences=5, seed=1)
    grown: list[str] = []
    for experience in bench.train_stream:
        before = {n: a.clone() for n, a in lamaml.alpha.items()}
        probe = _RatesAtStart(lamaml)
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[lamaml, probe]).fit(module, datamodule=experience)
        grown = [n for n in before if before[n].shape != probe.seen[n].shape]
        if grown:
            break
    assert grown  # the head's weight and bias grew in some experience after the first
    params = dict(module.named_parameters())
    for name in grown:
        old, new = before[name], probe.seen[name]
        assert new.shape == params[name].shape and new.shape[0] > old.shape[0]
        assert torch.equal(new[: old.shape[0]], old)  # the learnt rates kept
        assert torch.equal(
            new[old.shape[0] :], torch.full_like(new[old.shape[0] :], 0.1)
        )  # new units: alpha_init
    assert any(not torch.allclose(a, torch.full_like(a, 0.1)) for a in lamaml.alpha.values())


def test_sync_update_steps_the_module_optimizer_once_per_step() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    lamaml = LaMAML(mem_size=20, n_glances=2, sync_update=True, seed=0)
    module = digits_module()
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[lamaml])
    trainer.fit(module, datamodule=bench.train_stream[0])
    assert trainer.global_step == trainer.num_training_batches
    assert all("momentum_buffer" in s for s in trainer.optimizers[0].state.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_glances": 0}, "n_glances must be an int >= 1, got 0"),
        ({"alpha_init": 0}, "alpha_init must be a number > 0, got 0"),
        ({"alpha_lr": -1.0}, "alpha_lr must be a number >= 0, got -1.0"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm must be a number > 0, got 0.0"),
        ({"second_order": "yes"}, "second_order must be True or False, got 'yes'"),
        ({"mem_batch_size": -1}, "mem_batch_size must be an int >= 0, got -1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LaMAML(**kwargs)


@pytest.mark.slow
def test_lamaml_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    lamaml = split_digits_average([LaMAML(mem_size=200, mem_batch_size=32, n_glances=2, seed=1)])
    assert lamaml > naive + 0.2, (lamaml, naive)


def _stream(tmp_path: Path, **kwargs: Any) -> tuple[Any, LaMAML]:
    L.seed_everything(1)
    module, lamaml = digits_module(), LaMAML(mem_size=60, n_glances=2, seed=2)
    fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[lamaml],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(enable_checkpointing=True),
        checkpoint_dir=tmp_path,
        **kwargs,
    )
    return module, lamaml


@pytest.mark.slow
def test_resume_at_an_experience_boundary_gives_the_same_weights_rates_and_memory(tmp_path: Path) -> None:
    full, full_lamaml = _stream(tmp_path / "full", max_experiences=3)
    _stream(tmp_path / "part", max_experiences=2)
    resumed, resumed_lamaml = _stream(
        tmp_path / "part", ckpt_path=tmp_path / "part" / checkpoint_name(1), max_experiences=1
    )
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert full_lamaml.alpha.keys() == resumed_lamaml.alpha.keys()
    for name, a in full_lamaml.alpha.items():
        assert torch.equal(a, resumed_lamaml.alpha[name])
    assert torch.equal(full_lamaml.buffer.indices, resumed_lamaml.buffer.indices)


def test_under_16_mixed_an_overflowing_step_leaves_weights_and_rates_and_backs_off() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    module = TinyModule([0.2, -0.1])
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    module.trainer = SimpleNamespace(world_size=1, global_rank=0, precision_plugin=plugin)  # type: ignore[assignment]
    lamaml = LaMAML(mem_size=10, mem_batch_size=1, n_glances=1, alpha_init=0.1, seed=0)
    lamaml._seed, lamaml._memory = 0, one_sample_memory(1.0, 1)
    batch = (torch.tensor([[10.0]]), torch.tensor([1]), torch.tensor([0]))
    result = lamaml.optimisation_step(module, batch, {"current": slice(0, 1)}, optimizer=None)
    torch.testing.assert_close(module.w.detach().flatten(), torch.tensor([0.2, -0.1]))
    assert all(torch.equal(a, torch.full_like(a, 0.1)) for a in lamaml.alpha.values())
    assert math.isfinite(float(result.loss)) and scaler.get_scale() == pytest.approx(1.5e38)


def test_sync_update_under_16_mixed_hands_lightning_the_scaled_gradients() -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    def run(plugins: list[Any]) -> list[torch.Tensor]:
        L.seed_everything(0)
        module = digits_module()
        lamaml = LaMAML(mem_size=20, n_glances=2, sync_update=True, seed=0)
        trainer = L.Trainer(
            **quiet_trainer_kwargs(limit_train_batches=2), plugins=plugins, callbacks=[lamaml]
        )
        trainer.fit(module, datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
        assert trainer.global_step == 2
        return [p.detach().clone() for p in module.parameters()]

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mixed = run([MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.state_dict()["_growth_tracker"] == 2  # Lightning's step found them finite, once each
    # The optimizer stepped the unscaled gradients: fp16 forward passes, the same update as fp32.
    for a, b in zip(mixed, run([])):
        torch.testing.assert_close(a, b, rtol=0.0, atol=2e-3)


def test_sync_update_combines_with_si_which_sees_the_optimizer_steps() -> None:
    from lightning_cl.methods import SI

    bench = SplitDigits(n_experiences=5, seed=1)
    module, si = digits_module(), SI()
    callbacks = [LaMAML(mem_size=20, n_glances=2, sync_update=True, seed=0), si]
    L.Trainer(**quiet_trainer_kwargs(limit_train_batches=3), callbacks=callbacks).fit(
        module, datamodule=bench.train_stream[0]
    )
    assert si.importance and all(bool((v >= 0).all()) for v in si.importance.values())
    assert sum(float(v.sum()) for v in si.importance.values()) > 0.0


def test_more_glances_than_samples_warns_and_takes_one_per_sample() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    lamaml = LaMAML(mem_size=20, n_glances=64, seed=0)
    experience = bench.train_stream[0]
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=2), callbacks=[lamaml])
    with pytest.warns(UserWarning, match=r"LaMAML\(n_glances=64\) .* batch has 32 samples .* clamped"):
        trainer.fit(digits_module(), datamodule=experience)
