"""What ContinualModule refuses or stops on, and what it leaves unchanged when it does."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ContinualCallback, Replay
from lightning_cl.models import MLP, ContinualModule, NonFiniteLossError
from tests.conftest import digits_module, quiet_trainer_kwargs


class _BlowsUp(ContinualCallback):
    """A penalty that turns ``inf`` at one step of the stream (0 before)."""

    def __init__(self, at_step: int, value: float = float("inf")) -> None:
        self.at_step, self.value = at_step, value

    def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> torch.Tensor:
        bad = module.global_step_all >= self.at_step
        return logits.sum() * 0.0 + (self.value if bad else 0.0)


def _weights(module: ContinualModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


class _Snapshot(L.Callback):
    """The weights after every optimizer step."""

    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.after.append(_weights(pl_module))


def test_a_non_finite_penalty_stops_with_experience_step_and_term() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, snapshot = digits_module(), _Snapshot()
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[_BlowsUp(at_step=4), snapshot])
    with pytest.raises(NonFiniteLossError, match=r"experience 0, step 4 .* penalty of _blowsup = inf"):
        trainer.fit(module, datamodule=bench.train_stream[0])
    # Stopped before the optimizer step: the weights are those after the last good step.
    assert len(snapshot.after) == 4
    assert torch.equal(_weights(module), snapshot.after[-1])


def test_a_nan_task_loss_is_named_as_the_task_loss() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=16))
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 0 .*task loss = nan"):
        L.Trainer(**quiet_trainer_kwargs()).fit(module, datamodule=bench.train_stream[0])


def test_on_nonfinite_warn_goes_on_and_warns_once() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module(on_nonfinite="warn")
    trainer = L.Trainer(
        **quiet_trainer_kwargs(max_epochs=2), callbacks=[_BlowsUp(at_step=2, value=float("nan"))]
    )
    with pytest.warns(UserWarning, match="non-finite training loss") as record:
        trainer.fit(module, datamodule=bench.train_stream[0])
    assert trainer.global_step > 2
    assert sum("non-finite" in str(w.message) for w in record) == 1


def test_on_nonfinite_is_checked() -> None:
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of \('raise', 'warn'\), got 'ignore'"):
        digits_module(on_nonfinite="ignore")


def test_a_reused_trainer_is_refused_before_anything_changes() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, replay = digits_module(), Replay(mem_size=40, seed=0)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[replay])
    trainer.fit(module, datamodule=bench.train_stream[0])
    trainer.test(module, datamodule=bench.test_stream, verbose=False)
    memory, weights, rows = replay.buffer.indices.clone(), _weights(module), module.results.trained
    with pytest.raises(
        MisconfigurationException, match=r"already run a fit \(2 epochs, \d+ steps\).*new L.Trainer"
    ):
        trainer.fit(module, datamodule=bench.train_stream[1])
    assert module.current_experience == 0 and module.results.trained == rows == [0]
    assert torch.equal(replay.buffer.indices, memory) and torch.equal(_weights(module), weights)
    # A new Trainer trains the next experience as usual.
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=bench.train_stream[1])
    assert module.current_experience == 1


def test_a_model_built_for_other_inputs_is_named_at_setup() -> None:
    bench = SplitDigits(n_experiences=5)
    module = ContinualModule(MLP(num_classes=10))  # 784 inputs; the digits have 64
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\) \(64 values\).*input_size=64"):
        L.Trainer(**quiet_trainer_kwargs()).fit(module, datamodule=bench.train_stream[0])


def test_a_benchmark_passed_as_datamodule_says_what_to_pass() -> None:
    bench = SplitDigits(n_experiences=5)
    trainer = L.Trainer(**quiet_trainer_kwargs())
    with pytest.raises(
        MisconfigurationException, match=r"not a datamodule.*datamodule=experience.*fit_stream"
    ):
        trainer.fit(digits_module(), datamodule=bench)  # type: ignore[arg-type]


def test_penalties_are_logged_per_epoch(tmp_path: Path) -> None:
    class Constant(ContinualCallback):
        def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> torch.Tensor:
            return logits.sum() * 0.0 + 0.25

    bench = SplitDigits(n_experiences=5)
    logger = CSVLogger(tmp_path, name="run")
    kwargs = quiet_trainer_kwargs(max_epochs=3, logger=logger, log_every_n_steps=1000)
    L.Trainer(**kwargs, callbacks=[Constant()]).fit(digits_module(), datamodule=bench.train_stream[0])
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    values = [float(r["train/penalty/constant_epoch"]) for r in rows if r.get("train/penalty/constant_epoch")]
    assert values == pytest.approx([0.25, 0.25, 0.25])


def test_a_too_narrow_output_names_the_width_the_whole_benchmark_needs() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = ContinualModule(MLP(num_classes=5, input_size=64, hidden_size=16, drop_rate=0.0))
    needed = max(bench.train_stream[0].classes_in_this_experience) + 1
    with pytest.raises(
        ValueError,
        match=rf"needs at least {needed} outputs, and 10 for the benchmark's 10 classes \(for MLP: "
        r"num_classes=10",
    ):
        L.Trainer(**quiet_trainer_kwargs()).fit(module, bench.train_stream[0])
