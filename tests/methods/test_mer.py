"""MER: Reptile meta-updates over batches that mix the incoming samples with a reservoir memory."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_cl.data import DatasetView, SplitDigits, TensorClassificationDataset
from lightning_cl.methods import MER, reptile_batches
from lightning_cl.training import fit_stream
from lightning_cl.training.checkpoint import checkpoint_name
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average, stream_trainer_kwargs


class TinyModule(nn.Module):
    """A 1-input, 2-class linear classifier with what an owned step reads from a ContinualModule."""

    def __init__(self, weight: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(weight).reshape(2, 1))
        self.criterion = nn.CrossEntropyLoss()
        self.trainer = SimpleNamespace(world_size=1, global_rank=0)
        self.global_step_all = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return x @ self.w.T

    def loss_terms(self) -> list[Any]:
        return []

    def add_penalties(
        self, loss: torch.Tensor, batch: Any, logits: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        return loss, {}


def one_sample_memory(x: float, y: int) -> DatasetView:
    base = TensorClassificationDataset(torch.tensor([[x]]), torch.tensor([y]))
    return DatasetView(base, torch.tensor([0]))


def ce_grad(w: list[float], x: float, y: int) -> list[float]:
    """d CE(softmax(w * x), y) / d w, by hand: (p - onehot(y)) * x."""
    e = [math.exp(wi * x) for wi in w]
    p = [v / sum(e) for v in e]
    return [(p[c] - (1.0 if c == y else 0.0)) * x for c in range(2)]


def test_reptile_batches_by_hand() -> None:
    # Two batches of two samples, per-sample SGD, within-batch rate beta, across-batch rate gamma.
    w = torch.zeros(2, 1, requires_grad=True)
    samples = [(1.0, 0), (2.0, 1)], [(-1.0, 1), (0.5, 0)]
    batches = [
        (torch.tensor([[a] for a, _ in b]), torch.tensor([c for _, c in b]), torch.zeros(2, dtype=torch.long))
        for b in samples
    ]
    lr, beta, gamma = 0.5, 0.3, 0.6
    reptile_batches(
        {"w": w}, lambda b: nn.functional.cross_entropy(b[0] @ w.T, b[1]), batches, lr, beta, gamma
    )
    theta = [0.0, 0.0]
    start = list(theta)
    for b in samples:
        within = list(theta)
        for x, y in b:
            g = ce_grad(theta, x, y)
            theta = [t - lr * gi for t, gi in zip(theta, g)]
        theta = [w0 + beta * (t - w0) for w0, t in zip(within, theta)]
    theta = [a0 + gamma * (t - a0) for a0, t in zip(start, theta)]
    torch.testing.assert_close(w.detach().flatten(), torch.tensor(theta))


def test_one_step_is_theta_plus_beta_times_the_inner_progress() -> None:
    # One batch = the incoming sample (x=1, y=0) and one memory sample (x=1, y=1); gamma = 1.
    module = TinyModule([0.2, -0.1])
    mer = MER(mem_size=10, mem_batch_size=1, n_batches=1, beta=0.25, gamma=1.0, lr=0.5, seed=0)
    mer._seed, mer._memory = 0, one_sample_memory(1.0, 1)
    batch = (torch.tensor([[1.0]]), torch.tensor([0]), torch.tensor([0]))
    result = mer.optimisation_step(module, batch, {"current": slice(0, 1)}, optimizer=None)
    theta = [0.2, -0.1]
    inner = list(theta)
    for x, y in ((1.0, 0), (1.0, 1)):
        inner = [t - 0.5 * g for t, g in zip(inner, ce_grad(inner, x, y))]
    expected = [t + 0.25 * (i - t) for t, i in zip(theta, inner)]
    torch.testing.assert_close(module.w.detach().flatten(), torch.tensor(expected))
    # The step reports the incoming sample's loss and logits at the weights it started from.
    assert float(result.loss) == pytest.approx(-math.log(math.exp(0.2) / (math.exp(0.2) + math.exp(-0.1))))
    torch.testing.assert_close(result.logits, torch.tensor([[0.2, -0.1]]))


def test_a_step_with_non_finite_weights_is_undone() -> None:
    module = TinyModule([0.2, -0.1])
    mer = MER(mem_size=10, n_batches=1, lr=float("1e39"), seed=0)
    mer._seed = 0
    batch = (torch.tensor([[1.0]]), torch.tensor([0]), torch.tensor([0]))
    result = mer.optimisation_step(module, batch, {"current": slice(0, 1)}, optimizer=None)
    assert math.isnan(float(result.loss))
    torch.testing.assert_close(module.w.detach().flatten(), torch.tensor([0.2, -0.1]))


def test_the_memory_fills_online_and_global_step_counts_the_steps() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    mer = MER(mem_size=50, n_batches=2, inner_batch_size=16, seed=3)
    module = digits_module()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[mer])
    trainer.fit(module, datamodule=bench.train_stream[0])
    assert trainer.global_step == 2 * trainer.num_training_batches
    assert len(mer.buffer) == 50 and mer.buffer.seen == len(bench.train_stream[0].dataset)
    assert set(mer.buffer.targets.tolist()) <= set(bench.train_stream[0].classes_in_this_experience)
    assert not any(module.trainer.optimizers[0].state.values())  # inner steps are plain SGD


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mem_size": 0}, "mem_size must be an int >= 1, got 0"),
        ({"n_batches": 0}, "n_batches must be an int >= 1, got 0"),
        ({"beta": 0.0}, "beta must be a number > 0, got 0.0"),
        ({"gamma": "1"}, "gamma must be a number > 0, got '1'"),
        ({"inner_batch_size": 1.5}, "inner_batch_size must be an int >= 1, got 1.5"),
        ({"online": 1}, "online must be True or False, got 1"),
        ({"seed": "x"}, "seed must be an int or None, got 'x'"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MER(**kwargs)


def _mer() -> MER:
    return MER(mem_size=200, mem_batch_size=32, n_batches=2, inner_batch_size=16, beta=0.5, gamma=1.0, seed=1)


@pytest.mark.slow
def test_mer_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    mer = split_digits_average([_mer()])
    assert mer > naive + 0.2, (mer, naive)


def _stream(tmp_path: Path, **kwargs: Any) -> tuple[Any, MER]:
    L.seed_everything(1)
    module, mer = digits_module(), MER(mem_size=60, n_batches=1, inner_batch_size=32, seed=2)
    fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[mer],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(enable_checkpointing=True),
        checkpoint_dir=tmp_path,
        **kwargs,
    )
    return module, mer


@pytest.mark.slow
def test_resume_at_an_experience_boundary_gives_the_same_weights_and_memory(tmp_path: Path) -> None:
    full, full_mer = _stream(tmp_path / "full", max_experiences=3)
    _stream(tmp_path / "part", max_experiences=2)
    resumed, resumed_mer = _stream(
        tmp_path / "part", ckpt_path=tmp_path / "part" / checkpoint_name(1), max_experiences=1
    )
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(full_mer.buffer.indices, resumed_mer.buffer.indices)
    assert full_mer.buffer.seen == resumed_mer.buffer.seen


def test_mer_combines_with_a_penalty_and_a_replay_loader() -> None:
    from lightning_cl.methods import EWC, Replay

    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    callbacks = [
        MER(mem_size=40, n_batches=1, inner_batch_size=32, seed=0),
        EWC(ewc_lambda=1.0),
        Replay(mem_size=40),
    ]
    for k in range(2):
        trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=4), callbacks=callbacks)
        trainer.fit(module, datamodule=bench.train_stream[k])
    # Experience 1 trains with Replay's loader beside MER, and EWC's penalty joined MER's inner losses.
    assert float(trainer.callback_metrics["train/penalty/ewc_epoch"]) > 0.0
    assert trainer.global_step == 4


def test_inner_steps_through_the_module_optimizer_carry_its_momentum() -> None:
    # Avalanche's choice: each sample's step is the optimizer's (SGD, momentum 0.9), then Reptile.
    module = TinyModule([0.2, -0.1])
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5, momentum=0.9)
    mer = MER(
        mem_size=10, mem_batch_size=1, n_batches=1, beta=0.25, gamma=1.0, inner_steps="optimizer", seed=0
    )
    mer._seed, mer._memory = 0, one_sample_memory(1.0, 1)
    batch = (torch.tensor([[1.0]]), torch.tensor([0]), torch.tensor([0]))
    mer.optimisation_step(module, batch, {"current": slice(0, 1)}, optimizer=optimizer)
    theta, inner, buf = [0.2, -0.1], [0.2, -0.1], [0.0, 0.0]
    for k, (x, y) in enumerate(((1.0, 0), (1.0, 1))):
        g = ce_grad(inner, x, y)
        buf = g if k == 0 else [0.9 * b + gi for b, gi in zip(buf, g)]
        inner = [w - 0.5 * b for w, b in zip(inner, buf)]
    expected = [t + 0.25 * (i - t) for t, i in zip(theta, inner)]
    torch.testing.assert_close(module.w.detach().flatten(), torch.tensor(expected))
    momentum = optimizer.state[module.w]["momentum_buffer"].flatten()
    torch.testing.assert_close(momentum, torch.tensor(buf))
    assert module.w.grad is None


def test_inner_steps_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"inner_steps must be one of \('sgd', 'optimizer'\), got 'adam'"):
        MER(inner_steps="adam")
    with pytest.raises(ValueError, match=r"lr=0\.1 is the inner SGD steps' rate; inner_steps='optimizer'"):
        MER(lr=0.1, inner_steps="optimizer")


def test_inner_steps_with_the_optimizer_in_a_fit_fill_its_state_and_count_one_step() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    mer = MER(mem_size=50, n_batches=1, inner_batch_size=16, inner_steps="optimizer", seed=3)
    module = digits_module()
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=3), callbacks=[mer])
    trainer.fit(module, datamodule=bench.train_stream[0])
    assert trainer.global_step == 3
    assert any(trainer.optimizers[0].state.values())  # momentum buffers from the inner steps


def _half_mixed_trainer(init_scale: float, **kwargs: Any) -> Any:
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale, **kwargs)
    )
    return SimpleNamespace(world_size=1, global_rank=0, precision_plugin=plugin), plugin.scaler


def test_under_16_mixed_an_overflowing_step_is_skipped_and_the_scale_backed_off() -> None:
    module = TinyModule([0.2, -0.1])
    module.trainer, scaler = _half_mixed_trainer(3e38)  # loss 3 and gradient -10, times 3e38: overflows
    mer = MER(mem_size=10, n_batches=1, lr=0.5, seed=0)
    mer._seed = 0
    batch = (torch.tensor([[10.0]]), torch.tensor([1]), torch.tensor([0]))
    result = mer.optimisation_step(module, batch, {"current": slice(0, 1)}, optimizer=None)
    torch.testing.assert_close(module.w.detach().flatten(), torch.tensor([0.2, -0.1]))
    assert math.isfinite(float(result.loss))  # a skipped step, not a non-finite loss
    assert scaler.get_scale() == pytest.approx(1.5e38)
    # At a scale that fits, the scaled step equals the plain one.
    module.trainer, scaler = _half_mixed_trainer(2.0**16)
    mer.optimisation_step(module, batch, {"current": slice(0, 1)}, optimizer=None)
    plain = TinyModule([0.2, -0.1])
    mer.optimisation_step(plain, batch, {"current": slice(0, 1)}, optimizer=None)
    torch.testing.assert_close(module.w, plain.w)
    assert scaler.state_dict()["_growth_tracker"] == 1


@pytest.mark.parametrize("method", ["mer", "lamaml"])
def test_16_mixed_on_cpu_scales_the_inner_gradients_with_the_trainers_scaler(method: str) -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lightning_cl.methods import LaMAML

    bench = SplitDigits(n_experiences=5, seed=1)
    owner = (
        MER(mem_size=50, n_batches=1, inner_batch_size=16, seed=3)
        if method == "mer"
        else LaMAML(mem_size=50, n_glances=2, seed=3)
    )
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    module = digits_module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=3), plugins=[plugin], callbacks=[owner])
    trainer.fit(module, datamodule=bench.train_stream[0])
    assert trainer.global_step == 3 and math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    # Every step went through the scaler (Lightning never sees these gradients).
    assert plugin.scaler.state_dict()["_growth_tracker"] == 3
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


def test_a_precision_plugin_the_inner_loop_cannot_follow_is_refused_at_set_up() -> None:
    from lightning.pytorch.plugins.precision import Precision

    class _Sharded(Precision):
        pass

    module = digits_module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(**quiet_trainer_kwargs(), plugins=[_Sharded()], callbacks=[MER(mem_size=10, seed=0)])
    with pytest.raises(
        MisconfigurationException, match=r"MER takes its own gradients .* _Sharded .* use precision"
    ):
        trainer.fit(module, datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
    assert trainer.global_step == 0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("name", ["SI", "RWalk", "GEM", "AGEM"])
@pytest.mark.parametrize("owner", ["MER", "LaMAML"])
def test_methods_of_the_optimizer_step_are_refused_beside_an_owner_writing_the_weights(
    owner: str, name: str
) -> None:
    # They work in on_before_optimizer_step, which MER's and La-MAML's own updates never run.
    import lightning_cl.methods as methods

    bench = SplitDigits(n_experiences=5, seed=1)
    callbacks = [getattr(methods, owner)(mem_size=20, seed=0), getattr(methods, name)()]
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=2), callbacks=callbacks)
    with pytest.raises(
        MisconfigurationException, match=f"{name} cannot be combined with {owner}: .*silently"
    ):
        trainer.fit(digits_module(), datamodule=bench.train_stream[0])


@pytest.mark.parametrize("method", ["PNN", "ExpertGate"])
def test_memory_samples_of_a_frozen_column_or_expert_move_nothing(method: str) -> None:
    # After experience 0 the memory holds samples whose task reaches only frozen weights.
    from functools import partial

    from lightning_cl.methods import PNN, ExpertGate
    from lightning_cl.models import ContinualModule, ExpertGateNetwork, ProgressiveNetwork

    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    if method == "PNN":
        net: nn.Module = ProgressiveNetwork(input_size=64, hidden_size=16)
        structural: Any = PNN()
    else:
        net, structural = ExpertGateNetwork(input_size=64, hidden_size=16, code_size=4), ExpertGate()
    module = ContinualModule(net, optimizer=partial(torch.optim.SGD, lr=0.05))
    mer = MER(mem_size=40, mem_batch_size=8, n_batches=1, inner_batch_size=8, seed=0)
    before: dict[str, torch.Tensor] = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            before.update({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    for k in range(2):
        trainer = L.Trainer(
            **quiet_trainer_kwargs(limit_train_batches=3), callbacks=[structural, mer, Snapshot()]
        )
        trainer.fit(module, datamodule=bench.train_stream[k])
    assert len(mer.buffer) > 0
    moved = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert moved and frozen and not moved & frozen, (moved, frozen)
    assert trainer.global_step == 3


def test_reptile_batches_with_nothing_trainable_reaching_the_loss_moves_nothing() -> None:
    w, frozen = torch.ones(1, requires_grad=True), torch.ones(1)
    one = (torch.ones(1), torch.ones(1), torch.zeros(1))
    reptile_batches(
        {"w": w}, lambda b: ((frozen * b[0] - b[1]) ** 2).mean(), [one], lr=0.5, beta=1.0, gamma=1.0
    )
    assert torch.equal(w, torch.ones(1))
    reptile_batches({}, lambda b: ((frozen * b[0]) ** 2).mean(), [one], lr=0.5, beta=1.0, gamma=1.0)
