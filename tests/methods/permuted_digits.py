"""A small domain-incremental stream where plain fine-tuning forgets: permuted UCI digits."""

from __future__ import annotations

from typing import Any

import lightning as L

from lightning_cl.data import Benchmark, LoaderSettings, SplitDigits, permuted
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, stream_trainer_kwargs


def permuted_digits(n_experiences: int = 4, batch_size: int = 32) -> Benchmark:
    """Each experience is all ten digits under its own pixel permutation (seeded)."""
    digits = SplitDigits(n_experiences=1, seed=1)
    train, test = digits.train_stream[0].dataset.base, digits.test_stream[0].dataset.base
    return permuted(train, test, n_experiences, seed=0, loader=LoaderSettings(batch_size=batch_size))


def run_permuted(callbacks: list[Any], max_epochs: int = 5) -> Any:
    """Naive fine-tuning reaches ~0.54 average accuracy here, forgetting the first permutations."""
    L.seed_everything(1)
    return fit_stream(
        digits_module(),
        permuted_digits(),
        callbacks=callbacks,
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=max_epochs),
    )
