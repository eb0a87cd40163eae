"""``lightning-cl reproduce``: run the published-result configs and check their targets.

Each file under ``configs/reproduce/`` is an ordinary ``lightning-cl fit`` config (``model``,
``benchmark``, ``trainer``, ``seed_everything``) with one more top-level section,
``reproduce``, that ``fit`` accepts and ignores (so ``lightning-cl fit --config
configs/reproduce/<name>.yaml`` runs it unchanged)::

    reproduce:
      value: 0.97               # the published number
      tolerance: 0.03           # how far below it (or around it, see ``check``) still counts
      check: at_least           # "at_least": mean >= value - tolerance (continual-learning-
                                #   baselines' test); "within": |mean - value| <= tolerance
      metric: average_accuracy  # a scalar of results.json (default: final average accuracy)
      source: "Zenke et al. 2017; continual-learning-baselines si_smnist"
      data: [MNIST/raw]         # paths under the data root the run needs
      seeds: [1, 2, 3]          # default seeds (--seeds overrides)
      quick:                    # optional: the reduced run of --quick
        args: [--trainer.max_epochs, "1"]
        value: 0.20             # optional: the quick run's own target (default: the target)
        tolerance: 0.03

``lightning-cl reproduce`` runs each config once per seed (``seed_everything`` and, where the
benchmark has one, its ``seed`` set to the seed), reads the metric from the run's
``results.json``, prints a table (config, target, measured mean and spread, within tolerance,
time), writes it as ``reproduce.json`` and ``reproduce.md`` and exits with status 1 when a
target is missed or a run fails. A config whose data is absent is listed as skipped with the
reason and does not change the exit status. ``--resume`` continues each seed's run from the
newest stream checkpoint in its folder, when the run that wrote it had the same options.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import yaml

from lightning_cl.data.dataset_not_found import DatasetNotFoundError
from lightning_cl.training.checkpoint import stream_checkpoints

__all__ = [
    "CHECKS",
    "DATA_ENV",
    "METRICS",
    "REPRODUCE_KEY",
    "ReproduceConfig",
    "ReproduceResult",
    "SeedRun",
    "Target",
    "check_seeds",
    "default_config_dir",
    "load_configs",
    "main",
    "markdown_table",
    "reproduce",
    "run_once",
    "text_table",
]

REPRODUCE_KEY = "reproduce"
"""The top-level config section that holds the target (``lightning-cl fit`` ignores it)."""
DATA_ENV = "LIGHTNING_CL_DATA"
"""Environment variable naming the data root when ``--data-root`` is not given."""
CHECKS = ("at_least", "within")
"""How a measured mean is compared with the target: ``at_least`` or ``within``."""
METRICS = ("average_accuracy", "seen_accuracy", "forgetting", "bwt", "fwt", "amca")
"""The scalars of ``results.json`` a target can name (:meth:`ContinualResults.to_dict`'s top level)."""
QUICK_KEYS = ("args", "value", "tolerance", "check")
"""The keys of a config's ``reproduce.quick`` section."""
MAX_SEED = 2**32 - 1
"""The largest seed ``seed_everything`` accepts."""
RUN_FILE = "reproduce_run.json"
"""Written in each seed's run folder when its run starts: what ``--resume`` checks (the config
file's SHA-256, the seed, the quick options, the ``--fit-args``), and the full ``fit`` options."""
JSON_FILE = "reproduce.json"
MARKDOWN_FILE = "reproduce.md"

Status = Literal["passed", "missed", "skipped", "failed"]


@dataclass(frozen=True)
class Target:
    """A published number and how close a run must come to it.

    Args:
        value: the published value of ``metric``.
        tolerance: the allowed distance (>= 0).
        metric: a scalar key of ``results.json`` (``average_accuracy``: the final average
            accuracy over the test stream's experiences; ``seen_accuracy``, ``forgetting``, ...).
        check: ``"at_least"`` (mean >= value - tolerance: a higher result passes, the check of
            continual-learning-baselines) or ``"within"`` (|mean - value| <= tolerance).
        source: where the number comes from (paper and table, or the baselines' experiment).

    Raises:
        ValueError: for a non-finite value, a negative tolerance, an unknown check or a metric
            not among :data:`METRICS`.

    Example:
        >>> Target(0.97, 0.03).passes(0.95), Target(0.2, 0.03, check="within").passes(0.25)
        (True, False)
    """

    value: float
    tolerance: float
    metric: str = "average_accuracy"
    check: str = "at_least"
    source: str = ""

    def __post_init__(self) -> None:
        if (
            not isinstance(self.value, int | float)
            or isinstance(self.value, bool)
            or not math.isfinite(self.value)
        ):
            raise ValueError(f"target value must be a finite number, got {self.value!r}")
        if (
            not isinstance(self.tolerance, int | float)
            or isinstance(self.tolerance, bool)
            or not self.tolerance >= 0
        ):
            raise ValueError(f"tolerance must be a number >= 0, got {self.tolerance!r}")
        if self.check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, got {self.check!r}")
        if self.metric not in METRICS:
            raise ValueError(
                f"metric must be one of {METRICS} (scalars of results.json), got {self.metric!r}"
            )

    def passes(self, measured: float) -> bool:
        """Whether ``measured`` meets the target (a small float slack of 1e-9 on the bound)."""
        if not math.isfinite(measured):
            return False
        if self.check == "at_least":
            return measured >= self.value - self.tolerance - 1e-9
        return abs(measured - self.value) <= self.tolerance + 1e-9

    def describe(self) -> str:
        """The target as the table shows it: ``0.970 (>= 0.940)`` or ``0.200 (± 0.03)``."""
        if self.check == "at_least":
            return f"{self.value:.3f} (>= {self.value - self.tolerance:.3f})"
        return f"{self.value:.3f} (± {self.tolerance:g})"


@dataclass(frozen=True)
class ReproduceConfig:
    """One config of ``configs/reproduce/``: its path, its target and what it needs.

    Args:
        name: the file's stem, the name ``lightning-cl reproduce NAME`` selects.
        path: the YAML file.
        target: the target of the full run.
        data: paths under the data root the run needs (e.g. ``MNIST/raw``).
        seeds: the seeds run when ``--seeds`` is not given.
        quick_args: extra ``fit`` options of the ``--quick`` run; ``None``: not in ``--quick``.
        quick_target: the ``--quick`` run's target.
        has_root: the benchmark takes a ``root`` (the data root is passed to it).
        has_seed: the benchmark takes a ``seed`` (set to each run's seed).
        root_option: the ``fit`` option that sets the root: the benchmark's own, or that of the
            benchmark it wraps (``benchmark.init_args.benchmark``, as ``SubsampledBenchmark``).
    """

    name: str
    path: Path
    target: Target
    data: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (1,)
    quick_args: tuple[str, ...] | None = None
    quick_target: Target | None = None
    has_root: bool = False
    has_seed: bool = False
    root_option: str = "--benchmark.init_args.root"

    @classmethod
    def from_file(cls, path: str | Path) -> ReproduceConfig:
        """Read a config and its ``reproduce`` section.

        Raises:
            ValueError: if the file has no ``reproduce`` section or the section is malformed
                (the message names the file and the key).
        """
        path = Path(path)
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            problem = getattr(err, "problem", None) or _first_line(err)
            raise ValueError(f"{path}: not valid YAML{at}: {problem}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: cannot be read: {err}") from None
        if not isinstance(config, dict) or REPRODUCE_KEY not in config:
            raise ValueError(f"{path}: a reproduce config needs a top-level '{REPRODUCE_KEY}:' section")
        if not isinstance(config[REPRODUCE_KEY], dict):
            raise ValueError(
                f"{path}: '{REPRODUCE_KEY}' must be a mapping (value, tolerance, ...), "
                f"got {config[REPRODUCE_KEY]!r}"
            )
        section: dict[str, Any] = config[REPRODUCE_KEY]
        known = {"value", "tolerance", "metric", "check", "source", "data", "seeds", "quick", "notes"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown} in '{REPRODUCE_KEY}', allowed: {sorted(known)}")
        for key in ("value", "tolerance"):
            if key not in section:
                raise ValueError(f"{path}: '{REPRODUCE_KEY}.{key}' is required")
        try:
            target = Target(
                value=section["value"],
                tolerance=section["tolerance"],
                metric=section.get("metric", "average_accuracy"),
                check=section.get("check", "at_least"),
                source=str(section.get("source", "")),
            )
            quick = section.get("quick")
            quick_args: tuple[str, ...] | None = None
            quick_target: Target | None = None
            if quick is not None:
                quick_args, quick_target = _quick_run(quick, target)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        seeds = section.get("seeds", [config.get("seed_everything", 1)])
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            raise ValueError(
                f"{path}: '{REPRODUCE_KEY}.seeds' must be a non-empty list of ints, got {seeds!r}"
            )
        try:
            check_seeds(seeds)
        except ValueError as err:
            raise ValueError(f"{path}: '{REPRODUCE_KEY}.seeds': {err}") from None
        data = section.get("data", [])
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise ValueError(f"{path}: '{REPRODUCE_KEY}.data' must be a list of paths, got {data!r}")
        bench_args = (config.get("benchmark") or {}).get("init_args") or {}
        root_option = "--benchmark.init_args.root"
        inner = bench_args.get("benchmark")
        inner_args = (inner.get("init_args") or {}) if isinstance(inner, dict) else {}
        if "root" not in bench_args and "root" in inner_args:
            root_option = "--benchmark.init_args.benchmark.init_args.root"
        return cls(
            name=path.stem,
            path=path,
            target=target,
            data=tuple(data),
            seeds=tuple(int(s) for s in seeds),
            quick_args=quick_args,
            quick_target=quick_target,
            has_root="root" in bench_args or "root" in inner_args,
            has_seed="seed" in bench_args,
            root_option=root_option,
        )

    def missing_data(self, data_root: str | Path) -> list[str]:
        """The needed paths absent under ``data_root``."""
        return [d for d in self.data if not (Path(data_root) / d).exists()]


@dataclass
class ReproduceResult:
    """The outcome of one config: the measured values per seed, against the target.

    ``status`` is ``"passed"``, ``"missed"`` (the mean misses the target), ``"skipped"`` (data
    absent; ``reason`` says which) or ``"failed"`` (the run raised; ``reason`` holds the error).
    """

    name: str
    target: Target
    status: Status
    seeds: list[int] = field(default_factory=list)
    measured: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    reason: str = ""
    quick: bool = False
    resumed_from: list[str | None] = field(default_factory=list)
    """Per seed: the checkpoint its run resumed from (``--resume``), or ``None`` (run from the start)."""

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.measured) if self.measured else None

    @property
    def spread(self) -> float | None:
        """Sample standard deviation over the seeds (``None`` with fewer than 2)."""
        return statistics.stdev(self.measured) if len(self.measured) > 1 else None

    @property
    def within_tolerance(self) -> bool | None:
        return None if self.mean is None else self.target.passes(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "quick": self.quick,
            "target": asdict(self.target),
            "seeds": self.seeds,
            "measured": self.measured,
            "mean": self.mean,
            "spread": self.spread,
            "within_tolerance": self.within_tolerance,
            "seconds": self.seconds,
            "total_seconds": sum(self.seconds),
            "resumed_from": self.resumed_from,
            "reason": self.reason,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quick_run(quick: Any, target: Target) -> tuple[tuple[str, ...], Target]:
    """The options and target of a ``reproduce.quick`` section (see :class:`ReproduceConfig`)."""
    if not isinstance(quick, dict):
        raise ValueError(f"'{REPRODUCE_KEY}.quick' must be a mapping with keys {QUICK_KEYS}, got {quick!r}")
    unknown = sorted(set(quick) - set(QUICK_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in '{REPRODUCE_KEY}.quick', allowed: {list(QUICK_KEYS)}")
    args = quick.get("args", [])
    if not isinstance(args, list) or not all(
        isinstance(a, str | int | float) and not isinstance(a, bool) for a in args
    ):
        raise ValueError(
            f"'{REPRODUCE_KEY}.quick.args' must be a list of fit options and values "
            f"(e.g. [--trainer.max_epochs, '1']), got {args!r}"
        )
    try:
        quick_target = Target(
            value=quick.get("value", target.value),
            tolerance=quick.get("tolerance", target.tolerance),
            metric=target.metric,
            check=quick.get("check", target.check),
            source=target.source,
        )
    except ValueError as err:
        raise ValueError(f"'{REPRODUCE_KEY}.quick': {err}") from None
    return tuple(str(a) for a in args), quick_target


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list, checked: ints in ``[0, 2**32 - 1]`` (``seed_everything``'s range), no repeats.

    Raises:
        ValueError: naming the offending seeds and what is allowed.

    Example:
        >>> check_seeds([1, 2, 3])
        [1, 2, 3]
    """
    seeds = list(seeds)
    bad = [s for s in seeds if not _is_int(s) or not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must be integers in [0, {MAX_SEED}], got {bad}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(
            f"seeds must differ (each seed is one run of the spread), got {repeated} more than once"
        )
    return seeds


def default_config_dir() -> Path:
    """``configs/reproduce`` of the working directory, else of the source checkout."""
    here = Path("configs") / "reproduce"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "configs" / "reproduce"


def load_configs(
    directory: str | Path, names: Sequence[str] = (), quick: bool = False
) -> list[ReproduceConfig]:
    """The reproduce configs of ``directory`` (sorted by name), or those ``names`` select.

    Args:
        directory: the folder of ``*.yaml`` reproduce configs.
        names: config names (file stems) to keep; empty: all.
        quick: keep only the configs that have a ``quick`` run.

    Returns:
        The configs.

    Raises:
        ValueError: for a missing folder (or a file in its place), a folder without configs, a
            name that is not one of its configs (the message lists them), a named config without
            a quick run under ``quick``, or a malformed config (only the named ones are read).

    Example:
        >>> [c.name for c in load_configs(default_config_dir(), ["split_mnist_naive"])]  # doctest: +SKIP
        ['split_mnist_naive']
    """
    directory = Path(directory)
    if not directory.exists():
        raise ValueError(f"config folder {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise ValueError(f"config folder {str(directory)!r} is a file, not a folder")
    files: dict[str, Path] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        if path.stem in files:
            raise ValueError(f"two configs named {path.stem!r}: {files[path.stem]} and {path}")
        files[path.stem] = path
    if not files:
        raise ValueError(f"config folder {str(directory)!r} holds no *.yaml reproduce configs")
    if names:
        unknown = [n for n in names if n not in files]
        if unknown:
            raise ValueError(f"unknown config names {unknown}; available: {sorted(files)}")
        configs = [ReproduceConfig.from_file(files[n]) for n in dict.fromkeys(names)]
    else:
        configs = [ReproduceConfig.from_file(files[n]) for n in sorted(files)]
    if quick:
        without = [c.name for c in configs if c.quick_args is None]
        if names and without:
            with_quick = [c.name for c in configs if c.quick_args is not None]
            raise ValueError(
                f"configs {without} have no quick run ('{REPRODUCE_KEY}.quick'); drop --quick to run "
                f"them in full{f', or leave them out (with a quick run: {with_quick})' if with_quick else ''}"
            )
        configs = [c for c in configs if c.quick_args is not None]
        if not configs:
            raise ValueError(f"no config in {str(directory)!r} has a quick run ('{REPRODUCE_KEY}.quick')")
    return configs


class SeedRun(NamedTuple):
    """What :func:`run_once` measured: the value, the run's ``results.json``, and the checkpoint
    the run resumed from (``None``: it ran from the first experience)."""

    value: float
    results: Path
    resumed_from: Path | None


def run_once(
    config: ReproduceConfig,
    seed: int,
    data_root: str | Path,
    run_dir: str | Path,
    quick: bool = False,
    extra_args: Sequence[str] = (),
    quiet: bool = False,
    resume: bool = False,
) -> SeedRun:
    """Run ``config`` with ``lightning-cl fit`` (in this process) for one seed.

    A run that starts afresh first writes ``run_dir/reproduce_run.json``: the config file's
    SHA-256, the seed, the quick options, ``extra_args`` and the full ``fit`` options. With
    ``resume``, a run folder that holds stream checkpoints (``experience_<i>.ckpt``, one per
    trained experience, as ``fit`` saves them) written since that record, by a run with the same
    config contents, seed, quick options and ``extra_args``, continues from the newest readable
    one: the experiences it holds are not trained again, and the final ``results.json`` covers
    the whole stream (the checkpoint carries the results so far and the random states). Paths
    (``--out``, ``--config-dir``, the data root) may be spelt differently or moved.

    Args:
        config: the config.
        seed: ``seed_everything`` and, where the benchmark has one, its ``seed``.
        data_root: passed as ``benchmark.init_args.root`` where the benchmark takes a root.
        run_dir: the run's ``trainer.default_root_dir``.
        quick: add the config's quick options.
        extra_args: further ``fit`` options, applied last.
        quiet: swallow the run's own output (its tables and progress lines).
        resume: continue from the newest stream checkpoint under ``run_dir``, if there is one.

    Returns:
        The measured value of the target's metric, the path of ``results.json`` and the
        checkpoint resumed from.

    Raises:
        ValueError: if the run wrote no ``results.json`` (one left by an earlier run does not
            count), if it lacks the metric or holds no number for it, if ``fit`` rejected its
            options (the message is ``fit``'s own), or, with ``resume``, if the checkpoints found
            have no readable record, or were written by a run with another config file content,
            seed, quick options or ``extra_args`` (each difference is named).
    """
    from lightning_cl.training.cli import ContinualCLI  # the CLI imports this module

    args = ["fit", "--config", str(config.path), "--seed_everything", str(seed)]
    if config.has_seed:
        args += ["--benchmark.init_args.seed", str(seed)]
    if config.has_root:
        args += [config.root_option, str(data_root)]
    if quick and config.quick_args:
        args += list(config.quick_args)
    args += ["--trainer.default_root_dir", str(run_dir), *extra_args]
    record = Path(run_dir) / RUN_FILE
    identity = {
        "config": config.name,
        "config_sha256": hashlib.sha256(config.path.read_bytes()).hexdigest(),
        "seed": seed,
        "quick_args": list(config.quick_args or []) if quick else None,
        "fit_args": [str(a) for a in extra_args],
    }
    checkpoint = _resumable(config.name, seed, record, identity) if resume else None
    given = _ckpt_path_of(extra_args)
    if checkpoint is not None:
        # The record keeps its time: the checkpoints written since it are this run's.
        args = [*args, "--ckpt_path", str(checkpoint)]
    else:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({**identity, "args": args}, indent=2) + "\n")
    # Only a results.json this run writes counts, not one an earlier run left in run_dir.
    before = {q: q.stat().st_mtime_ns for q in Path(run_dir).glob("**/results.json")}
    errors = _Tee(sys.stderr)
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(errors))
        stack.enter_context(warnings.catch_warnings())
        # The command line is built here on purpose, not taken from sys.argv.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            ContinualCLI(args=args)
        except SystemExit as exit_:
            said = [line for line in errors.getvalue().splitlines() if "error:" in line]
            if exit_.code in (0, None) and not said:
                raise
            reason = said[-1].strip() if said else f"exit status {exit_.code}"
            raise ValueError(f"{config.name}: lightning-cl fit refused its options: {reason}") from None
    found = sorted(
        (q for q in Path(run_dir).glob("**/results.json") if before.get(q) != q.stat().st_mtime_ns),
        key=lambda q: q.stat().st_mtime_ns,
    )
    if not found:
        raise ValueError(
            f"{config.name}: the run wrote no results.json under {run_dir} (a "
            "--trainer.default_root_dir among --fit-args moves it elsewhere)"
        )
    results = json.loads(found[-1].read_text())
    target = config.quick_target if quick and config.quick_target is not None else config.target
    value = results.get(target.metric)
    if not isinstance(value, int | float) or isinstance(value, bool):
        scalars = sorted(k for k, v in results.items() if isinstance(v, int | float))
        raise ValueError(
            f"{config.name}: results.json has no number for metric {target.metric!r} "
            f"(got {value!r}); scalar keys: {scalars}"
        )
    return SeedRun(float(value), found[-1], checkpoint if checkpoint is not None else given)


def _ckpt_path_of(args: Sequence[str]) -> Path | None:
    """The ``--ckpt_path`` among ``fit`` options (``None`` if none, or ``last``, which ``fit`` resolves)."""
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--ckpt_path=") else None
        if arg == "--ckpt_path" and i + 1 < len(args):
            value = str(args[i + 1])
        if value is not None and value not in ("", "last", "null", "None"):
            return Path(value)
    return None


def _resumable(name: str, seed: int, record: Path, identity: dict[str, Any]) -> Path | None:
    """The checkpoint a ``--resume`` run of ``identity`` continues from, or ``None`` (start afresh).

    The newest readable stream checkpoint of the run folder written since its record (older ones
    were left by an earlier run in the same folder); an unreadable one (cut off while being
    written) is skipped with a warning, for the next newest.

    Raises:
        ValueError: if the folder holds checkpoints but no readable record, or the record's
            run differs from ``identity`` (the differing entries are named).
    """
    folder = record.parent
    found = stream_checkpoints(folder)
    if not found:
        return None
    try:
        recorded = json.loads(record.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError) as err:
        reason = "is missing" if not record.is_file() else f"cannot be read ({err})"
        raise ValueError(
            f"{name}: seed {seed}: --resume found checkpoints in {folder}, but the record of their run's "
            f"options, {record}, {reason}: what they were trained with cannot be checked; run without "
            "--resume to start afresh, or without --resume and with --fit-args --ckpt_path PATH to "
            "continue from one of them unchecked"
        ) from None
    since = record.stat().st_mtime_ns
    candidates = [p for p in found if p.stat().st_mtime_ns >= since]
    if not candidates:
        return None
    differ = {k: (recorded.get(k), v) for k, v in identity.items() if recorded.get(k) != v}
    if differ:
        said = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in differ.items())
        hint = (
            "the config file was edited since (restore it to resume)"
            if "config_sha256" in differ
            else "run again with the recorded options to resume"
        )
        raise ValueError(
            f"{name}: seed {seed}: --resume found {candidates[0]}, written by a run with other "
            f"options ({said}): {hint}, or run without --resume to start afresh"
        )
    for checkpoint in candidates:  # read before the run, so that a truncated one is skipped
        try:
            torch.load(checkpoint, map_location="cpu", weights_only=False)
        except Exception as err:
            warnings.warn(
                f"{name}: seed {seed}: skipping unreadable checkpoint {checkpoint} "
                f"({type(err).__name__}: {_first_line(err)})",
                stacklevel=2,
            )
            continue
        return checkpoint
    return None


class _Tee(io.StringIO):
    """Keeps what is written and passes it on to ``stream``."""

    def __init__(self, stream: Any):
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self._stream.flush()


def reproduce(
    configs: Sequence[ReproduceConfig],
    data_root: str | Path,
    out_dir: str | Path,
    seeds: Sequence[int] | None = None,
    quick: bool = False,
    extra_args: Sequence[str] = (),
    quiet: bool = False,
    log: Any = None,
    resume: bool = False,
) -> list[ReproduceResult]:
    """Run every config for its seeds and compare the mean with its target.

    Args:
        configs: the configs (see :func:`load_configs`).
        data_root: the folder that holds the datasets (``MNIST/raw``, ...).
        out_dir: each run's log directory is ``out_dir/<name>/seed_<seed>`` (``seed_<seed>_quick``
            for a quick run).
        seeds: the seeds of every config (checked by :func:`check_seeds`); ``None``: each
            config's own (with ``quick``, its first).
        quick: the configs' quick runs, against their quick targets.
        extra_args: further ``fit`` options for every run (e.g. ``--trainer.accelerator cpu``).
        quiet: swallow the runs' own output.
        log: a text stream for one progress line per run (``None``: none).
        resume: continue each seed's run from the newest stream checkpoint in its folder (see
            :func:`run_once`); a seed's time then counts this call only.

    Returns:
        One :class:`ReproduceResult` per config, in order.

    Example:
        >>> results = reproduce(load_configs("configs/reproduce", ["split_mnist_naive"]),
        ...                     "../shared/data", "runs/reproduce")  # doctest: +SKIP
        >>> results[0].status  # doctest: +SKIP
        'passed'
    """
    if seeds:
        seeds = check_seeds(seeds)
    results: list[ReproduceResult] = []
    for config in configs:
        target = config.quick_target if quick and config.quick_target is not None else config.target
        result = ReproduceResult(config.name, target, "skipped", quick=quick)
        results.append(result)
        missing = config.missing_data(data_root)
        if missing:
            result.reason = f"data absent: {', '.join(str(Path(data_root) / m) for m in missing)}"
            _log(log, f"{config.name}: skipped ({result.reason})")
            continue
        run_seeds = list(seeds) if seeds else (list(config.seeds[:1]) if quick else list(config.seeds))
        try:
            for seed in run_seeds:
                start = time.perf_counter()
                value, _, resumed = run_once(
                    config,
                    seed,
                    data_root,
                    Path(out_dir) / config.name / (f"seed_{seed}_quick" if quick else f"seed_{seed}"),
                    quick=quick,
                    extra_args=extra_args,
                    quiet=quiet,
                    resume=resume,
                )
                result.seconds.append(time.perf_counter() - start)
                result.seeds.append(seed)
                result.measured.append(value)
                result.resumed_from.append(None if resumed is None else str(resumed))
                _log(
                    log,
                    f"{config.name}: seed {seed}: {target.metric} {value:.4f} ({result.seconds[-1]:.0f} s"
                    + (f", resumed from {resumed.name}" if resumed is not None else "")
                    + ")",
                )
        except DatasetNotFoundError as err:
            result.status, result.reason = "skipped", f"data absent: {_first_line(err)}"
            _log(log, f"{config.name}: skipped ({result.reason})")
            continue
        except (Exception, SystemExit) as err:  # a failed run is reported, the others still run
            result.status, result.reason = "failed", f"{type(err).__name__}: {_first_line(err)}"
            _log(log, f"{config.name}: failed ({result.reason})")
            continue
        result.status = "passed" if result.within_tolerance else "missed"
    return results


def _log(log: Any, line: str) -> None:
    if log is not None:
        print(line, file=log, flush=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or repr(err)
    return text.splitlines()[0]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(results: Sequence[ReproduceResult]) -> list[list[str]]:
    rows = []
    for r in results:
        measured = _fmt(r.mean)
        if r.spread is not None:
            measured += f" ± {r.spread:.3f}"
        within = {True: "yes", False: "no", None: "-"}[r.within_tolerance]
        status = r.status + (f": {r.reason}" if r.reason else "")
        rows.append(
            [
                r.name + (" (quick)" if r.quick else ""),
                r.target.describe(),
                measured,
                ",".join(str(s) for s in r.seeds) or "-",
                within,
                _time_cell(r),
                status,
            ]
        )
    return rows


def _time_cell(r: ReproduceResult) -> str:
    if not r.seconds:
        return "-"
    resumed = [str(s) for s, c in zip(r.seeds, r.resumed_from, strict=False) if c is not None]
    return f"{sum(r.seconds):.0f} s" + (f" (seeds {','.join(resumed)} resumed)" if resumed else "")


_HEADER = ["config", "target", "measured", "seeds", "within tolerance", "time (all seeds)", "status"]


def text_table(results: Sequence[ReproduceResult]) -> str:
    """The results as an aligned plain-text table (one row per config).

    Example:
        >>> r = ReproduceResult("x", Target(0.5, 0.1), "passed", [1], [0.55], [2.0])
        >>> "x" in text_table([r]) and "0.550" in text_table([r])
        True
    """
    rows = [_HEADER, *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: Sequence[ReproduceResult]) -> str:
    """The results as a Markdown table, with each target's source.

    Example:
        >>> r = ReproduceResult("x", Target(0.5, 0.1, source="a paper"), "missed", [1], [0.1], [2.0])
        >>> markdown_table([r]).splitlines()[2].startswith("| x | 0.500")
        True
    """
    header = [*_HEADER, "source"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for r, row in zip(results, _rows(results), strict=True):
        lines.append("| " + " | ".join([*row, r.target.source]).replace("\n", " ") + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-cl reproduce",
        description=(
            "Run the published-result configs (configs/reproduce/*.yaml: ordinary 'lightning-cl fit' "
            "configs with a 'reproduce' section holding the target), print config, target, measured "
            "mean ± spread over seeds, within tolerance and time, write reproduce.json and "
            "reproduce.md, and exit with status 1 when a target is missed or a run fails. Configs "
            "whose data is absent are listed as skipped with the reason."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("names", nargs="*", help="config names (file stems) to run; default: all")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "only the configs with a quick run, reduced as each config says, against its quick "
            "target, first seed"
        ),
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"folder holding the datasets (MNIST/raw, ...); default: ${DATA_ENV}, else 'data'",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help=(
            f"seeds of every config, distinct, in [0, {MAX_SEED}]; default: each config's own "
            "(with --quick, its first)"
        ),
    )
    parser.add_argument(
        "--config-dir", default=None, help="folder of the reproduce configs; default: configs/reproduce"
    )
    parser.add_argument(
        "--out",
        default="runs/reproduce",
        help=(
            "output folder: reproduce.json, reproduce.md and the runs (default: runs/reproduce, "
            "from the current folder)"
        ),
    )
    parser.add_argument("--list", action="store_true", help="list the configs and their targets, run nothing")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="hide the runs' printed tables (their standard output); progress lines and warnings still show",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue each seed's run from the newest stream checkpoint in its folder under --out "
            "(a run that was cut off); only a run with the same options is resumed, and its time "
            "counts this call only"
        ),
    )
    parser.add_argument(
        "--fit-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="options passed on to every 'lightning-cl fit' run (everything after --fit-args)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-cl reproduce``.

    Args:
        argv: the options (after ``reproduce``); ``None`` reads ``sys.argv[2:]``.

    Returns:
        0 when every run config met its target (skipped ones aside), 1 when one missed or failed.

    Raises:
        SystemExit: with status 2 for unknown options or config names, a malformed config, bad
            seeds or an output folder that cannot be written, as argparse does; before any run.
    """
    parser = _parser()
    options = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    data_root = options.data_root or os.environ.get(DATA_ENV) or "data"
    try:
        configs = load_configs(options.config_dir or default_config_dir(), options.names, options.quick)
        if options.seeds is not None:
            check_seeds(options.seeds)
    except ValueError as err:
        parser.error(str(err))
    if options.resume and any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in options.fit_args):
        parser.error("--resume picks each seed's checkpoint itself; drop --ckpt_path from --fit-args")
    if options.list:
        for c in configs:
            print(f"{c.name}: {c.target.metric} {c.target.describe()}  [{c.target.source}]")
        return 0
    out = Path(options.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        parser.error(f"--out {options.out!r} cannot hold the results: {err.strerror or err}")
    results = reproduce(
        configs,
        data_root,
        options.out,
        seeds=options.seeds,
        quick=options.quick,
        extra_args=options.fit_args,
        quiet=options.quiet,
        log=sys.stderr,
        resume=options.resume,
    )
    payload = {
        "quick": options.quick,
        "data_root": str(data_root),
        "fit_args": list(options.fit_args),
        "resume": options.resume,
        "results": [r.to_dict() for r in results],
    }
    (out / JSON_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    (out / MARKDOWN_FILE).write_text(markdown_table(results) + "\n")
    print(text_table(results))
    print(f"written: {out / JSON_FILE}, {out / MARKDOWN_FILE}")
    bad = [r.name for r in results if r.status in ("missed", "failed")]
    if bad:
        print(f"missed or failed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
