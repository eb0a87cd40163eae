"""Shared fixtures: quiet CPU trainers, the digits benchmark, and the optional real MNIST files."""

from __future__ import annotations

import os
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_cl.models import MLP, ContinualModule

DATA_ENV = "LIGHTNING_CL_DATA"


def quiet_trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Trainer arguments for fast, silent CPU runs in tests."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    kwargs.update(overrides)
    return kwargs


def digits_module(**module_kwargs: Any) -> ContinualModule:
    """The tests' SplitDigits model: MLP 64-256-10 without dropout, SGD lr 0.05 momentum 0.9."""
    module_kwargs.setdefault("optimizer", partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    model = MLP(num_classes=10, input_size=64, hidden_size=256, drop_rate=0.0)
    return ContinualModule(model, **module_kwargs)


def stream_trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """``quiet_trainer_kwargs`` for ``fit_stream``, which takes the logger as its own argument."""
    kwargs = quiet_trainer_kwargs(**overrides)
    kwargs.pop("logger")
    return kwargs


@pytest.fixture
def trainer_kwargs() -> dict[str, Any]:
    return quiet_trainer_kwargs()


@pytest.fixture
def data_root() -> Path:
    """The folder holding ``MNIST/raw``, named by ``LIGHTNING_CL_DATA``; the test is skipped without it."""
    root = os.environ.get(DATA_ENV)
    if not root:
        pytest.skip(f"real MNIST needed: set {DATA_ENV} to the folder that holds MNIST/raw")
    path = Path(root)
    if not (path / "MNIST" / "raw").is_dir():
        pytest.skip(f"{DATA_ENV}={root} has no MNIST/raw folder")
    return path


def _split_digits_run(callbacks: list[Any], max_epochs: int) -> float:
    import lightning as L

    from lightning_cl.data import SplitDigits
    from lightning_cl.training import fit_stream

    L.seed_everything(1)
    results = fit_stream(
        digits_module(),
        SplitDigits(n_experiences=5, seed=1),
        callbacks=callbacks,
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=max_epochs),
    )
    return results.average_accuracy


@cache
def _naive_split_digits_average(max_epochs: int) -> float:
    return _split_digits_run([], max_epochs)


def split_digits_average(callbacks: list[Any], max_epochs: int = 2) -> float:
    """Final average accuracy of ``digits_module()`` on SplitDigits (5 experiences, seed 1).

    Fine-tuning (no callbacks) is seeded, so its value is computed once per session and shared by
    the methods' "beats Naive" tests.
    """
    if not callbacks:
        return _naive_split_digits_average(max_epochs)
    return _split_digits_run(callbacks, max_epochs)
