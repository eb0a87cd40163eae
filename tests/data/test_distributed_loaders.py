"""Under DDP (2 CPU processes, gloo) a loader with workers gives the batches of the main-process loader.

Lightning re-shards only ``DataLoader`` objects under DDP; the experiences' loaders shard
themselves, on both paths, so workers change where batches are read, never which samples they
hold, and a replay memory keeps its number of batches per epoch. Launched as scripts, never
inside the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "stream_script.py"

pytestmark = pytest.mark.distributed


def _ddp_run(tmp: Path, name: str, num_workers: int) -> dict[str, Any]:
    args = ["--out", str(tmp / f"{name}.json"), "--devices", "2", "--strategy", "ddp"]
    args += [
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--methods",
        "naive,replay",
        "--num-workers",
        str(num_workers),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {r: json.loads((tmp / f"{name}.rank{r}.json").read_text()) for r in (0, 1)}


def test_ddp_with_workers_trains_on_the_batches_of_the_main_process(tmp_path: Path) -> None:
    main_process = _ddp_run(tmp_path, "main", num_workers=0)
    workers = _ddp_run(tmp_path, "workers", num_workers=1)
    for method in ("naive", "replay"):
        for rank in (0, 1):
            # Same samples in the same batches on each rank, and as many replay batches per epoch:
            # the weights, the memory and the accuracy matrix agree to the last bit.
            assert workers[rank][method]["checksums"] == main_process[rank][method]["checksums"], method
            assert workers[rank][method]["accuracy_matrix"] == main_process[rank][method]["accuracy_matrix"]
