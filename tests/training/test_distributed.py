"""DDP on CPU: 2 processes with gloo, launched as scripts (never inside the pytest process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.conftest import run_stream_script
from tests.training.stream_script import METHODS as SCRIPT_METHODS

SCRIPT = Path(__file__).with_name("stream_script.py")
ROOT = Path(__file__).resolve().parents[2]
# all of the script's methods
METHODS = tuple(SCRIPT_METHODS)

pytestmark = pytest.mark.distributed


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, single_process_run: tuple[dict[str, Any], Path]
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ddp")
    # 2 processes with batches of 16: the global batch of the one-process run's 32.
    rank0 = run_stream_script(
        "--out", str(tmp / "ddp.json"), "--devices", "2", "--strategy", "ddp", "--batch-size", "16"
    )
    return {
        "rank0": rank0,
        "rank1": json.loads((tmp / "ddp.rank1.json").read_text()),
        "single": single_process_run[0],
    }


@pytest.mark.parametrize("method", METHODS)
def test_cl_state_is_identical_on_every_rank(runs: dict[str, Any], method: str) -> None:
    rank0, rank1 = runs["rank0"][method], runs["rank1"][method]
    assert rank0["checksums"] == rank1["checksums"]  # weights, buffer indices, Fisher
    assert rank0["accuracy_matrix"] == rank1["accuracy_matrix"]
    if method in ("replay", "both", "keep", "all"):
        # The memory does not depend on the number of processes either.
        assert rank0["checksums"]["buffer"] == runs["single"][method]["checksums"]["buffer"]


def test_mas_importance_under_ddp_is_the_whole_experiences(runs: dict[str, Any]) -> None:
    # Each rank computed its shard and the sums were all-reduced: the same as one process on all of it.
    for report in (runs["rank0"], runs["rank1"], runs["single"]):
        assert report["mas"]["mas_check"] is not None and report["mas"]["mas_check"] < 1e-5


# MAS on class-incremental digits swings with the sample order alone (average accuracy 0.20-0.47
# in one process for batch sizes 16-32), so a DDP-vs-single comparison would measure that; its
# DDP check is the exact one above, and the identical state on the ranks. GDumb trains a fresh
# model on its 100 memory samples (20 steps): the same memory on every rank and in one process
# (checked above), but the shards' sample order alone moves a cell by up to 0.47. CWR*'s body
# learns on the first experience's two classes only and is then frozen, so its consolidated head
# swings with the sample order too (in one process, batch sizes 16-32: average 0.31-0.38, cells
# by up to 0.24); its ranks hold the same state (checked above). Generative replay draws other
# generated samples per rank than one process draws (a step's count is the rank's batch), and
# its small VAE's samples of old classes swing the old classes' accuracy (average 0.60 in one
# process against 0.76 under DDP, cells by up to 0.44); its ranks hold the same generator.
# La-MAML looks ahead on each rank's half of the batch (glances of 8 samples, not 16) and averages
# the meta-gradients: another inner loop than one process's, and its slowly learnt new classes
# move a cell by up to 0.29 (average 0.77 under DDP against 0.75; with its meta-gradients clipped at
# 2.0, 0.775 against 0.775, a cell by up to 0.22); its ranks hold the same state.
# AR1 with SI on a batch-norm CNN: batch renormalisation normalises by each rank's batch of 16
# (one process: 32) while its schedule is still batch normalisation's, on top of CWR*'s swings
# (average 0.74 under DDP against 0.62; a cell moves by up to 0.73; with the frozen layers' moments
# fixed after the first experience, 0.80 against 0.71, a cell by up to 0.41); its ranks hold the same state.
# L2P prompts a small randomly initialised frozen ViT whose features barely separate the digits:
# each experience lands near chance or on one class, and the sample order decides which (average
# 0.10 under DDP against 0.17, a cell moves by up to 0.51); its ranks hold the same state.
# MIR scores its candidates by a virtual step on each rank's half of the batch, and RAR attacks
# each memory row towards the nearest sample of the rank's half: both choose other samples than
# one process does from the whole batch (measured: a cell moves by up to 0.21 for MIR, 0.09 for
# RAR); their ranks hold the same state.
_NOT_COMPARED = ("mas", "gdumb", "cwr", "generative_replay", "lamaml", "ar1_si", "l2p", "mir", "rar")


@pytest.mark.parametrize("method", [m for m in METHODS if m not in _NOT_COMPARED])
def test_ddp_matches_a_single_process_with_the_same_global_batch(runs: dict[str, Any], method: str) -> None:
    ddp = torch.tensor(runs["rank0"][method]["accuracy_matrix"])
    single = torch.tensor(runs["single"][method]["accuracy_matrix"])
    assert ddp.shape == single.shape == (5, 5)
    # Online memories keep what the stream gave, in the order it came: another sample order is
    # another memory (MIR's average moved by 0.037, single cells of GSS by up to 0.22).
    online = {"replay_online": 0.15, "mir": 0.2, "gss": 0.3}
    average_bound = 0.05 if method in online else 0.03
    assert (
        abs(runs["rank0"][method]["average_accuracy"] - runs["single"][method]["average_accuracy"])
        <= average_bound
    )
    # Shards see the data in another order: single cells move by a few test samples at most
    # (4 of ~72). GEM's projection switches on and off with the sign of a dot product, so
    # another sample order moves its trajectory (and that of all methods together) further, as
    # does DER's matching of stored logits: up to 8 samples in one cell, while the average and
    # the mean difference stay as close.
    assert float((ddp - single).abs().mean()) <= 0.03
    # RWalk's path scores integrate the whole trajectory, which another sample order changes: one
    # cell of its class-incremental run (0.19 average accuracy either way) moves by 14 samples.
    # AR1's replayed classes re-enter CWR*'s consolidation: one process moves a cell by 0.10 with
    # the batch size alone. MER stepping the module's optimizer carries each rank's momentum over
    # its shard's inner steps (averaged after each step): a cell moves by 0.07 (5 of ~72 samples).
    bounds = {"gem": 0.12, "der": 0.12, "all": 0.12, "rwalk": 0.2, "ar1": 0.12, "mer_optimizer": 0.1}
    bounds.update(online)
    bound = bounds.get(method, 0.06)
    assert float((ddp - single).abs().max()) <= bound


def test_cli_with_the_ddp_config(tmp_path: Path) -> None:
    proc = _run(
        [
            sys.executable,
            "-m",
            "lightning_cl.training.cli",
            "fit",
            "--config",
            str(ROOT / "configs" / "split_digits_replay_ddp.yaml"),
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Accuracy matrix") == 1  # printed by rank 0 only
    (results,) = tmp_path.glob("lightning_logs/version_*/results.json")
    assert len(json.loads(results.read_text())["accuracy_matrix"]) == 5
    assert len(list(results.parent.glob("checkpoints/experience_*.ckpt"))) == 5


def test_a_ddp_run_gives_no_sync_dist_advice_for_the_librarys_keys(tmp_path: Path) -> None:
    # Its evaluation values come from torchmetrics, already synchronised: Lightning's advice to
    # reduce them again (`sync_dist=True`) would only be noise, once per key and run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_cl.training.cli",
            "fit",
            "--config",
            str(ROOT / "configs" / "split_digits_replay_ddp.yaml"),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Accuracy matrix" in output
    assert "It is recommended to use `self.log(" not in output


SPAWN_SCRIPT = """
import sys, lightning as L
from lightning_cl import MLP, ContinualModule, Replay, SplitDigits
if __name__ == "__main__":
    trainer = L.Trainer(strategy=sys.argv[1], devices=2, accelerator="cpu", max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, callbacks=[Replay(10)])
    try:
        module = ContinualModule(MLP(input_size=64, hidden_size=8))
        trainer.fit(module, datamodule=SplitDigits().train_stream[0])
    except Exception as err:
        print("REFUSED:", str(err))
"""


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_plain_loop_refuses_strategies_that_lose_callback_state(tmp_path: Path, strategy: str) -> None:
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN_SCRIPT)
    proc = _run([sys.executable, str(script), strategy], cwd=tmp_path)
    assert "REFUSED:" in proc.stdout, proc.stderr[-3000:]
    assert "hands back only the weights" in proc.stdout and "use strategy='ddp'" in proc.stdout
