"""Lightning's EarlyStopping and learning-rate schedulers across experiences: fresh for each one."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from lightning_cl.data import SplitDigits, benchmark_with_validation_stream
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


class _Epochs(L.Callback):
    """Epochs run per experience and the learning rate at the start of every epoch."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.lrs: list[list[float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.lrs.append([])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.lrs[-1].append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


def _bench() -> Any:
    return benchmark_with_validation_stream(SplitDigits(n_experiences=5, seed=1), 0.2)


def test_early_stopping_stops_each_experience_on_its_own_validation_loss() -> None:
    L.seed_everything(0)
    # An improvement must be worth 10 (never after the first epoch): stop after patience + 1 epochs.
    stopper, probe = EarlyStopping(monitor="val/loss", patience=1, min_delta=10.0), _Epochs()
    fit_stream(
        digits_module(),
        _bench(),
        callbacks=[stopper, probe],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=8, limit_train_batches=3),
        max_experiences=3,
    )
    assert probe.epochs == [2, 2, 2]  # stopped early (of 8 epochs), and each experience started afresh
    assert stopper.wait_count == 0 and stopper.stopped_epoch == 0  # the instance passed in: untouched


def test_the_plain_loop_with_a_new_early_stopping_per_trainer() -> None:
    L.seed_everything(0)
    bench, module, probe = _bench(), digits_module(), _Epochs()
    for experience in bench.train_stream[:2]:
        stopper = EarlyStopping(monitor="val/acc", mode="max", stopping_threshold=0.5)
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=8), callbacks=[stopper, probe])
        trainer.fit(module, datamodule=experience)
    assert probe.epochs == [1, 1]  # two classes: half the validation samples right after one epoch


def test_a_step_schedule_restarts_with_every_experience() -> None:
    L.seed_everything(0)
    probe = _Epochs()
    module = digits_module(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[probe],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=3, limit_train_batches=2),
        max_experiences=2,
    )
    assert probe.lrs == [[0.05, 0.025, 0.0125], [0.05, 0.025, 0.0125]]


@pytest.mark.parametrize("validation", [True, False])
def test_reduce_on_plateau_monitors_the_experience(validation: bool) -> None:
    L.seed_everything(0)
    probe = _Epochs()
    plateau = partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.1, patience=0, threshold=10.0)
    fit_stream(
        digits_module(lr_scheduler=plateau),
        _bench() if validation else SplitDigits(n_experiences=5, seed=1),
        callbacks=[probe],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=3, limit_train_batches=2),
        max_experiences=2,
    )
    # No epoch improves by a factor of 10: every epoch after the first lowers the rate; each
    # experience starts again at the optimizer's rate.
    for lrs in probe.lrs:
        assert lrs == pytest.approx([0.05, 0.005, 0.0005])


def test_a_resumed_run_with_early_stopping_equals_the_uninterrupted_one(tmp_path: Any) -> None:
    # The stream checkpoint holds the ended experience's EarlyStopping state; a resume must not
    # carry it into the next experience (it would compare another experience's loss with it).
    kwargs = stream_trainer_kwargs(max_epochs=6, limit_train_batches=3, enable_checkpointing=True)

    def run(root: str, **fit: Any) -> tuple[Any, _Epochs, EarlyStopping]:
        L.seed_everything(0)
        stopper, probe = EarlyStopping(monitor="val/loss", patience=2), _Epochs()
        results = fit_stream(
            digits_module(),
            _bench(),
            callbacks=[stopper, probe],
            logger=False,
            trainer_kwargs=kwargs,
            checkpoint_dir=root,
            **fit,
        )
        return results, probe, stopper

    whole, whole_probe, _ = run(str(tmp_path / "whole"), max_experiences=4)
    run(str(tmp_path / "cut"), max_experiences=2)
    resumed, resumed_probe, stopper = run(str(tmp_path / "cut"), ckpt_path="last", max_experiences=2)
    assert resumed_probe.epochs == whole_probe.epochs[2:]
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert float(stopper.best_score) == float("inf")  # the instance passed in: untouched
