"""The ``lightning-cl`` command: ``LightningCLI`` with a benchmark and a per-experience loop.

``lightning-cl fit --config configs/split_digits_replay.yaml`` reads four sections: ``model``
(the :class:`~lightning_cl.models.ContinualModule`), ``benchmark`` (any
:class:`~lightning_cl.data.Benchmark`), ``trainer`` (the ``L.Trainer`` of every experience,
CL methods in ``trainer.callbacks``) and ``seed_everything``. ``lightning-cl fit`` alone runs
the built-in default (SplitDigits, 5 experiences, Replay).
"""

from __future__ import annotations

import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.models.module import ContinualModule
from lightning_cl.training.fit_stream import RESULTS_FILE, fit_stream, log_dir_of, resolve_logger

__all__ = ["DEFAULT_CONFIG", "ContinualCLI", "main"]

DEFAULT_CONFIG = "default.yaml"
"""The built-in configuration (``lightning_cl/training/``), a copy of ``configs/split_digits_replay.yaml``."""


class ContinualCLI(LightningCLI):
    """``LightningCLI`` whose ``fit`` trains a whole stream with :func:`fit_stream`.

    Only the ``fit`` subcommand exists: one Lightning fit per experience, a test on the whole
    test stream after each, the accuracy matrix printed and saved as ``results.json`` in the
    run's log directory.
    """

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(ContinualModule, None, args=args, auto_configure_optimizers=False, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_subclass_arguments(Benchmark, "benchmark", required=True, instantiate=True)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        # Lightning appends its default callbacks to the list it is given: hand it a copy, so the
        # configured callbacks stay as written for the per-experience trainers.
        # That start-up trainer is only a template (each experience gets its own), so it gets no
        # logger of its own either: fit_stream makes or reuses the one logger of the run.
        logger = config.get("logger")
        config = {
            **config,
            "callbacks": list(config.get("callbacks") or []),
            "logger": logger if isinstance(logger, (Logger, list)) else False,
        }
        trainer = super()._instantiate_trainer(config, callbacks)
        built: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        self.extra_callbacks = [c for c in built if isinstance(c, SaveConfigCallback)]
        return trainer

    def fit(self, model: ContinualModule, ckpt_path: str | None = None, **_: Any) -> None:
        config = self.config_init[self.subcommand]
        benchmark = config["benchmark"]
        trainer_config = dict(config["trainer"])
        callbacks = [*(trainer_config.pop("callbacks", None) or []), *self.extra_callbacks]
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
        )
        self._report(results.table(), log_dir_of(logger))

    @rank_zero_only
    def _report(self, table: str, log_dir: Any) -> None:
        print(table)
        if log_dir is not None:
            print(f"results: {log_dir / RESULTS_FILE}")


def _default_config_path() -> str:
    return str(resources.files("lightning_cl.training").joinpath(DEFAULT_CONFIG))


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-cl``; ``lightning-cl fit`` with no options runs the default experiment."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv == ["fit"] or not argv:
        argv = ["fit", "--config", _default_config_path()]
    with warnings.catch_warnings():
        # argv is sys.argv[1:] itself, or the default configuration in its place.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        ContinualCLI(args=argv)


if __name__ == "__main__":
    main()
