"""Every shipped config runs, in a quick form: finite losses and penalties, a results.json."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_cl.training.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
README = (ROOT / "README.md").read_text()
DATA_ENV = "LIGHTNING_CL_DATA"
SLOW_CONFIGS = {"split_digits_generative_replay"}
# Configs whose method needs more epochs than the quick run's one (PackNet retrains for
# `post_prune_epochs` after pruning, and refuses a shorter experience).
QUICK_EPOCHS = {"split_digits_packnet": 3}
QUICK = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_test_batches",
    "2",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.accelerator",
    "cpu",
]


def _needs_mnist(config: Path) -> bool:
    return "mnist" in config.stem


def _mnist_root() -> str:
    root = os.environ.get(DATA_ENV)
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST needed: set {DATA_ENV} to the folder that holds MNIST/raw")
    return root


def _results(out: str) -> Path:
    line = next(line for line in out.splitlines() if line.startswith("results: "))
    return Path(line.removeprefix("results: "))


def _check_run(results_path: Path, config: Path) -> None:
    data = json.loads(results_path.read_text())
    n = yaml.safe_load(config.read_text())["benchmark"]["init_args"]["n_experiences"]
    assert len(data["accuracy_matrix"]) == n
    assert all(v is not None and 0.0 <= v <= 1.0 for row in data["accuracy_matrix"] for v in row)
    with (results_path.parent / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c.startswith(("train/loss", "train/penalty/", "test/loss"))]
    assert any(c.startswith("train/loss") for c in columns)
    values = [(c, float(r[c])) for r in rows for c in columns if r[c] not in ("", None)]
    assert values and all(math.isfinite(v) for _, v in values), [
        cv for cv in values if not math.isfinite(cv[1])
    ]
    methods = [
        c["class_path"].rsplit(".", 1)[1]
        for c in yaml.safe_load(config.read_text())["trainer"].get("callbacks") or []
    ]
    penalised = {"EWC", "SI", "MAS", "LwF"} & set(methods)
    for method in penalised:
        assert any(c.lower() == f"train/penalty/{method.lower()}" for c, _ in values), (method, columns)


@pytest.mark.parametrize(
    "config",
    [
        # The MNIST family reads 60,000 images per config: part of the slow suite. So is generative
        # replay, whose VAE trains 100 epochs per experience whatever the trainer's batch limits.
        pytest.param(
            c,
            id=c.stem,
            marks=[pytest.mark.slow] if _needs_mnist(c) or c.stem in SLOW_CONFIGS else [],
        )
        for c in CONFIGS
        if "ddp" not in c.stem
    ],
)
def test_config_runs_quickly(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    if "lightning_cl.models.PromptedViT" in config.read_text():
        pytest.importorskip("timm")  # L2P's configs need the optional dependency
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(config), *QUICK, "--trainer.default_root_dir", str(tmp_path / "run")]
    if config.stem in QUICK_EPOCHS:
        args += ["--trainer.max_epochs", str(QUICK_EPOCHS[config.stem])]
    if _needs_mnist(config):
        args += ["--benchmark.init_args.root", _mnist_root()]
    main(args)
    _check_run(_results(capsys.readouterr().out), config)


@pytest.mark.distributed
@pytest.mark.parametrize("config", [c for c in CONFIGS if "ddp" in c.stem], ids=lambda c: c.stem)
def test_ddp_config_runs_quickly(config: Path, tmp_path: Path) -> None:
    # DDP reruns the command on every rank: launched as the console script, never inside pytest.
    script = Path(sys.executable).with_name("lightning-cl")
    done = subprocess.run(
        [
            str(script),
            "fit",
            "--config",
            str(config),
            *QUICK,
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _check_run(tmp_path / _results(done.stdout), config)


def _readme_number(config: str) -> float:
    row = next(line for line in README.splitlines() if line.startswith(f"| `configs/{config}`"))
    return float(re.findall(r"\| (0\.\d+) \|", row)[-1])


@pytest.mark.slow
def test_split_digits_ewc_full_run_is_stable_and_beats_naive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs" / "split_digits_ewc.yaml"), "--trainer.accelerator", "cpu"])
    results = tmp_path / _results(capsys.readouterr().out)
    with (results.parent / "metrics.csv").open() as f:
        penalties = [float(r["train/penalty/ewc"]) for r in csv.DictReader(f) if r.get("train/penalty/ewc")]
    assert penalties and all(math.isfinite(p) for p in penalties)
    average = json.loads(results.read_text())["average_accuracy"]
    assert average == pytest.approx(_readme_number("split_digits_ewc.yaml"), abs=0.01)
    assert average > _readme_number("split_digits_naive.yaml") + 0.05
