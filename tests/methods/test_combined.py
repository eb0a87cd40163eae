"""Methods combine in one callbacks list."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import EWC, Replay
from lightning_cl.training import fit_stream
from tests.conftest import stream_trainer_kwargs
from tests.methods.test_replay import digits_module


class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.replay_batches = 0
        self.penalties: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.replay_batches += isinstance(batch, dict) and "replay" in batch

    def watch(self, ewc: EWC) -> None:
        """Record every penalty EWC adds to the loss."""
        penalty = ewc.penalty

        def recorded(*args: Any) -> Any:
            value = penalty(*args)
            if value is not None:
                self.penalties.append(float(value))
            return value

        ewc.penalty = recorded  # type: ignore[method-assign]


def _run(callbacks: list[Any]) -> Any:
    L.seed_everything(1)
    bench = SplitDigits(n_experiences=5, seed=1)
    return fit_stream(
        digits_module(),
        bench,
        callbacks=callbacks,
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=3),
    )


def test_replay_and_ewc_work_together() -> None:
    replay, ewc, recorder = Replay(mem_size=200), EWC(ewc_lambda=50.0), _Recorder()
    recorder.watch(ewc)
    both = _run([replay, ewc, recorder])
    # Both methods acted: memory batches in every step after the first experience, a penalty too.
    assert recorder.replay_batches > 0 and len(recorder.penalties) > 0 and max(recorder.penalties) > 0
    assert len(replay.buffer) == 200 and sorted(ewc.anchors) == [0, 1, 2, 3, 4]
    # The combination gives its own numbers, and keeps Replay's advantage over forgetting.
    replay_only = _run([Replay(mem_size=200)])
    assert not torch.equal(both.matrix, replay_only.matrix)
    assert both.average_accuracy > 0.5
