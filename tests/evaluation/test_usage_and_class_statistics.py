"""Opt-in measures: time, CPU, memory and FLOPs per experience; label repartition; new/old class scores."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_cl.data import LoaderSettings, SplitDigits
from lightning_cl.evaluation import ExperienceUsage, LabelRepartition, NewOldScores
from lightning_cl.methods import Replay
from tests.conftest import digits_module, quiet_trainer_kwargs


def _rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=64))
    module = digits_module()
    usage, labels, scores = ExperienceUsage(), LabelRepartition(), NewOldScores()
    replay = Replay(mem_size=50)
    logger = CSVLogger(tmp_path_factory.mktemp("usage"), name="run")
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(
            **quiet_trainer_kwargs(logger=logger, max_epochs=2, callbacks=[replay, usage, labels, scores])
        )
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    logger.finalize("success")
    return {"bench": bench, "usage": usage, "labels": labels, "scores": scores, "rows": _rows(logger)}


def test_usage_per_experience_and_epoch(run: dict[str, Any]) -> None:
    records = run["usage"].records
    assert len(records) == 2
    # MLP 64-256-10: 2 * (64 * 256 + 256 * 10) FLOPs per sample for the two matrix products.
    assert records[0]["usage/flops_per_sample"] == 2 * (64 * 256 + 256 * 10)
    for r in records:
        assert 0 < r["usage/experience_time_s"] < 120 and r["usage/cpu_time_s"] > 0
        assert r["usage/peak_rss_mb"] > 50  # a Python process with torch holds more than that
        assert "usage/peak_gpu_mb" not in r  # CPU run
    rows = run["rows"]
    assert len([r for r in rows if r.get("usage/epoch_time_s")]) == 4  # 2 experiences x 2 epochs
    assert len([r for r in rows if r.get("usage/experience_time_s")]) == 2


def test_label_repartition_counts_current_and_replayed_labels(run: dict[str, Any]) -> None:
    bench, counts = run["bench"], run["labels"].counts
    first = bench.train_stream[0]
    by_class = torch.bincount(first.dataset.targets)
    assert counts[0] == {c: 2 * int(by_class[c]) for c in first.classes_in_this_experience}  # 2 epochs
    # Experience 1 trains its own classes and replays experience 0's.
    assert set(counts[1]) == set(first.classes_in_this_experience) | set(
        bench.train_stream[1].classes_in_this_experience
    )
    logged = [r for r in run["rows"] if r.get("labels/class2")]
    assert len(logged) == 1 and float(logged[0]["labels/class2"]) == counts[1][2]


def test_new_classes_score_higher_than_old_after_fine_tuning(run: dict[str, Any]) -> None:
    scores = run["scores"]
    assert scores.new_classes == set(run["bench"].train_stream[1].classes_in_this_experience)
    assert scores.old_classes == set(run["bench"].train_stream[0].classes_in_this_experience)
    last = [r for r in run["rows"] if r.get("test/mean_score/old")][-1]
    assert float(last["test/mean_score/new"]) > float(last["test/mean_score/old"])
    first = next(r for r in run["rows"] if r.get("test/mean_score/new"))
    assert not first.get("test/mean_score/old")  # no old classes after the first experience


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak GPU memory needs CUDA")
def test_peak_gpu_memory_on_cuda() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=64))
    usage = ExperienceUsage()
    trainer = L.Trainer(**quiet_trainer_kwargs(accelerator="gpu", callbacks=[usage]))
    trainer.fit(digits_module(), datamodule=bench.train_stream[0])
    assert usage.records[0]["usage/peak_gpu_mb"] > 0
