"""Runs of ``stream_script.py`` shared by the distributed and the resume tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("stream_script.py")


def run_stream_script(*args: str, timeout: int = 2400) -> dict[str, Any]:
    """Runs the script in a fresh process; returns the report of ``--out`` (rank 0's under DDP)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(args[args.index("--out") + 1])
    if "--devices" in args and int(args[args.index("--devices") + 1]) > 1:
        out = out.with_suffix(".rank0.json")
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def single_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Every method of the script, one process, batches of 32, a checkpoint after each experience.

    The uninterrupted run of the resume test and the one-process reference of the DDP test
    (checkpointing changes nothing in the training). Returns the report and the checkpoint
    directory (``<dir>/<method>/experience_<k>.ckpt``).
    """
    tmp = tmp_path_factory.mktemp("uninterrupted")
    report = run_stream_script("--out", str(tmp / "full.json"), "--ckpt-dir", str(tmp / "ckpt"))
    return report, tmp / "ckpt"
