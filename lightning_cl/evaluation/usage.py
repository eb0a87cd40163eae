"""What torch and the process already measure, per experience: time, CPU, peak memory, FLOPs per sample.

Nothing here is measured again by hand: wall time and CPU time come from :mod:`time`, the peak
resident memory from :func:`resource.getrusage`, the peak GPU memory from
``torch.cuda.max_memory_allocated``, the FLOPs from ``torch.utils.flop_counter.FlopCounterMode``.
For device statistics at every step, Lightning's ``DeviceStatsMonitor`` callback does it already.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ExperienceUsage"]


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``nan`` where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _inputs(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):  # current data plus replay: the current data's batch
        batch = next(b for b in batch.values() if b is not None)
    x, _, t = batch
    return x, t


class ExperienceUsage(Callback):
    """Logs the cost of each experience: time, CPU time, peak memory, forward FLOPs per sample.

    Opt-in (default evaluation costs nothing more). Keys, logged on rank 0 through the trainer's
    loggers with the stream-wide ``step``:

    - ``usage/epoch_time_s``: wall time of each training epoch;
    - ``usage/experience_time_s``, ``usage/cpu_time_s``: wall and CPU time of the whole fit;
    - ``usage/peak_rss_mb``: the process's peak resident memory so far (``getrusage``);
    - ``usage/peak_gpu_mb``: peak GPU memory allocated during the fit (on CUDA only);
    - ``usage/flops_per_sample``: forward FLOPs per sample, counted once per experience on its
      first training batch with ``FlopCounterMode`` (a multiply-add counts 2: MACs are half).

    The values of every experience are kept in :attr:`records` (and in the callback's state).

    Args:
        flops: count the FLOPs (one extra forward per experience).

    Example:
        >>> usage = ExperienceUsage()
        >>> usage.records
        []
    """

    def __init__(self, flops: bool = True) -> None:
        self.flops = bool(flops)
        self.records: list[dict[str, float]] = []
        self._start = self._cpu = self._epoch = 0.0
        self._current: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return "ExperienceUsage"

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, values: dict[str, float]) -> None:
        step = int(getattr(pl_module, "global_step_all", trainer.global_step))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._cpu = time.perf_counter(), time.process_time()
        self._current = {}
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.flops or "usage/flops_per_sample" in self._current:
            return
        x, t = _inputs(batch)
        counter = FlopCounterMode(display=False)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), counter:
                pl_module(x, t)
        finally:
            pl_module.train(was_training)
        self._current["usage/flops_per_sample"] = counter.get_total_flops() / max(1, len(x))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, {"usage/epoch_time_s": time.perf_counter() - self._epoch})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = {
            **self._current,
            "usage/experience_time_s": time.perf_counter() - self._start,
            "usage/cpu_time_s": time.process_time() - self._cpu,
            "usage/peak_rss_mb": _peak_rss_mb(),
        }
        device = trainer.strategy.root_device
        if device.type == "cuda":
            values["usage/peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 1024**2
        self.records.append(values)
        self._log(trainer, pl_module, values)

    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state_dict.get("records", [])]
