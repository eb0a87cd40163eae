"""Stream checkpoints: what a Lightning checkpoint needs to carry to resume a stream exactly."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.random_state import rng_state, set_rng_state
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.models.module import ContinualModule

__all__ = [
    "STREAM_KEY",
    "StreamCheckpointInfo",
    "apply_stream_checkpoint",
    "benchmark_fingerprint",
    "check_callback_states",
    "checkpoint_name",
    "cl_state_keys",
    "latest_checkpoint",
    "load_stream_checkpoint",
    "rng_state",
    "set_rng_state",
    "stream_checkpoints",
]

STREAM_KEY = "lightning_cl_stream"
"""Checkpoint key of the stream's identity and the RNG states."""


def checkpoint_name(experience: int) -> str:
    """File name of the checkpoint saved after ``experience`` was trained and tested."""
    return f"experience_{experience:03d}.ckpt"


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest per-experience checkpoint (``experience_<i>.ckpt``) anywhere under ``directory``.

    Newest by modification time, then by experience index; ``None`` when there is none.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for i in range(3):
        ...         _ = (Path(d) / checkpoint_name(i)).write_bytes(b"")
        ...     latest_checkpoint(d).name
        'experience_002.ckpt'
    """
    found = stream_checkpoints(directory)
    return found[0] if found else None


def stream_checkpoints(directory: str | Path) -> list[Path]:
    """Every per-experience checkpoint (``experience_<i>.ckpt``) under ``directory``, newest first.

    Newest by modification time, then by experience index; empty when ``directory`` is absent.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.rglob("experience_*.ckpt") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def benchmark_fingerprint(benchmark: Benchmark) -> dict[str, Any]:
    """What identifies a benchmark's streams: name, scenario, classes, order and sizes."""
    return {
        "name": benchmark.name,
        "scenario": benchmark.scenario,
        "n_classes": benchmark.n_classes,
        "class_order": list(benchmark.class_order),
        "classes": [list(e.classes_in_this_experience) for e in benchmark.train_stream],
        "train_sizes": [len(e) for e in benchmark.train_stream],
        "test_sizes": [len(e) for e in benchmark.test_stream],
    }


class StreamCheckpointInfo(L.Callback):
    """Adds the benchmark's fingerprint and the RNG states to every checkpoint of a stream run.

    :func:`~lightning_cl.training.fit_stream` adds it to each experience's trainer, so its own
    checkpoints and any ``ModelCheckpoint`` saved mid-experience carry them. It also records the
    ``state_key`` of every CL callback of the trainer, so that a resume can tell a callback left
    out from one that had no state.
    """

    def __init__(self, fingerprint: dict[str, Any]):
        self.fingerprint = fingerprint

    @override
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        cl_keys = [c.state_key for c in trainer.callbacks if isinstance(c, ContinualCallback)]  # type: ignore[attr-defined]
        checkpoint[STREAM_KEY] = {
            "fingerprint": self.fingerprint,
            "rng": rng_state(),
            "cl_callbacks": cl_keys,
        }


def cl_state_keys(checkpoint: dict[str, Any]) -> list[str] | None:
    """The ``state_key`` of each CL callback a stream checkpoint was written with (``None``: not recorded)."""
    keys = checkpoint.get(STREAM_KEY, {}).get("cl_callbacks")
    return None if keys is None else list(keys)


def check_callback_states(
    checkpoint: dict[str, Any], callbacks: Iterable[L.Callback], path: str | Path, *, strict: bool = True
) -> None:
    """Check that the CL callbacks given are those whose states ``checkpoint`` holds.

    Callbacks are matched by ``state_key`` (the class name, or what the class's ``state_key``
    adds to it). Nothing is changed.

    Args:
        checkpoint: a stream checkpoint, as :func:`load_stream_checkpoint` returns it.
        callbacks: the callbacks of the run that resumes.
        path: the checkpoint's path, for the message.
        strict: raise on a mismatch; ``False`` warns instead (a deliberate change: states
            without a callback are dropped, new callbacks start empty).

    Raises:
        ValueError: with ``strict``, if a CL state in the checkpoint has no callback among
            ``callbacks`` or a CL callback given has no state in the checkpoint (the message
            names both sides); always, if a callback's ``check_state_dict`` refuses its state.
    """
    callbacks = list(callbacks)
    states = checkpoint.get("callbacks", {})
    for callback in callbacks:
        if isinstance(callback, ContinualCallback) and states.get(callback.state_key) is not None:
            try:
                callback.check_state_dict(states[callback.state_key])
            except ValueError as err:
                raise ValueError(f"{path}: the state of {callback.state_key} does not fit: {err}") from None
    saved = cl_state_keys(checkpoint)
    if saved is None:
        return
    given = [c.state_key for c in callbacks if isinstance(c, ContinualCallback)]
    dropped = [k for k in saved if k not in given]
    new = [k for k in given if k not in saved]
    if not dropped and not new:
        return
    parts = []
    if dropped:
        parts.append(f"the state of {dropped} would be dropped")
    if new:
        parts.append(f"{new} would start with no state")
    message = (
        f"{path} was written with the CL callbacks {saved}, but the callbacks given are {given}: "
        f"{' and '.join(parts)}"
    )
    if strict:
        raise ValueError(
            f"{message}; pass the same callbacks (matched by state_key), or strict_callbacks=False "
            "to change them on purpose"
        )
    rank_zero_warn(f"{message} (strict_callbacks=False)")


def load_stream_checkpoint(path: str | Path, benchmark: Benchmark, module: ContinualModule) -> dict[str, Any]:
    """Read a stream checkpoint and check that it belongs to ``benchmark`` and fits ``module``.

    Nothing is changed: the module and callbacks are touched only by
    :func:`apply_stream_checkpoint`, after these checks pass.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a readable checkpoint, was not written by a lightning_cl
            stream run, comes from another benchmark (different classes, order or sizes), its
            weights do not fit the model, or it was written with other evaluation metrics.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable checkpoint (torch.load: {first})") from err
    if not isinstance(checkpoint, dict) or STREAM_KEY not in checkpoint or "lightning_cl" not in checkpoint:
        raise ValueError(
            f"{path} is not a lightning_cl stream checkpoint (written by fit_stream or lightning-cl fit)"
        )
    saved = checkpoint[STREAM_KEY]["fingerprint"]
    current = benchmark_fingerprint(benchmark)
    differences = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differences:
        detail = "; ".join(
            f"{k}: checkpoint {saved.get(k)!r}, benchmark {current.get(k)!r}" for k in differences
        )
        raise ValueError(f"{path} belongs to another benchmark ({detail})")
    _check_weights_fit(path, checkpoint["state_dict"], module)
    module.check_checkpoint_metrics(checkpoint)
    return checkpoint


def _check_weights_fit(path: Path, state_dict: dict[str, Any], module: ContinualModule) -> None:
    weights = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    others = sorted(k for k in state_dict if not k.startswith("model."))
    expected_others = sorted(k for k in module.state_dict() if not k.startswith("model."))
    if others != expected_others:
        raise ValueError(f"{path} does not fit this module: unexpected entries {others}")
    probe = copy.deepcopy(module.model)  # dynamic heads grow on the copy, never on the model itself
    try:
        probe.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit this model: {err}") from None


def apply_stream_checkpoint(
    checkpoint: dict[str, Any], module: ContinualModule, callbacks: Iterable[L.Callback]
) -> None:
    """Restore an experience-boundary checkpoint: weights, module state, callback states, RNG.

    ``EarlyStopping`` states are not restored: they belong to the experience that ended (each
    experience starts a fresh copy of the instance passed in, as an uninterrupted run does).
    """
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    states = checkpoint.get("callbacks", {})
    for callback in callbacks:
        if isinstance(callback, EarlyStopping):
            continue
        state = states.get(callback.state_key)
        if state is not None:
            callback.load_state_dict(copy.deepcopy(state))
    set_rng_state(checkpoint[STREAM_KEY]["rng"])
