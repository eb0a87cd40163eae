"""Loader settings: batch sizes, workers, pinning and where augmentation runs, as one object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AUGMENT_ON", "LoaderSettings"]

AUGMENT_ON = ("auto", "loader", "device")
"""Where a training augmentation may run (see :attr:`LoaderSettings.augment_on`)."""


@dataclass(frozen=True)
class LoaderSettings:
    """How the experiences of a benchmark load their data: one object, passed to every benchmark.

    Benchmarks and scenario generators take their data arguments plus one ``loader``; every
    experience they build carries it, and the loaders of replay memories follow it too. On the
    command line and in YAML it is a nested section of the benchmark::

        benchmark:
          class_path: lightning_cl.data.SplitMNIST
          init_args:
            loader:
              batch_size: 64

    or ``--benchmark.init_args.loader.batch_size 64``.

    Args:
        batch_size: samples per training batch (per process under DDP).
        eval_batch_size: samples per evaluation batch (``None``: ``batch_size``).
        num_workers: loader worker processes; in-memory data is fastest with 0 (a
            ``BatchLoader`` in the main process), image files want a few.
        pin_memory: pin batches in page-locked memory for faster host-to-GPU copies.
        augment_on: where a training augmentation runs: ``"loader"`` (on CPU, in the loader or its
            workers), ``"device"`` (on the batch Lightning has moved to the training device), or
            ``"auto"``: the device when training on an accelerator, else the loader.

    Raises:
        ValueError: for a batch size below 1, a negative number of workers or an unknown
            ``augment_on``.

    Example:
        >>> from dataclasses import replace
        >>> settings = LoaderSettings(batch_size=64)
        >>> settings.eval_size, replace(settings, eval_batch_size=256).eval_size
        (64, 256)
    """

    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    augment_on: str = "auto"

    def __post_init__(self) -> None:
        if not _positive_int(self.batch_size):
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.eval_batch_size is not None and not _positive_int(self.eval_batch_size):
            raise ValueError(f"eval_batch_size must be a positive int or None, got {self.eval_batch_size!r}")
        if (
            not isinstance(self.num_workers, int)
            or isinstance(self.num_workers, bool)
            or self.num_workers < 0
        ):
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")
        if not isinstance(self.pin_memory, bool):
            raise ValueError(f"pin_memory must be a bool, got {self.pin_memory!r}")
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {self.augment_on!r}")

    @property
    def eval_size(self) -> int:
        """The evaluation batch size: ``eval_batch_size``, or ``batch_size`` when that is ``None``."""
        return self.eval_batch_size if self.eval_batch_size is not None else self.batch_size


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
