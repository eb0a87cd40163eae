"""Mixed precision works with the methods; the same seed gives the same results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import AGEM, EWC, GEM, MAS, SI, LwF, Replay
from lightning_cl.training import fit_stream
from lightning_cl.training.cli import main
from tests.conftest import digits_module, stream_trainer_kwargs

ROOT = Path(__file__).resolve().parents[2]


class _PenaltyDtype(L.Callback):
    def __init__(self, ewc: EWC) -> None:
        self.ewc = ewc
        self.dtypes: set[torch.dtype] = set()
        self.logits_dtypes: set[torch.dtype] = set()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.ewc.anchors:
            return
        x, y, t = batch["current"] if isinstance(batch, dict) else batch
        with trainer.precision_plugin.forward_context():
            logits = pl_module(x, t)
            self.logits_dtypes.add(logits.dtype)
            self.dtypes.add(self.ewc.penalty(pl_module, (x, y, t), logits).dtype)


def test_bf16_mixed_with_replay_and_ewc() -> None:
    L.seed_everything(1)
    replay, ewc = Replay(mem_size=200), EWC(ewc_lambda=1.0)
    probe = _PenaltyDtype(ewc)
    results = fit_stream(
        digits_module(),
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[replay, ewc, probe],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=3, precision="bf16-mixed"),
    )
    assert probe.logits_dtypes == {torch.bfloat16}  # autocast was on
    assert probe.dtypes == {torch.float32}  # the penalty is not computed in bf16
    assert all(torch.isfinite(f).all() for a in ewc.anchors.values() for f in a["fisher"].values())
    assert results.average_accuracy > 0.7


def test_bf16_mixed_with_every_method() -> None:
    # Penalties (LwF, SI, MAS) inside autocast, gradient surgery (GEM, A-GEM) on the unscaled
    # gradients after it: every method's state stays finite and the combination still learns.
    L.seed_everything(1)
    lwf, si, mas = LwF(alpha=1.0), SI(si_lambda=0.1), MAS(lambda_reg=0.01)
    agem, gem = AGEM(patterns_per_experience=40, sample_size=32), GEM(patterns_per_experience=40)
    results = fit_stream(
        digits_module(),
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[Replay(mem_size=200), lwf, si, mas, agem, gem],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=2, precision="bf16-mixed"),
    )
    for importance in (si.importance, mas.importance):
        assert importance and all(torch.isfinite(v).all() for v in importance.values())
    assert agem.projections > 0 and gem.projections > 0
    assert lwf.teacher is not None and next(lwf.teacher.parameters()).dtype == torch.float32
    assert results.average_accuracy > 0.7


@pytest.mark.parametrize("config", ["split_digits_replay.yaml", "split_digits_ewc.yaml"])
def test_same_seed_same_results_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str) -> None:
    monkeypatch.chdir(tmp_path)
    texts = []
    for run in ("a", "b"):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / config),
                "--trainer.max_epochs",
                "2",
                "--trainer.default_root_dir",
                str(tmp_path / run),
            ]
        )
        (path,) = (tmp_path / run).glob("lightning_logs/version_*/results.json")
        texts.append(path.read_text())
    assert texts[0] == texts[1]
    assert len(json.loads(texts[0])["accuracy_matrix"]) == 5
