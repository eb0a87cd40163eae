"""Run the whole speed suite and write its markdown report (issue 5).

One command::

    python benchmarks/run.py                      # 3 rounds, Avalanche if it can be had
    python benchmarks/run.py --quick              # CI: 5% of the data, one round, no Avalanche
    python benchmarks/run.py --rounds 5 --out benchmarks/results.md --avalanche-venv /path/to/venv

Every contender runs in a fresh process (``python benchmarks/contender_*.py ...``) with one torch
thread; within a round the contenders of a method alternate, the order rotating from round to
round. The report holds, per method and contender, the min and median of total, train and eval
time, training samples per second, the final average accuracy and the ratio to the hand-written
loop; then start-up (import and first training batch, lightning_cl versus plain Lightning) and the
scaling run (time and peak memory per experience of a 20-experience permuted stream with Replay).

Avalanche runs in its own virtual environment: ``--avalanche-venv`` or ``$AVALANCHE_VENV``,
else ``benchmarks/.venv-avalanche``, created with ``pip install avalanche-lib==0.6.0`` when
missing (``--no-avalanche`` skips it; in ``--quick`` mode it runs only with ``--avalanche``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import class_order_for_seed, default_data_root, has_mnist  # noqa: E402

METHODS = ("naive", "replay", "ewc")
CONTENDERS = (
    "handwritten",
    "plain_lightning",
    "plain_lightning-logged",
    "lightning_cl-loop",
    "lightning_cl-fit_stream",
    "avalanche",
)
AVALANCHE_REQUIREMENT = "avalanche-lib==0.6.0"
DEFAULT_AVALANCHE_VENV = HERE / ".venv-avalanche"

# Targets of issue 5: ratio of medians to the hand-written loop of the same method.
TRAIN_TARGETS = {"naive": 1.05, "replay": 1.15, "ewc": 1.15}
EVAL_TARGET = 1.2
# Targets of issue 16: ratio of medians to plain Lightning doing the same work (Naive); Replay and
# EWC no further above plain Lightning than Naive is.
PLAIN_TRAIN_TARGET = 1.03
PLAIN_EVAL_TARGET = 1.05
AVALANCHE_SPEEDUP_TARGET = 2.0
STARTUP_TARGET_S = 0.5


@dataclass
class Suite:
    """Settings of one run of the suite."""

    data: str | None
    fraction: float
    rounds: int
    methods: list[str]
    avalanche_python: Path | None
    avalanche_note: str
    scaling_experiences: int
    scaling_fraction: float
    scaling_test_fraction: float
    startup_rounds: int
    log_dir: Path
    jobs: int = 1
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- running


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def run_script(
    python: str | Path, args: Sequence[str], log: Path, timeout: float = 3600
) -> dict[str, Any] | None:
    """Run ``python args... --json FILE`` in a fresh process; its JSON record, or ``None`` on failure."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    try:
        with log.open("a") as stream:
            stream.write(f"\n$ {python} {' '.join(args)}\n")
            stream.flush()
            start = time.perf_counter()
            proc = subprocess.run(
                [str(python), *args, "--json", str(out)],
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=_env(),
                cwd=HERE.parent,
                timeout=timeout,
                check=False,
            )
            wall = time.perf_counter() - start
        if proc.returncode != 0 or not out.read_text().strip():
            return None
        record = json.loads(out.read_text())
        record["process_wall_s"] = wall
        return record
    except subprocess.TimeoutExpired:
        return None
    finally:
        out.unlink(missing_ok=True)


def contender_command(contender: str, method: str, suite: Suite) -> tuple[str | Path, list[str]]:
    """The interpreter and arguments that run ``contender`` on ``method``."""
    common = ["--method", method, "--fraction", str(suite.fraction), "--class-order", _order_text()]
    if suite.data:
        common += ["--data", suite.data]
    if contender == "handwritten":
        return sys.executable, [str(HERE / "contender_handwritten.py"), *common]
    if contender.startswith("plain_lightning"):
        logged = ["--log"] if contender.endswith("-logged") else []
        return sys.executable, [str(HERE / "contender_plain_lightning.py"), *logged, *common]
    if contender.startswith("lightning_cl-"):
        runner = contender.split("-", 1)[1]
        return sys.executable, [str(HERE / "contender_lightning_cl.py"), "--runner", runner, *common]
    assert suite.avalanche_python is not None
    return suite.avalanche_python, [str(HERE / "contender_avalanche.py"), *common]


def _order_text() -> str:
    return ",".join(str(c) for c in lightning_cl_class_order())


def lightning_cl_class_order() -> list[int]:
    """``SplitMNIST(seed=1).class_order`` (lightning_cl's ``resolve_class_order``), checked against ours."""
    from lightning_cl.data.scenarios import resolve_class_order

    order = resolve_class_order(range(10), seed=1)
    if order != class_order_for_seed(1):
        raise RuntimeError(
            f"lightning_cl's class order {order} differs from the suite's {class_order_for_seed(1)}"
        )
    return order


def run_contenders(suite: Suite) -> None:
    """``rounds`` rounds; in each, every method's contenders alternate in a rotating order.

    With ``suite.jobs > 1`` that many processes run at once (for smoke tests only: they compete
    for the cores, so their times are not comparable).
    """
    contenders = [c for c in CONTENDERS if c != "avalanche" or suite.avalanche_python is not None]
    tasks = []
    for r in range(suite.rounds):
        for method in suite.methods:
            shift = r % len(contenders)
            tasks += [(r + 1, method, c) for c in contenders[shift:] + contenders[:shift]]

    def one(task: tuple[int, str, str]) -> None:
        round_, method, contender = task
        python, args = contender_command(contender, method, suite)
        record = run_script(python, args, suite.log_dir / f"{contender}-{method}-{round_}.log")
        if record is None:
            suite.failures.append(f"round {round_}: {contender} {method} failed (see {suite.log_dir})")
            print(f"  round {round_}: {contender:24s} {method:7s} FAILED", flush=True)
            return
        record["round"] = round_
        suite.results.append(record)
        print(
            f"  round {round_}: {contender:24s} {method:7s} total {record['total_s']:7.2f}s "
            f"train {record['train_s']:7.2f}s eval {record['eval_s']:6.2f}s "
            f"acc {record['average_accuracy']:.3f}",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=max(1, suite.jobs)) as pool:
        list(pool.map(one, tasks))


def run_startup(suite: Suite) -> list[dict[str, Any]]:
    """Alternate the two start-up variants, ``startup_rounds`` times each."""
    rows = []
    for r in range(suite.startup_rounds):
        variants = ("lightning", "lightning_cl") if r % 2 == 0 else ("lightning_cl", "lightning")
        for variant in variants:
            args = [str(HERE / "startup.py"), "--variant", variant, "--fraction", str(suite.fraction)]
            if suite.data:
                args += ["--data", suite.data]
            record = run_script(sys.executable, args, suite.log_dir / "startup.log")
            if record is None:
                suite.failures.append(f"start-up {variant} round {r + 1} failed")
                continue
            rows.append(record)
            print(f"  start-up {variant:13s} first batch {record['first_batch_s']:.2f}s", flush=True)
    return rows


def run_scaling(suite: Suite) -> dict[str, Any] | None:
    """The permuted-stream scaling run, in one fresh process."""
    args = [
        str(HERE / "scaling.py"),
        "--experiences",
        str(suite.scaling_experiences),
        "--fraction",
        str(suite.scaling_fraction),
        "--test-fraction",
        str(suite.scaling_test_fraction),
    ]
    if suite.data:
        args += ["--data", suite.data]
    record = run_script(sys.executable, args, suite.log_dir / "scaling.log")
    if record is None:
        suite.failures.append("scaling run failed")
    return record


# ---------------------------------------------------------------------------------------- Avalanche


def avalanche_python(venv: Path, create: bool, log: Path) -> tuple[Path | None, str]:
    """The Avalanche venv's interpreter (created on demand), or ``None`` and why not."""
    python = venv / "bin" / "python"
    if not python.exists():
        if not create:
            return None, f"no virtual environment at {venv}"
        print(f"creating {venv} and installing {AVALANCHE_REQUIREMENT} (several minutes) ...", flush=True)
        with log.open("a") as stream:
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "--upgrade", "pip"],
                [str(python), "-m", "pip", "install", AVALANCHE_REQUIREMENT],
            ]
            for step in steps:
                try:
                    done = subprocess.run(
                        step, stdout=stream, stderr=subprocess.STDOUT, timeout=1800, check=False
                    )
                except (OSError, subprocess.TimeoutExpired) as err:
                    return None, f"installing {AVALANCHE_REQUIREMENT} failed: {err}"
                if done.returncode != 0:
                    return None, f"`{' '.join(step)}` failed (see {log})"
    probe = subprocess.run(
        [str(python), "-c", "import avalanche, torch; print(avalanche.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None, f"avalanche does not import in {venv}: {probe.stderr.strip().splitlines()[-1:]}"
    avalanche_version, torch_version = probe.stdout.split()
    return python, f"avalanche {avalanche_version} (torch {torch_version}) in {venv}"


# ---------------------------------------------------------------------------------------- report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(suite: Suite) -> dict[str, str]:
    """Machine, versions and date for the report's header."""
    import lightning
    import torch

    import lightning_cl

    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{_cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} "
        f"{platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "lightning_cl": lightning_cl.__version__,
        "avalanche": suite.avalanche_note,
    }


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else float("nan")


def summarize(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Min and median of each measure, per (method, contender)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["method"], r["contender"]), []).append(r)
    summary = {}
    for key, runs in groups.items():
        stats: dict[str, float] = {"runs": len(runs)}
        for measure in ("total_s", "train_s", "eval_s"):
            values = [r[measure] for r in runs]
            stats[f"{measure}_min"] = min(values)
            stats[f"{measure}_med"] = statistics.median(values)
        stats["samples_per_s"] = runs[0]["stream_samples"] / stats["train_s_med"]
        stats["accuracy"] = statistics.median(r["average_accuracy"] for r in runs)
        summary[key] = stats
    return summary


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def contender_tables(
    methods: Sequence[str], summary: dict[tuple[str, str], dict[str, float]]
) -> tuple[list[str], list[str]]:
    """The main table and the list of target verdicts (on ratios of medians; ratios of minima beside)."""
    lines = [
        "| method | contender | runs | total min / med (s) | train min / med (s) | eval min / med (s) | "
        "train samples/s | avg acc | total / hand, med (min) | train / hand | eval / hand | "
        "train / plain Lightning | eval / plain Lightning |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for method in methods:
        hand = summary.get((method, "handwritten"))
        plain = summary.get((method, "plain_lightning"))
        for contender in CONTENDERS:
            s = summary.get((method, contender))
            if s is None:
                continue
            ratios = ["-", "-", "-"]
            if hand is not None:
                ratios = [
                    f"{_fmt(_ratio(s[f'{m}_med'], hand[f'{m}_med']))}x "
                    f"({_fmt(_ratio(s[f'{m}_min'], hand[f'{m}_min']))}x)"
                    for m in ("total_s", "train_s", "eval_s")
                ]
            ratios += ["-", "-"]
            if plain is not None:
                ratios[3:] = [
                    f"{_fmt(_ratio(s[f'{m}_med'], plain[f'{m}_med']))}x "
                    f"({_fmt(_ratio(s[f'{m}_min'], plain[f'{m}_min']))}x)"
                    for m in ("train_s", "eval_s")
                ]
            lines.append(
                f"| {method} | {contender} | {int(s['runs'])} | "
                f"{_fmt(s['total_s_min'])} / {_fmt(s['total_s_med'])} | "
                f"{_fmt(s['train_s_min'])} / {_fmt(s['train_s_med'])} | {_fmt(s['eval_s_min'])} / "
                f"{_fmt(s['eval_s_med'])} | {s['samples_per_s']:,.0f} | {_fmt(s['accuracy'], 3)} | "
                + " | ".join(ratios)
                + " |"
            )
        if hand is None:
            continue
        for contender in ("lightning_cl-loop", "lightning_cl-fit_stream"):
            s = summary.get((method, contender))
            if s is None:
                continue
            total = _ratio(s["total_s_med"], hand["total_s_med"])
            total_min = _ratio(s["total_s_min"], hand["total_s_min"])
            train = _ratio(s["train_s_med"], hand["train_s_med"])
            evaluation = _ratio(s["eval_s_med"], hand["eval_s_med"])
            target = TRAIN_TARGETS[method]
            verdicts.append(
                f"- {method}, {contender}: total {total:.2f}x hand-written (target <= {target}x: "
                f"{_check(total <= target)}; ratio of minima {total_min:.2f}x); train {train:.2f}x; "
                f"eval {evaluation:.2f}x "
                f"(target <= {EVAL_TARGET}x: {_check(evaluation <= EVAL_TARGET)})"
            )
            avalanche = summary.get((method, "avalanche"))
            if avalanche is not None and method != "naive":
                speedup = _ratio(avalanche["total_s_med"], s["total_s_med"])
                verdicts.append(
                    f"  - {speedup:.2f}x faster than Avalanche (target >= {AVALANCHE_SPEEDUP_TARGET}x: "
                    f"{_check(speedup >= AVALANCHE_SPEEDUP_TARGET)})"
                )
    verdicts += plain_lightning_verdicts(methods, summary)
    return lines, verdicts


def plain_lightning_verdicts(
    methods: Sequence[str], summary: dict[tuple[str, str], dict[str, float]]
) -> list[str]:
    """Issue 16's targets: lightning_cl's own cost on top of plain Lightning doing the same work."""
    verdicts = []
    references = {
        "plain_lightning": "plain Lightning",
        "plain_lightning-logged": "plain Lightning logging as much",
    }
    for contender, reference in itertools.product(
        ("lightning_cl-loop", "lightning_cl-fit_stream"), references
    ):
        label = references[reference]
        ratios = {}
        for method in methods:
            s, plain = summary.get((method, contender)), summary.get((method, reference))
            if s is not None and plain is not None:
                ratios[method] = {
                    m: _ratio(s[f"{m}_med"], plain[f"{m}_med"]) for m in ("train_s", "eval_s", "total_s")
                }
        naive = ratios.get("naive")
        for method, r in ratios.items():
            line = f"- {method}, {contender} against {label}: train {r['train_s']:.2f}x"
            if method == "naive":
                line += (
                    f" (target <= {PLAIN_TRAIN_TARGET}x: {_check(r['train_s'] <= PLAIN_TRAIN_TARGET)}), "
                    f"eval {r['eval_s']:.2f}x (target <= {PLAIN_EVAL_TARGET}x: "
                    f"{_check(r['eval_s'] <= PLAIN_EVAL_TARGET)})"
                )
            elif naive is not None:
                line += (
                    f" (target: no more than Naive's {naive['train_s']:.2f}x: "
                    f"{_check(r['train_s'] <= naive['train_s'])}), eval {r['eval_s']:.2f}x"
                )
            verdicts.append(line)
    return verdicts


def startup_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Start-up table (min / median per variant) and its verdict."""
    lines = [
        "| variant | runs | import min / med (s) | first training batch min / med (s) | "
        "process wall min / med (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    medians: dict[str, float] = {}
    for variant in ("lightning", "lightning_cl"):
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        cells = []
        for key in ("import_s", "first_batch_s", "process_wall_s"):
            values = [r[key] for r in runs]
            cells.append(f"{min(values):.2f} / {statistics.median(values):.2f}")
        medians[variant] = statistics.median(r["first_batch_s"] for r in runs)
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    verdicts = []
    if len(medians) == 2:
        gap = medians["lightning_cl"] - medians["lightning"]
        verdicts.append(
            f"- start-up: lightning_cl reaches its first training batch {gap:+.2f} s after plain Lightning "
            f"(median; target <= +{STARTUP_TARGET_S} s: {_check(gap <= STARTUP_TARGET_S)})"
        )
    return lines, verdicts


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def scaling_table(record: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """Per-experience rows of the scaling run and the slopes (from experience 1 on: replay starts there)."""
    if record is None:
        return ["Scaling run not available."], []
    rows = record["rows"]
    lines = [
        f"{record['experiences']} experiences of {record['train_samples_per_experience']:,} "
        "training samples; "
        f"evaluation on the whole test stream ({record['test_samples']:,} samples) after each.",
        "",
        "| experience | train (s) | eval (s) | RSS after (MiB) | peak RSS during (MiB) | stream acc |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['experience']} | {r['train_s']:.2f} | {r['eval_s']:.2f} | {r['rss_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['stream_accuracy']:.3f} |"
        )
    fit = rows[1:] if len(rows) > 2 else rows
    xs = [float(r["experience"]) for r in fit]
    train_slope = _slope(xs, [r["train_s"] for r in fit])
    eval_slope = _slope(xs, [r["eval_s"] for r in fit])
    rss_slope = _slope(xs, [r["peak_rss_mb"] for r in fit])
    mean_train = statistics.fmean(r["train_s"] for r in fit)
    span = len(fit) - 1
    growth = train_slope * span / mean_train if mean_train else float("nan")
    verdicts = [
        f"- scaling: train time slope {train_slope * 1000:+.1f} ms per experience ({growth:+.1%} over "
        f"{span} experiences; flat if within +-5%: {_check(abs(growth) <= 0.05)}); eval slope "
        f"{eval_slope * 1000:+.1f} ms per experience; peak RSS slope {rss_slope:+.2f} MiB per experience "
        f"({rss_slope * span:+.0f} MiB over {span} experiences)"
    ]
    return lines, verdicts


def write_report(raw: dict[str, Any], out: Path) -> None:
    """The markdown report from the raw records (``raw``, also written beside it as JSON)."""
    env, settings = raw["environment"], raw.get("settings", {})
    results = raw["results"]
    methods = settings.get("methods") or [m for m in METHODS if any(r["method"] == m for r in results)]
    rounds = settings.get("rounds") or max((r.get("round", 1) for r in results), default=0)
    fraction = settings.get("fraction")
    if fraction is None:
        fraction = 1.0 if all(r["stream_samples"] >= 59_000 for r in results) else float("nan")
    summary = summarize(results)
    sources = sorted({r["data_source"] for r in results}) or ["-"]
    data_note = (
        "real MNIST"
        if sources == ["real"]
        else "**synthetic data of MNIST's shape (the MNIST files were not found)**"
    )
    main_lines, verdicts = contender_tables(methods, summary)
    start_lines, start_verdicts = startup_table(raw.get("startup") or [])
    scale_lines, scale_verdicts = scaling_table(raw.get("scaling"))
    share = "all" if fraction >= 1 else f"{fraction:g}"
    elapsed = settings.get("elapsed_s")
    load = settings.get("load_average")
    lines = [
        "# lightning_cl speed suite",
        "",
        f"Generated by `{settings.get('command', 'python benchmarks/run.py')}` on {env['date']}.",
        "",
        f"- machine: {env['machine']}; one torch thread per process"
        + (f"; load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end" if load else ""),
        f"- python {env['python']}, torch {env['torch']}, lightning {env['lightning']}, "
        f"lightning_cl {env['lightning_cl']}; Avalanche: {env['avalanche']}",
        f"- data: {data_note}, {share} of each split; {rounds} round(s), each "
        "contender in a fresh process, contenders alternating"
        + (f"; suite wall time {elapsed / 60:.1f} min" if elapsed else ""),
        *([f"- note: {settings['note']}"] if settings.get("note") else []),
        "- workload: SplitMNIST, 5 experiences, class-incremental, class order "
        f"{lightning_cl_class_order()} (seed 1); MLP 784-512-10 (dropout 0.5); SGD lr 0.01 momentum 0.9; "
        "batch 128; 1 epoch per experience; the whole test stream evaluated after each experience. "
        "Replay: mem_size 500, experience-balanced, 128 current + 128 memory samples per step. EWC: "
        "separate, per-sample empirical Fisher in lightning_cl and the hand-written loop (closed form for "
        "linear layers, one backward pass per batch); "
        "Avalanche's own minibatch Fisher with the equivalent ewc_lambda.",
        "- total = the whole stream loop (train + eval + Trainer construction), excluding imports and data "
        "loading; train includes end-of-experience work (buffer update, Fisher); samples/s counts the "
        "stream's training samples (replayed samples not counted) over the median train time; ratios "
        "are of medians, with ratios of minima in brackets (the minimum is the better estimate when "
        "other work shares the machine).",
        "",
        "## Contenders",
        "",
        *main_lines,
        "",
        "## Start-up (import and first training batch)",
        "",
        *start_lines,
        "",
        "## Scaling: PermutedMNIST-like stream, Replay(mem_size=500)",
        "",
        *scale_lines,
        "",
        "## Targets",
        "",
        *verdicts,
        *start_verdicts,
        *scale_verdicts,
    ]
    failures = settings.get("failures") or []
    if failures:
        lines += ["", "## Failures", "", *[f"- {f}" for f in failures]]
    lines += ["", "Findings and proposed fixes: `benchmarks/FINDINGS.md`.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 5%% of the data, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of contenders (default 3; quick: 1)")
    parser.add_argument(
        "--fraction", type=float, default=None, help="fraction of each split (default 1; quick: 0.05)"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of naive,replay,ewc"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="folder holding MNIST/raw (default: $LIGHTNING_CL_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--out", default=str(HERE / "results.md"), help="markdown report (raw JSON beside it)"
    )
    avalanche = parser.add_mutually_exclusive_group()
    avalanche.add_argument("--avalanche", action="store_true", help="run Avalanche even in quick mode")
    avalanche.add_argument("--no-avalanche", action="store_true", help="skip Avalanche")
    parser.add_argument(
        "--avalanche-venv",
        default=None,
        help="virtual environment with avalanche-lib "
        "(default: $AVALANCHE_VENV or benchmarks/.venv-avalanche)",
    )
    parser.add_argument("--no-install", action="store_true", help="never create the Avalanche environment")
    parser.add_argument("--scaling-experiences", type=int, default=None, help="default 20; quick: 3")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling run")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    parser.add_argument(
        "--render", default=None, help="only re-write the report from a raw JSON file of an earlier run"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="contender processes at once (>1 only for smoke tests: times compete)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; the exit status is 1 if any contender failed."""
    args = parse_args(argv)
    out = Path(args.out)
    if args.render:
        write_report(json.loads(Path(args.render).read_text()), out)
        print(f"report written to {out}", flush=True)
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; allowed: {', '.join(METHODS)}")
    root = Path(args.data) if args.data else default_data_root()
    data = str(root.resolve()) if root is not None else None
    if not has_mnist(data):
        print(f"MNIST not found under {data}/MNIST/raw: using synthetic data of MNIST's shape", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="lightning_cl_bench_"))
    use_avalanche = args.avalanche or (not args.quick and not args.no_avalanche)
    python, note = None, "not run (--quick without --avalanche, or --no-avalanche)"
    if use_avalanche:
        venv = Path(args.avalanche_venv or os.environ.get("AVALANCHE_VENV") or DEFAULT_AVALANCHE_VENV)
        python, note = avalanche_python(
            venv, create=not args.no_install, log=log_dir / "avalanche-install.log"
        )
        if python is None:
            print(f"Avalanche skipped: {note}", flush=True)
            note = f"skipped: {note}"
    suite = Suite(
        data=data,
        fraction=args.fraction if args.fraction is not None else (0.05 if args.quick else 1.0),
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 3),
        methods=methods,
        avalanche_python=python,
        avalanche_note=note,
        scaling_experiences=args.scaling_experiences or (3 if args.quick else 20),
        scaling_fraction=0.02 if args.quick else 1.0,
        scaling_test_fraction=1.0,
        startup_rounds=1 if args.quick else 5,
        log_dir=log_dir,
        jobs=args.jobs,
    )
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    print(f"logs in {log_dir}", flush=True)
    with ThreadPoolExecutor(max_workers=2 if suite.jobs > 1 else 1) as pool:
        # With --jobs > 1 (smoke tests) start-up and scaling run beside the contenders.
        side = pool.submit(
            lambda: (
                [] if args.no_startup else run_startup(suite),
                None if args.no_scaling else run_scaling(suite),
            )
        )
        if suite.jobs > 1:
            run_contenders(suite)
            startup, scaling = side.result()
        else:
            startup, scaling = side.result()
            run_contenders(suite)
    if scaling is not None:
        last = scaling["rows"][-1]
        print(f"  scaling: {len(scaling['rows'])} experiences, last train {last['train_s']:.2f}s", flush=True)
    settings = {
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "fraction": suite.fraction,
        "rounds": suite.rounds,
        "methods": suite.methods,
        "elapsed_s": time.perf_counter() - start,
        "load_average": [load_start, os.getloadavg()[0]],
        "failures": suite.failures,
    }
    raw = {
        "environment": environment(suite),
        "settings": settings,
        "results": suite.results,
        "startup": startup,
        "scaling": scaling,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    write_report(raw, out)
    print(f"report written to {out}", flush=True)
    return 1 if suite.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
