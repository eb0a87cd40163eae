"""``fit_stream``: the plain per-experience Lightning loop, as one function."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.stream import Stream
from lightning_cl.evaluation.accuracy_matrix import ContinualResults
from lightning_cl.models.module import ContinualModule

__all__ = ["RESULTS_FILE", "fit_stream", "log_dir_of", "resolve_logger"]

RESULTS_FILE = "results.json"
_REFUSED_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true")
_OWN_KEYS = ("callbacks", "logger")
_DEFAULTS: dict[str, Any] = {"enable_checkpointing": False, "enable_model_summary": False}


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
        return CSVLogger(save_dir=str(root), name="lightning_cl")
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
    evaluate: bool = True,
) -> ContinualResults:
    """Train ``module`` on every experience of ``benchmark.train_stream``, testing after each.

    Exactly the plain loop: for each experience a new ``L.Trainer(**trainer_kwargs)`` with the
    same ``callbacks`` objects (so CL state carries over) and the same logger (so the run's
    metrics land in one place, steps counted over the whole stream), ``trainer.fit`` on the
    experience, then ``trainer.test`` on the whole test stream, which fills row ``i`` of the
    accuracy matrix. With a logger, ``results.json`` is written to its log directory.

    Args:
        module: the module to train.
        benchmark: where the streams come from.
        callbacks: CL methods and any other Lightning callbacks, reused for every experience.
        trainer_kwargs: arguments of every ``L.Trainer`` (``max_epochs``, ``accelerator``,
            ``devices``, ``strategy``, ``precision``, ...). Checkpointing and the model summary
            default to off.
        logger: ``True`` for a CSV logger under ``default_root_dir`` (or the working directory),
            a Lightning logger (or list), or ``False`` for none.
        test_stream: evaluate on this stream instead of ``benchmark.test_stream``.
        evaluate: test after each experience.

    Returns:
        :attr:`ContinualModule.results` after the last experience.

    Raises:
        ValueError: if ``trainer_kwargs`` holds ``callbacks`` or ``logger`` (pass them directly).
        MisconfigurationException: for a strategy that loses callback state between fits
            (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``).

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> from lightning_cl.models import MLP
        >>> bench = SplitDigits(n_experiences=2)
        >>> module = ContinualModule(MLP(input_size=64, hidden_size=16))
        >>> results = fit_stream(module, bench, logger=False, trainer_kwargs=dict(
        ...     max_epochs=1, enable_progress_bar=False, accelerator="cpu"))
        >>> len(results.accuracy_matrix)
        2
    """
    kwargs = dict(trainer_kwargs or {})
    clash = [k for k in _OWN_KEYS if k in kwargs]
    if clash:
        raise ValueError(f"pass {clash} as fit_stream arguments, not inside trainer_kwargs")
    _check_strategy(kwargs.get("strategy"))
    for key, value in _DEFAULTS.items():
        kwargs.setdefault(key, value)
    callbacks = list(callbacks)
    shared_logger = resolve_logger(logger, kwargs.get("default_root_dir") or Path.cwd())
    stream = test_stream if test_stream is not None else benchmark.test_stream
    trainer: L.Trainer | None = None
    for experience in benchmark.train_stream:
        rank_zero_info(
            f"lightning_cl: training experience {experience.index} of {len(benchmark.train_stream)}"
        )
        # Lightning appends its own defaults to the list it gets: each trainer gets a fresh list.
        trainer = L.Trainer(callbacks=list(callbacks), logger=shared_logger, **kwargs)
        trainer.fit(module, datamodule=experience)
        if evaluate:
            trainer.test(module, datamodule=stream, verbose=False)
    results = module.results
    log_dir = log_dir_of(shared_logger)
    if log_dir is not None and trainer is not None and trainer.is_global_zero:
        log_dir.mkdir(parents=True, exist_ok=True)
        results.to_json(log_dir / RESULTS_FILE)
    return results
