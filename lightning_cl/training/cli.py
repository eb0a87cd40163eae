"""The ``lightning-cl`` command: ``LightningCLI`` with a benchmark and a per-experience loop.

``lightning-cl fit --config configs/split_digits_replay.yaml`` reads four sections: ``model``
(the :class:`~lightning_cl.models.ContinualModule`), ``benchmark`` (any
:class:`~lightning_cl.data.Benchmark`), ``trainer`` (the ``L.Trainer`` of every experience,
CL methods in ``trainer.callbacks``) and ``seed_everything``. Without ``--config``, the
built-in default experiment (SplitDigits, 5 experiences, Replay) is the base that the options
given apply to: ``lightning-cl fit --trainer.max_epochs 2``. Bare ``lightning-cl`` prints usage.
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.models.module import ContinualModule
from lightning_cl.training.fit_stream import (
    FIGURE_FILE,
    RESULTS_FILE,
    fit_stream,
    log_dir_of,
    resolve_logger,
    start_up_lines,
)
from lightning_cl.training.reproduce import main as reproduce_main

__all__ = ["DEBUG_ENV", "DEFAULT_CONFIG", "ContinualCLI", "main"]

DEFAULT_CONFIG = "default.yaml"
"""The built-in configuration (``lightning_cl/training/``), a copy of ``configs/split_digits_replay.yaml``."""

DEBUG_ENV = "LIGHTNING_CL_DEBUG"
"""Set this environment variable (to anything) to see the full traceback of a refused configuration."""

_DESCRIPTION = (
    "lightning_cl: continual learning on Lightning. 'lightning-cl fit' trains one model on every "
    "experience of a benchmark's train stream, testing on the whole test stream after each."
)
_FIT_HELP = (
    "Train the model on every experience of the benchmark, one Lightning fit per experience, test "
    "on the test stream after each; print the accuracy matrix and write results.json, the "
    "accuracy-matrix figure and a checkpoint per experience to the run's log directory. Without "
    "--config, the built-in default experiment (SplitDigits, 5 experiences, Replay) is the base "
    "that the options given apply to."
)
_CKPT_HELP = (
    "Resume a stream run: the path of a checkpoint it wrote (checkpoints/experience_<i>.ckpt, "
    "or a ModelCheckpoint's inside an experience), or 'last' for the newest experience_<i>.ckpt "
    "under trainer.default_root_dir/lightning_logs (every version). (type: Optional[str], default: null)"
)
_STRICT_HELP = (
    "On resume, require trainer.callbacks to hold the CL methods whose states the checkpoint "
    "holds (matched by state_key); false allows a deliberate change. (type: bool, default: true)"
)
_REPRODUCE_HELP = (
    "Run the published-result configs of configs/reproduce/ and check each against its target "
    "(see 'lightning-cl reproduce --help')"
)
_REPRODUCE_KEY_HELP = (
    "The target of a configs/reproduce/ file (value, tolerance, metric, source, data), read by "
    "'lightning-cl reproduce'; ignored by fit. (type: Optional[dict], default: null)"
)
# The errors a configuration or its data can raise; anything else keeps its traceback.
_USER_ERRORS = (
    ValueError,
    TypeError,
    OSError,
    RuntimeError,
    ArithmeticError,
    MisconfigurationException,
)


class ContinualCLI(LightningCLI):
    """``LightningCLI`` whose ``fit`` trains a whole stream with :func:`fit_stream`.

    Only the ``fit`` subcommand exists: one Lightning fit per experience, a test on the whole
    test stream after each, the accuracy matrix printed and saved as ``results.json`` (with its
    figure) in the run's log directory. Options are matched in full (no abbreviations); the
    ``data`` section of ``LightningCLI`` is replaced by ``benchmark``. An error raised while
    the configured classes are built is re-raised as the library's own exception, not as
    jsonargparse's list of union subtypes.

    Args:
        args: the command line (without the program name); ``None`` reads ``sys.argv``.
        **kwargs: passed on to ``LightningCLI``.

    Example:
        >>> ContinualCLI.subcommands()["fit"] >= {"model", "datamodule"}
        True
    """

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        parser_kwargs = dict(kwargs.pop("parser_kwargs", None) or {})
        parser_kwargs.setdefault("prog", "lightning-cl")
        parser_kwargs.setdefault("description", _DESCRIPTION)
        parser_kwargs.setdefault("allow_abbrev", False)
        parser_kwargs["fit"] = {
            "description": _FIT_HELP,
            "allow_abbrev": False,
            **parser_kwargs.get("fit", {}),
        }
        super().__init__(
            ContinualModule,
            None,
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs=parser_kwargs,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule", "weights_only"}}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # LightningCLI describes each subcommand with the Trainer method's docstring ("Runs the full
        # optimization routine"); ours says what lightning-cl fit does.
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        for name in self.subcommands():
            subparser = self._prepare_subcommand_parser(L.Trainer, name, **kwargs.get(name, {}))
            _rewrite_method_help(subparser)
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=_FIT_HELP.split("; ", 1)[0])
        # Listed in the usage only: main() hands `lightning-cl reproduce ...` to its own parser.
        subcommands.add_subcommand("reproduce", ArgumentParser(), help=_REPRODUCE_HELP)

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # As LightningCLI's, without its `data` section: the data is the benchmark.
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.add_lightning_class_args(ContinualModule, "model")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_subclass_arguments(Benchmark, "benchmark", required=True, instantiate=True)
        parser.add_argument("--strict_callbacks", type=bool, default=True, help=_STRICT_HELP)
        # The target section of the configs/reproduce/ files: read by `lightning-cl reproduce`,
        # accepted and ignored here, so those files run unchanged with `lightning-cl fit --config`.
        parser.add_argument("--reproduce", type=dict[str, Any] | None, default=None, help=_REPRODUCE_KEY_HELP)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            # jsonargparse wraps the library's own error in "Does not validate against any of the
            # Union subtypes"; the innermost cause is the message that helps.
            cause = _root_cause(err)
            if cause is err:
                raise
            raise cause.with_traceback(cause.__traceback__) from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        # Lightning appends its default callbacks to the list it is given: hand it a copy, so the
        # configured callbacks stay as written for the per-experience trainers.
        # That start-up trainer is only a template (each experience gets its own), so it gets no
        # logger of its own either: fit_stream makes or reuses the one logger of the run.
        logger = config.get("logger")
        config = {
            **config,
            "callbacks": _callback_list(config.get("callbacks")),
            "logger": logger if isinstance(logger, (Logger, list)) else False,
        }
        with start_up_lines(hidden=True):  # the experiences' trainers show them
            trainer = super()._instantiate_trainer(config, callbacks)
        built: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        self.extra_callbacks = [c for c in built if isinstance(c, SaveConfigCallback)]
        return trainer

    def fit(self, model: ContinualModule, ckpt_path: str | None = None, **_: Any) -> None:
        config = self.config_init[self.subcommand]
        benchmark = config["benchmark"]
        trainer_config = dict(config["trainer"])
        callbacks = [*_callback_list(trainer_config.pop("callbacks", None)), *self.extra_callbacks]
        logger = trainer_config.pop("logger", True)
        trainer_kwargs = {k: v for k, v in trainer_config.items() if v is not None}
        logger = resolve_logger(logger, trainer_kwargs.get("default_root_dir") or Path.cwd())
        results = fit_stream(
            model,
            benchmark,
            callbacks=callbacks,
            trainer_kwargs=trainer_kwargs,
            logger=logger,
            ckpt_path=ckpt_path,
            strict_callbacks=bool(config.get("strict_callbacks", True)),
        )
        self._report(results.table(), log_dir_of(logger))

    @rank_zero_only
    def _report(self, table: str, log_dir: Any) -> None:
        print(table)
        if log_dir is not None:
            print(f"results: {log_dir / RESULTS_FILE}")
            if (log_dir / FIGURE_FILE).is_file():
                print(f"figure: {log_dir / FIGURE_FILE}")


def _rewrite_method_help(parser: LightningArgumentParser) -> None:
    """``--ckpt_path``'s help and group title say what resuming a stream does."""
    for action in parser._actions:
        if action.dest == "ckpt_path":
            action.help = _CKPT_HELP
            for group in parser._action_groups:
                if action in group._group_actions:
                    group.title, group.description = "Resuming a stream run", None


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of the ``__cause__`` / ``__context__`` chain."""
    seen = {id(err)}
    while True:
        inner = err.__cause__ or err.__context__
        if inner is None or id(inner) in seen:
            return err
        seen.add(id(inner))
        err = inner


def _callback_list(value: Any) -> list[Callback]:
    """``trainer.callbacks`` as a list: LightningCLI gives one object when one class is passed."""
    if value is None:
        return []
    if isinstance(value, Callback):
        return [value]
    return list(value)


def _default_config_path() -> str:
    return str(resources.files("lightning_cl.training").joinpath(DEFAULT_CONFIG))


def _has_config(argv: list[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith(("--config=", "-c=")) for a in argv)


def _with_default_config(argv: list[str]) -> list[str]:
    """``fit ...`` without ``--config`` gets the built-in default config first, as the base."""
    if not argv or argv[0] != "fit" or _has_config(argv[1:]):
        return argv
    return ["fit", "--config", _default_config_path(), *argv[1:]]


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-cl``.

    ``lightning-cl`` alone prints usage. ``lightning-cl reproduce ...`` runs the published-result
    configs (:func:`lightning_cl.training.reproduce.main`) and exits with its status.
    ``lightning-cl fit`` runs the built-in default experiment, and
    ``lightning-cl fit --trainer.max_epochs 2`` (any options, no ``--config``)
    runs it with those options applied. An error in the configuration or its data (a bad
    benchmark or method argument, a missing dataset) is printed as the library's message in a
    line or two and exits with status 1; set ``LIGHTNING_CL_DEBUG=1`` for the full traceback.

    Args:
        args: the command line without the program name; ``None`` reads ``sys.argv[1:]``.

    Raises:
        SystemExit: with status 0 after usage or help, 1 for a refused configuration, 2 for
            options the parser does not know.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv:
        argv = ["--help"]
    if argv[0] == "reproduce":
        raise SystemExit(reproduce_main(argv[1:]))
    argv = _with_default_config(argv)
    with warnings.catch_warnings():
        # argv is sys.argv[1:] itself, or the default configuration in its place.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            ContinualCLI(args=argv)
        except _USER_ERRORS as err:
            if os.environ.get(DEBUG_ENV):
                raise
            sys.stderr.write(
                f"lightning-cl: error: {type(err).__name__}: {err}\n"
                f"(set {DEBUG_ENV}=1 for the full traceback)\n"
            )
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
