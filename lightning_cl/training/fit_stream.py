"""``fit_stream``: the plain per-experience Lightning loop, as one function."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.stream import Stream
from lightning_cl.evaluation.accuracy_matrix import ContinualResults
from lightning_cl.models.module import ContinualModule
from lightning_cl.training.checkpoint import (
    StreamCheckpointInfo,
    apply_stream_checkpoint,
    benchmark_fingerprint,
    checkpoint_name,
    load_stream_checkpoint,
)

__all__ = ["RESULTS_FILE", "fit_stream", "log_dir_of", "resolve_logger"]

RESULTS_FILE = "results.json"
_REFUSED_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true")
_OWN_KEYS = ("callbacks", "logger")


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
    ckpt_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    max_experiences: int | None = None,
) -> ContinualResults:
    """Train ``module`` on every experience of ``benchmark.train_stream``, testing after each.

    Exactly the plain loop: for each experience a new ``L.Trainer(**trainer_kwargs)`` with the
    same ``callbacks`` objects (so CL state carries over) and the same logger (so the run's
    metrics land in one place, steps counted over the whole stream), ``trainer.fit`` on the
    experience, then ``trainer.test`` on the whole test stream, which fills row ``i`` of the
    accuracy matrix. With a logger, ``results.json`` is written to its log directory.

    After each experience (trained and tested) a Lightning checkpoint ``experience_<i>.ckpt``
    is saved with ``trainer.save_checkpoint``: weights and grown heads, the module's stream
    state (experience, classes seen, accuracy matrix, kept optimizer state), every callback's
    ``state_dict`` (a replay buffer as indices, EWC's Fisher, ...), the benchmark's fingerprint
    and the RNG states. ``ckpt_path`` resumes from such a checkpoint at the next experience, or
    from a Lightning checkpoint saved inside an experience (``ModelCheckpoint``), inside it.

    Args:
        module: the module to train.
        benchmark: where the streams come from.
        callbacks: CL methods and any other Lightning callbacks, reused for every experience.
        trainer_kwargs: arguments of every ``L.Trainer`` (``max_epochs``, ``accelerator``,
            ``devices``, ``strategy``, ``precision``, ...). ``enable_checkpointing=False`` turns
            the per-experience checkpoints off; the model summary defaults to off.
        logger: ``True`` for a CSV logger under ``default_root_dir`` (or the working directory),
            a Lightning logger (or list), or ``False`` for none.
        test_stream: evaluate on this stream instead of ``benchmark.test_stream``.
        train_stream: train on this stream instead of ``benchmark.train_stream`` (a slice of it,
            or ``cumulative(benchmark.train_stream)`` / ``joint(...)`` for the reference runs).
        evaluate: test after each experience.
        ckpt_path: a checkpoint of this stream to resume from.
        checkpoint_dir: where the per-experience checkpoints go (default: ``checkpoints/`` in
            the logger's directory, else in ``default_root_dir`` or the working directory).
        max_experiences: train at most this many experiences in this call, then return (a job
            with a time limit; the next call resumes from the last checkpoint).

    Returns:
        :attr:`ContinualModule.results` after the last experience.

    Raises:
        ValueError: if ``trainer_kwargs`` holds ``callbacks`` or ``logger`` (pass them directly),
            or ``ckpt_path`` belongs to another benchmark or does not fit the model; the module
            and callbacks are then left as they were.
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
    if max_experiences is not None and max_experiences < 1:
        raise ValueError(f"max_experiences must be a positive int or None, got {max_experiences}")
    kwargs = dict(trainer_kwargs or {})
    clash = [k for k in _OWN_KEYS if k in kwargs]
    if clash:
        raise ValueError(f"pass {clash} as fit_stream arguments, not inside trainer_kwargs")
    _check_strategy(kwargs.get("strategy"))
    callbacks = list(callbacks)
    save_checkpoints = bool(kwargs.pop("enable_checkpointing", True))
    # Lightning's own per-fit ModelCheckpoint only where the user asked for one.
    kwargs["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    kwargs.setdefault("enable_model_summary", False)

    stream = test_stream if test_stream is not None else benchmark.test_stream
    experiences = list(train_stream if train_stream is not None else benchmark.train_stream)
    start, resume_inside = 0, None
    if ckpt_path is not None:
        checkpoint = load_stream_checkpoint(ckpt_path, benchmark, module)
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

    shared_logger = resolve_logger(logger, kwargs.get("default_root_dir") or Path.cwd())
    log_dir = log_dir_of(shared_logger)
    if checkpoint_dir is None:
        checkpoint_dir = (log_dir or Path(kwargs.get("default_root_dir") or Path.cwd())) / "checkpoints"
    info = StreamCheckpointInfo(benchmark_fingerprint(benchmark))
    trainer: L.Trainer | None = None
    stop = len(experiences) if max_experiences is None else min(len(experiences), start + max_experiences)
    for position in range(start, stop):
        experience = experiences[position]
        rank_zero_info(f"lightning_cl: experience {experience.index} ({position + 1} of {len(experiences)})")
        # Lightning appends its own defaults to the list it gets: each trainer gets a fresh list.
        trainer = L.Trainer(callbacks=[*callbacks, info], logger=shared_logger, **kwargs)
        trainer.fit(module, datamodule=experience, ckpt_path=resume_inside if position == start else None)
        if evaluate:
            trainer.test(module, datamodule=stream, verbose=False)
        if save_checkpoints:
            trainer.save_checkpoint(
                Path(checkpoint_dir) / checkpoint_name(experience.index), weights_only=False
            )
    results = module.results
    if log_dir is not None and (trainer is None or trainer.is_global_zero):
        log_dir.mkdir(parents=True, exist_ok=True)
        results.to_json(log_dir / RESULTS_FILE)
    return results
