"""Metrics under DDP (2 CPU processes, gloo) give the values of one process: torchmetrics synchronises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("ddp_metrics_script.py")

pytestmark = pytest.mark.distributed


def _run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ddp_metrics")
    _run(["--out", str(tmp / "single.json")])
    _run(["--out", str(tmp / "ddp.json"), "--devices", "2", "--strategy", "ddp"])
    return {
        name: json.loads((tmp / f"{name}.json").read_text()) for name in ("single", "ddp.rank0", "ddp.rank1")
    }


def test_two_processes_give_the_values_of_one(reports: dict[str, Any]) -> None:
    single = reports["single"]["values"]
    expected = {
        f"test/{m}/{w}" for m in ("acc", "loss", "f1", "top2") for w in ("exp0", "exp1", "exp2", "stream")
    }
    assert expected <= set(single)
    assert 0.1 < single["test/f1/stream"] < 0.9 and 0.1 < single["test/acc/stream"] < 0.9
    for rank in ("ddp.rank0", "ddp.rank1"):
        values = reports[rank]["values"]
        assert set(values) == set(single)
        for key, value in single.items():
            assert values[key] == pytest.approx(value, abs=1e-6), key


def test_matrices_are_the_same_on_every_rank_and_in_one_process(reports: dict[str, Any]) -> None:
    single = reports["single"]["results"]["metrics"]
    for rank in ("ddp.rank0", "ddp.rank1"):
        metrics = reports[rank]["results"]["metrics"]
        assert list(metrics) == ["accuracy", "loss", "f1", "top2"] == list(single)
        for name, m in metrics.items():
            assert m["initial"] == pytest.approx(single[name]["initial"], abs=1e-6), name


def test_no_sync_dist_advice_for_the_librarys_keys(reports: dict[str, Any]) -> None:
    assert reports["ddp.rank0"]["sync_dist_advice"] == reports["ddp.rank1"]["sync_dist_advice"] == []
