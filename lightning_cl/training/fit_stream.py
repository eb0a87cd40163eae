"""``fit_stream``: the plain per-experience Lightning loop, as one function."""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.experience import Experience
from lightning_cl.data.stream import Stream
from lightning_cl.evaluation import ContinualResults, log_figures
from lightning_cl.models.module import ContinualModule
from lightning_cl.training.checkpoint import (
    StreamCheckpointInfo,
    apply_stream_checkpoint,
    benchmark_fingerprint,
    check_callback_states,
    checkpoint_name,
    latest_checkpoint,
    load_stream_checkpoint,
)

__all__ = [
    "FIGURE_FILE",
    "RESULTS_FILE",
    "fit_stream",
    "log_dir_of",
    "per_experience_callbacks",
    "resolve_logger",
    "save_results",
    "start_up_lines",
]

RESULTS_FILE = "results.json"
"""Name of the results file written to the run's log directory."""
FIGURE_FILE = "accuracy_matrix.png"
"""Name of the accuracy-matrix figure written beside :data:`RESULTS_FILE` (needs matplotlib)."""

_REFUSED_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true")
_OWN_KEYS = ("callbacks", "logger")

# torch's pytree deprecation (a FutureWarning in torch 2.14), raised inside Lightning's batch
# handling: nothing a user of lightning_cl can act on (setup.cfg filters it in the tests too).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

# What Lightning logs at every Trainer set-up; fit_stream shows it for the first experience only.
_ONCE_PER_RUN = (
    "GPU available",
    "TPU available",
    "HPU available",
    "💡 Tip",
    "LOCAL_RANK:",
    "You are using a CUDA device",
    "`Trainer.fit` stopped: `max_epochs=",
)
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)


class _OncePerRun(logging.Filter):
    """Drops Lightning's per-Trainer start-up lines (devices, tips) once they have been shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_ONCE_PER_RUN)


class _StartUpLines:
    """Lightning's per-Trainer start-up lines (devices, tips): shown until :meth:`hide` is called."""

    def __init__(self) -> None:
        self._filter: _OncePerRun | None = None

    def hide(self) -> None:
        if self._filter is None:
            self._filter = _OncePerRun()
            for name in _LIGHTNING_LOGGERS:
                logging.getLogger(name).addFilter(self._filter)

    def show(self) -> None:
        if self._filter is not None:
            for name in _LIGHTNING_LOGGERS:
                logging.getLogger(name).removeFilter(self._filter)
            self._filter = None


@contextmanager
def start_up_lines(hidden: bool = False) -> Iterator[_StartUpLines]:
    """Within the block, Lightning's start-up lines are hidden from the first ``hide()`` on (or all along).

    Args:
        hidden: hide them from the start.

    Example:
        >>> with start_up_lines(hidden=True):
        ...     trainer = L.Trainer(logger=False, enable_checkpointing=False)  # no "GPU available" line
    """
    lines = _StartUpLines()
    if hidden:
        lines.hide()
    try:
        yield lines
    finally:
        lines.show()


def _check_strategy(strategy: Any) -> None:
    if isinstance(strategy, str) and strategy in _REFUSED_STRATEGIES:
        raise MisconfigurationException(
            f"strategy={strategy!r} hands back only the weights after each fit, so CL state (buffers, "
            "importances, grown heads) would be lost between experiences; use strategy='ddp' (launched "
            "as a script, any number of processes and nodes) or a single device"
        )


def resolve_logger(logger: bool | Logger | Iterable[Logger] | None, root: str | Path) -> Any:
    """One logger shared by the trainers of all experiences (``True``: a CSV logger)."""
    if logger is True or logger is None:
        return CSVLogger(save_dir=str(root), name="lightning_logs")
    return logger


def log_dir_of(logger: Any) -> Path | None:
    """The directory of the first logger, where run artefacts such as ``results.json`` go."""
    if isinstance(logger, (list, tuple)):
        logger = logger[0] if logger else None
    if not isinstance(logger, Logger):
        return None
    path = getattr(logger, "log_dir", None) or logger.save_dir
    return Path(path) if path else None


def save_results(results: ContinualResults, directory: str | Path) -> Path:
    """Write ``results.json`` and, where matplotlib is installed, the accuracy-matrix figure.

    Args:
        results: what the run measured.
        directory: the run's log directory (created if missing).

    Returns:
        The path of ``results.json``.

    Example:
        >>> import tempfile
        >>> from lightning_cl.evaluation import MetricResults
        >>> acc = MetricResults("accuracy", [[0.9, 0.1], [0.6, 0.8]], trained=[0, 1], tested=[0, 1])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_results(ContinualResults({"accuracy": acc}), d)
        ...     sorted(p.name for p in path.parent.iterdir())
        ['accuracy_matrix.png', 'results.json']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    results.to_json(path)
    if results.tested:
        _save_figure(results, directory / FIGURE_FILE)
    return path


def _save_figure(results: ContinualResults, path: Path) -> None:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        rank_zero_info(f"lightning_cl: no {path.name} (the figure needs matplotlib: pip install matplotlib)")
        return
    from lightning_cl.evaluation import plot_matrix

    # A Figure of its own, not pyplot's: no GUI backend, nothing left open.
    figure = Figure(figsize=(1.6 + 0.75 * len(results.tested), 1.2 + 0.55 * len(results.trained)))
    plot_matrix(results["accuracy"], ax=figure.subplots(), path=path)


def _summary_line(
    experience: Experience, position: int, total: int, results: ContinualResults, seconds: float
) -> str:
    parts = [f"lightning_cl: experience {experience.index} ({position + 1}/{total}) done in {seconds:.1f} s"]
    if results.trained and results.trained[-1] == experience.index:
        seen, stream = results.seen_accuracy, results.stream_accuracy
        if not math.isnan(seen):
            parts.append(f"accuracy on experiences seen so far {seen:.4f}")
        if stream and not math.isnan(stream[-1]):
            parts.append(f"stream accuracy {stream[-1]:.4f}")
    return " | ".join(parts)


def _already_trained(module: ContinualModule) -> list[int]:
    trained = set(module.results.trained)
    if module.current_experience is not None:
        trained.add(module.current_experience)
    return sorted(trained)


def _resolve_last(
    ckpt_path: str | Path, checkpoint_dir: Path | None, log_dir: Path | None, root: Path
) -> Path:
    if checkpoint_dir is not None:
        search = checkpoint_dir
    elif log_dir is not None:
        search = log_dir.parent  # every version of the run's logger: version_0/checkpoints, ...
    else:
        search = root / "checkpoints"
    found = latest_checkpoint(search)
    if found is None:
        raise FileNotFoundError(
            f"ckpt_path={str(ckpt_path)!r}: no stream checkpoint ({checkpoint_name(0)[:11]}*.ckpt) "
            f"under {search}; pass the path of one"
        )
    return found


def per_experience_callbacks(callbacks: Iterable[L.Callback]) -> list[L.Callback]:
    """One experience's trainer callbacks: the same objects, and a fresh copy of each ``EarlyStopping``.

    Lightning's ``EarlyStopping`` keeps its best value and patience count across fits; reused
    over experiences it would compare one experience's validation loss with another's. A
    ``deepcopy`` of the instance as passed in starts every experience afresh (Avalanche's
    ``EarlyStoppingPlugin`` resets likewise).

    Example:
        >>> es = EarlyStopping(monitor="val/loss")
        >>> [c is es for c in per_experience_callbacks([es])]
        [False]
    """
    return [copy.deepcopy(c) if isinstance(c, EarlyStopping) else c for c in callbacks]


def fit_stream(
    module: ContinualModule,
    benchmark: Benchmark,
    *,
    callbacks: Iterable[L.Callback] = (),
    trainer_kwargs: Mapping[str, Any] | None = None,
    logger: bool | Logger | Iterable[Logger] | None = True,
    test_stream: Stream | None = None,
    train_stream: Stream | None = None,
    evaluate: bool = True,
    evaluate_initial: bool = False,
    ckpt_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    max_experiences: int | None = None,
    strict_callbacks: bool = True,
) -> ContinualResults:
    """Train ``module`` on every experience of ``benchmark.train_stream``, testing after each.

    Exactly the plain loop: for each experience a new ``L.Trainer(**trainer_kwargs)`` with the
    same ``callbacks`` objects (so CL state carries over; an ``EarlyStopping`` is the exception:
    each experience gets a fresh copy of it, as passed in, so it stops that experience on that
    experience's validation values alone) and the same logger (so the run's
    metrics land in one place, steps counted over the whole stream), ``trainer.fit`` on the
    experience, then ``trainer.test`` on the whole test stream, which fills row ``i`` of the
    accuracy matrix. With a logger, ``results.json`` and the accuracy-matrix figure
    (``accuracy_matrix.png``, where matplotlib is installed) are written to its log directory.

    After each experience, one line is logged on rank 0 (through Lightning's logger, so
    ``logging`` settings apply): the experience, its time, the accuracy on the experiences seen
    so far and on the whole test stream. Lightning's start-up lines (devices, tips) and the
    model summary are shown for the first experience only.

    After each experience (trained and tested) a Lightning checkpoint ``experience_<i>.ckpt``
    is saved with ``trainer.save_checkpoint``: weights and grown heads, the module's stream
    state (experience, classes seen, accuracy matrix, kept optimizer state), every callback's
    ``state_dict`` (a replay buffer as indices, EWC's Fisher, ...), the benchmark's fingerprint
    and the RNG states. ``ckpt_path`` resumes from such a checkpoint at the next experience, or
    from a Lightning checkpoint saved inside an experience (``ModelCheckpoint``), inside it.

    Args:
        module: the module to train: a fresh one, or with ``ckpt_path`` the one to restore into.
        benchmark: where the streams come from.
        callbacks: CL methods and any other Lightning callbacks, reused for every experience.
        trainer_kwargs: arguments of every ``L.Trainer`` (``max_epochs``, ``accelerator``,
            ``devices``, ``strategy``, ``precision``, ...). ``enable_checkpointing=False`` turns
            the per-experience checkpoints off; ``enable_model_summary`` (default on) applies to
            the first experience only; ``enable_progress_bar`` defaults to on where standard
            output is a terminal and off otherwise (logs, pipes, notebooks' captured output).
        logger: ``True`` for a CSV logger under ``default_root_dir`` (or the working directory),
            a Lightning logger (or list), or ``False`` for none.
        test_stream: evaluate on this stream instead of ``benchmark.test_stream``.
        train_stream: train on this stream instead of ``benchmark.train_stream`` (a slice of it,
            or ``cumulative(benchmark.train_stream)`` / ``joint(...)`` for the reference runs).
        evaluate: test after each experience.
        evaluate_initial: also test the untrained model once, before the first experience (the
            ``untrained`` row of the results, which forward transfer needs); not on resume.
        ckpt_path: a checkpoint of this stream to resume from, or ``"last"``: the newest
            ``experience_<i>.ckpt`` under ``checkpoint_dir`` when given, else under the logger's
            directory of runs (every ``version_*``), else under ``default_root_dir``.
        checkpoint_dir: where the per-experience checkpoints go (default: ``checkpoints/`` in
            the logger's directory, else in ``default_root_dir`` or the working directory).
        max_experiences: train at most this many experiences in this call, then return (a job
            with a time limit; the next call resumes from the last checkpoint).
        strict_callbacks: on resume, require the CL callbacks given to be those whose states the
            checkpoint holds (matched by ``state_key``). ``False`` allows a deliberate change:
            states without a callback are dropped (with a warning), new callbacks start empty.

    Returns:
        :attr:`ContinualModule.results` after the last experience.

    Raises:
        ValueError: if ``trainer_kwargs`` holds ``callbacks`` or ``logger`` (pass them directly);
            if ``ckpt_path`` belongs to another benchmark, does not fit the model, or (with
            ``strict_callbacks``) holds the states of other CL callbacks than those given; if
            ``module`` has already trained an experience that this call would train again
            (a module from an earlier loop or run: pass a fresh module, or ``ckpt_path``). The
            module and callbacks are then left as they were.
        FileNotFoundError: if ``ckpt_path`` does not exist (or ``"last"`` finds no checkpoint).
        MisconfigurationException: for a strategy that loses callback state between fits
            (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``).

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> from lightning_cl.models import MLP
        >>> bench = SplitDigits(n_experiences=2)
        >>> module = ContinualModule(MLP(input_size=64, hidden_size=16))
        >>> results = fit_stream(module, bench, logger=False, trainer_kwargs=dict(
        ...     max_epochs=1, enable_progress_bar=False, accelerator="cpu", enable_checkpointing=False))
        >>> len(results.accuracy_matrix)
        2
    """
    if max_experiences is not None and (
        isinstance(max_experiences, bool) or not isinstance(max_experiences, int) or max_experiences < 1
    ):
        raise ValueError(f"max_experiences must be a positive int or None, got {max_experiences!r}")
    kwargs = dict(trainer_kwargs or {})
    clash = [k for k in _OWN_KEYS if k in kwargs]
    if clash:
        raise ValueError(f"pass {clash} as fit_stream arguments, not inside trainer_kwargs")
    _check_strategy(kwargs.get("strategy"))
    callbacks = list(callbacks)
    save_checkpoints = bool(kwargs.pop("enable_checkpointing", True))
    # Lightning's own per-fit ModelCheckpoint only where the user asked for one.
    kwargs["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    summary = kwargs.pop("enable_model_summary", None)
    summary = True if summary is None else bool(summary)
    if kwargs.get("enable_progress_bar") is None:
        kwargs["enable_progress_bar"] = sys.stdout.isatty()

    root = Path(kwargs.get("default_root_dir") or Path.cwd())
    shared_logger = resolve_logger(logger, root)
    log_dir = log_dir_of(shared_logger)
    stream = test_stream if test_stream is not None else benchmark.test_stream
    experiences = list(train_stream if train_stream is not None else benchmark.train_stream)
    start, resume_inside = 0, None
    if ckpt_path is not None:
        if str(ckpt_path) == "last":
            ckpt_path = _resolve_last(
                ckpt_path, Path(checkpoint_dir) if checkpoint_dir is not None else None, log_dir, root
            )
        checkpoint = load_stream_checkpoint(ckpt_path, benchmark, module)
        check_callback_states(checkpoint, callbacks, ckpt_path, strict=strict_callbacks)
        state = checkpoint["lightning_cl"]
        position = [e.index for e in experiences].index(state["current_experience"])
        if state.get("experience_complete", True):
            apply_stream_checkpoint(checkpoint, module, callbacks)
            start = position + 1
        else:
            start, resume_inside = position, ckpt_path
        rank_zero_info(
            f"lightning_cl: resuming from {ckpt_path} at experience {experiences[start].index}"
            if start < len(experiences)
            else f"lightning_cl: {ckpt_path} ends the stream"
        )
    elif experiences:
        done = _already_trained(module)
        if experiences[0].index in done:
            raise ValueError(
                f"this module has already trained experiences {done} (current_experience="
                f"{module.current_experience}): fit_stream would train experience {experiences[0].index} "
                "again and overwrite its row of the accuracy matrix; pass a fresh ContinualModule for a "
                "new run, or ckpt_path=... (a checkpoint of the earlier run) to continue it"
            )

    if checkpoint_dir is None:
        checkpoint_dir = (log_dir or root) / "checkpoints"
    info = StreamCheckpointInfo(benchmark_fingerprint(benchmark))
    trainer: L.Trainer | None = None
    stop = len(experiences) if max_experiences is None else min(len(experiences), start + max_experiences)
    with start_up_lines() as start_up:
        if evaluate_initial and ckpt_path is None and start < stop:
            # The untrained model's values: row None of every metric's matrix (FWT's baseline).
            L.Trainer(logger=shared_logger, enable_model_summary=False, **kwargs).test(
                module, datamodule=stream, verbose=False
            )
        for position in range(start, stop):
            experience = experiences[position]
            began = time.perf_counter()
            first = position == start
            # Lightning appends its own defaults to the list it gets: each trainer gets a fresh list.
            trainer = L.Trainer(
                callbacks=[*per_experience_callbacks(callbacks), info],
                logger=shared_logger,
                enable_model_summary=summary and first,
                **kwargs,
            )
            trainer.fit(module, datamodule=experience, ckpt_path=resume_inside if first else None)
            if evaluate:
                trainer.test(module, datamodule=stream, verbose=False)
            if save_checkpoints:
                trainer.save_checkpoint(
                    Path(checkpoint_dir) / checkpoint_name(experience.index), weights_only=False
                )
            rank_zero_info(
                _summary_line(
                    experience, position, len(experiences), module.results, time.perf_counter() - began
                )
            )
            start_up.hide()
    results = module.results
    if log_dir is not None and (trainer is None or trainer.is_global_zero):
        save_results(results, log_dir)
    if trainer is None or trainer.is_global_zero:
        log_figures(results, shared_logger, step=module.global_step_all)
    return results
