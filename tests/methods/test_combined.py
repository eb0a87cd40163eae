"""Methods combine in one callbacks list."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_cl.data import SplitDigits
from lightning_cl.methods import AGEM, EWC, GEM, SI, LwF, Replay
from lightning_cl.models import merge_batch
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, stream_trainer_kwargs


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


class _ResumeProbe(L.Callback):
    """At the first training batch after a resume: is SI's running integral there, does LwF distil?"""

    def __init__(self, si: SI, lwf: LwF) -> None:
        self.si, self.lwf = si, lwf
        self.first: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.first is None:
            x, y, t = merge_batch(batch)
            penalty = self.lwf.penalty(pl_module, (x, y, t), pl_module(x, t))
            self.first = {
                "omega": sum(float(o.abs().sum()) for o in self.si.omega.values()),
                "lwf": None if penalty is None else float(penalty),
                "experience": pl_module.current_experience,
            }


def test_all_methods_resume_inside_an_experience(tmp_path: Any) -> None:
    def run(extra: list[Any], **kwargs: Any) -> tuple[Any, list[Any]]:
        L.seed_everything(1)
        methods = [
            Replay(mem_size=50),
            EWC(ewc_lambda=1.0),
            LwF(alpha=1.0),
            SI(si_lambda=0.1),
            AGEM(patterns_per_experience=20, sample_size=16),
            GEM(patterns_per_experience=20),
        ]
        results = fit_stream(
            digits_module(),
            SplitDigits(n_experiences=5, seed=1),
            callbacks=[*methods, *(make(methods) for make in extra)],
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(enable_checkpointing=True, max_epochs=2),
            checkpoint_dir=tmp_path / "ckpt",
            **kwargs,
        )
        return results, methods

    def mid(_: list[Any]) -> ModelCheckpoint:
        every = dict(every_n_train_steps=5, save_top_k=-1)
        return ModelCheckpoint(dirpath=tmp_path / "mid", filename="{step}", **every)

    run([mid], max_experiences=3)
    inside = max((tmp_path / "mid").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    state = torch.load(inside, weights_only=True)
    assert state["lightning_cl"]["current_experience"] == 2

    probes: list[_ResumeProbe] = []

    def probe(methods: list[Any]) -> _ResumeProbe:
        probes.append(_ResumeProbe(methods[3], methods[2]))
        return probes[-1]

    results, (replay, ewc, lwf, si, agem, gem) = run([probe], ckpt_path=inside)
    assert results.trained == [0, 1, 2, 3, 4]
    first = probes[0].first
    assert first is not None and first["experience"] == 2
    assert first["omega"] > 0  # the path integral of experience 2 so far came back with the state
    assert first["lwf"] is not None and first["lwf"] > 0  # the teacher was rebuilt from the state
    assert len(replay.buffer) == 50 and sorted(ewc.anchors) == [0, 1, 2, 3, 4]
    assert lwf.seen_classes == {0: list(range(10))} and si.importance
    assert len(agem.buffer) == 100 and agem.projections > 0
    assert len(gem.buffer) == 100 and gem.projections > 0
    assert results.average_accuracy > 0.5
