"""The speed suite's quick mode runs end to end, so ``benchmarks/`` cannot rot.

A fraction of the data, one round, two processes at a time (times are not compared here: the
targets are measured by the full suite, not by tests).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The quick suite runs every contender in processes of its own: a minute or more.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
CONTENDERS = (
    "handwritten",
    "plain_lightning",
    "plain_lightning-logged",
    "lightning_cl-loop",
    "lightning_cl-fit_stream",
)
METHODS = ("naive", "replay", "ewc")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("bench") / "results.md"
    env = {k: v for k, v in os.environ.items() if k != "AVALANCHE_VENV"}
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--no-avalanche", "--jobs", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_table_has_a_row_per_method_and_contender(quick_report: tuple[str, dict]) -> None:
    text, _ = quick_report
    for method in METHODS:
        for contender in CONTENDERS:
            assert f"| {method} | {contender} |" in text
    assert "torch" in text and "lightning" in text and "logical cores" in text


def test_contenders_did_the_same_work(quick_report: tuple[str, dict]) -> None:
    _, raw = quick_report
    results = raw["results"]
    assert len(results) == len(METHODS) * len(CONTENDERS)
    by_key = {(r["method"], r["contender"]): r for r in results}
    for method in METHODS:
        samples = {by_key[(method, c)]["stream_samples"] for c in CONTENDERS}
        assert len(samples) == 1, f"{method}: contenders trained on different data {samples}"
        for contender in CONTENDERS:
            record = by_key[(method, contender)]
            matrix = record["accuracy_matrix"]
            assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
            # Right after training an experience, its own classes are learnt (chance would be 0.5).
            assert matrix[0][0] > 0.8, (method, contender, matrix[0][0])
            assert 0.1 < record["average_accuracy"] <= 1.0
    # Replay keeps old classes alive; fine-tuning forgets them (class-incremental).
    for contender in CONTENDERS:
        assert (
            by_key[("replay", contender)]["average_accuracy"]
            > by_key[("naive", contender)]["average_accuracy"]
        )


def test_startup_and_scaling_are_reported(quick_report: tuple[str, dict]) -> None:
    text, raw = quick_report
    assert {r["variant"] for r in raw["startup"]} == {"lightning", "lightning_cl"}
    rows = raw["scaling"]["rows"]
    assert [r["experience"] for r in rows] == list(range(len(rows)))
    assert all(r["peak_rss_mb"] > 0 and r["train_s"] > 0 for r in rows)
    assert "## Start-up" in text and "## Scaling" in text and "## Targets" in text
    # lightning_cl against plain Lightning doing the same work, per method and runner.
    for method in METHODS:
        assert f"- {method}, lightning_cl-loop against plain Lightning: train " in text


def test_overhead_compares_the_same_work(tmp_path: Path) -> None:
    # One process, the contenders alternating: every phase and contender timed, and the two
    # evaluations of one model agree on its accuracy.
    out = tmp_path / "overhead.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "overhead.py"),
            "--rounds",
            "1",
            "--fraction",
            "0.05",
            "--clock",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    # The report names the clock it read, and the command that reproduces it.
    assert "--rounds 1 --clock cpu`" in text and "CPU times of the process" in text, text
    for phase in ("train", "eval"):
        for contender in ("lightning_cl", "plain_lightning", "plain_lightning-logged"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {phase} | {contender} |"))
            assert float(row.split("|")[3]) > 0
    match = re.search(r"accuracy is ([0-9.]+) by lightning_cl and ([0-9.]+) by the plain module", text)
    assert match is not None, text
    assert float(match.group(1)) == pytest.approx(float(match.group(2)), abs=1e-6)
    assert 0.0 < float(match.group(1)) <= 1.0


def test_overhead_stream_times_a_method_over_the_whole_stream(tmp_path: Path) -> None:
    # --stream: the suite's whole stream of one method, the three contenders in one process;
    # both plain contenders do the same training (same seed, same batches), logged or not.
    out = tmp_path / "overhead_replay.md"
    script = str(ROOT / "benchmarks" / "overhead.py")
    args = [sys.executable, script, "--stream", "replay", "--rounds", "1", "--fraction", "0.05"]
    proc = subprocess.run(
        [*args, "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "the whole stream, replay" in text
    for phase in ("train", "eval"):
        for contender in ("lightning_cl", "plain_lightning", "plain_lightning-logged"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {phase} | {contender} |"))
            assert float(row.split("|")[3]) > 0
    acc = dict(re.findall(r"(lightning_cl|plain_lightning-logged|plain_lightning) ([0-9]\.[0-9]+)", text))
    assert set(acc) == {"lightning_cl", "plain_lightning", "plain_lightning-logged"}, text
    assert acc["plain_lightning"] == acc["plain_lightning-logged"]
    assert all(0.0 < float(a) <= 1.0 for a in acc.values())
    bad = subprocess.run(
        [*args, "--profile"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert bad.returncode == 2 and "are separate runs" in bad.stderr
    clock = subprocess.run(
        [*args, "--clock", "gpu"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert clock.returncode == 2 and "invalid choice: 'gpu'" in clock.stderr


def test_overhead_eval_parts_take_the_same_evaluation_apart(tmp_path: Path) -> None:
    # --eval-parts: every variant (float images, self.log a no-op) evaluates the same model to
    # the same accuracies, so the timings differ by the work left out alone.
    out = tmp_path / "eval_parts.md"
    script = str(ROOT / "benchmarks" / "overhead.py")
    args = [sys.executable, script, "--eval-parts", "--rounds", "1", "--fraction", "0.05", "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")][2:]  # no header
    assert len(rows) == 8 and rows[-1][1].strip() == "lightning_cl, float images, no self.log", text
    assert all(float(r[2]) > 0 for r in rows)
    same = re.search(r"Same work: mean accuracy over the 5 test experiences (.*)\.$", text, re.M)
    assert same is not None, text
    values = {float(v) for v in re.findall(r" ([01]\.[0-9]{6})", same.group(1))}
    assert len(values) == 1 and 0.0 < values.pop() <= 1.0, same.group(1)


def test_attribution_puts_own_time_with_the_package_that_spends_it() -> None:
    # Own time by the file a function is defined in; a built-in that is no torch kernel goes to
    # its caller's package, a torch kernel called by name stays "torch kernels" (an operator such
    # as `a @ b` is no call the profiler sees: it counts to the function that uses it); nothing is
    # lost or counted twice.
    import cProfile
    import pstats

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import overhead
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch

    source = "def work(a):\n    for _ in range(30):\n"
    source += "        sorted(range(20000), key=abs)\n        torch.mm(a, a)\n"
    namespace: dict = {"__name__": "fake", "torch": torch}
    exec(compile(source, "/site-packages/lightning_cl/fake.py", "exec"), namespace)
    a = torch.randn(64, 64)
    prof = cProfile.Profile()
    prof.enable()
    namespace["work"](a)
    prof.disable()
    stats = pstats.Stats(prof)
    totals = overhead.attribute_stats(stats)
    assert set(totals) == set(overhead.OWNERS)
    table = stats.stats  # type: ignore[attr-defined]
    own_total = sum(v[2] for v in table.values())
    assert sum(totals.values()) == pytest.approx(own_total, rel=1e-9)

    def own(name: str) -> float:
        return sum(v[2] for (_, _, fn), v in table.items() if name in fn)

    # `sorted` (a built-in called only from the fake lightning_cl file) counts to it; torch.mm,
    # called from there too, stays a torch kernel.
    fake = sum(v[2] for (f, _, _), v in table.items() if f.endswith("lightning_cl/fake.py"))
    assert own("builtins.sorted") > 0 and own("torch.mm") > 0
    assert totals["lightning_cl"] == pytest.approx(fake + own("builtins.sorted"), rel=1e-6)
    assert totals["torch kernels"] == pytest.approx(own("torch.mm"), rel=1e-6)
    assert totals["Lightning"] == totals["torchmetrics"] == 0.0


def test_overhead_attribute_sums_each_contenders_time_by_package(tmp_path: Path) -> None:
    # --attribute: each contender's whole stream profiled per phase; lightning_cl's own code shows
    # only in lightning_cl's column, and each table's total is the sum of its owners.
    out = tmp_path / "attribute.md"
    script = str(ROOT / "benchmarks" / "overhead.py")
    args = [sys.executable, script, "--attribute", "naive", "--rounds", "1", "--fraction", "0.05"]
    proc = subprocess.run(
        [*args, "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    owners = {
        "lightning_cl",
        "torchmetrics",
        "Lightning",
        "torch (Python)",
        "torch kernels",
        "contender",
        "Python",
    }
    for phase in ("train", "eval"):
        section = text.split(f"## naive, {phase}\n")[1].split("\n## ")[0]
        rows = {}
        for line in section.splitlines():
            cells = [c.strip() for c in line.split("|")[1:-1]]
            if len(cells) == 5 and cells[0] in owners | {"total"}:
                # (seconds, thousands of calls) for lightning_cl, plain, plain logged
                rows[cells[0]] = [tuple(float(v) for v in c.split(", ")) for c in cells[1:4]]
        assert set(rows) == owners | {"total"}, section
        for column in range(3):
            for kind in range(2):
                parts = sum(v[column][kind] for k, v in rows.items() if k != "total")
                # each cell is rounded: 3 decimals of seconds, 1 of thousands of calls
                assert rows["total"][column][kind] == pytest.approx(parts, abs=(0.004, 0.4)[kind])
            assert rows["total"][column][0] > 0 and rows["Lightning"][column][1] > 0
        (_, ours_calls), (plain_s, plain_calls), (logged_s, logged_calls) = rows["lightning_cl"]
        assert ours_calls > 0 and plain_s == plain_calls == logged_s == logged_calls == 0.0
        assert "of lightning_cl's profiled" in section
    bad = subprocess.run(
        [*args, "--eval-parts"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert bad.returncode == 2 and "are separate runs" in bad.stderr
