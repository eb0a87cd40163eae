from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import DER, Replay
from tests.conftest import digits_module, quiet_trainer_kwargs
from tests.methods.permuted_digits import run_permuted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mem_size=0), "mem_size must be an int >= 1, got 0"),
        (dict(alpha=-0.1), "alpha must be a number >= 0, got -0.1"),
        (dict(beta=-2), "beta must be a number >= 0, got -2"),
        (dict(mem_batch_size=0), "mem_batch_size must be a positive int or None, got 0"),
        (dict(policy="fifo"), "policy must be one of .*, got 'fifo'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DER(**kwargs)


def test_logits_are_recorded_when_samples_enter_and_kept_after() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, der = digits_module(), DER(mem_size=60, seed=0)
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[der]).fit(
        module, datamodule=bench.train_stream[0]
    )
    memory = der.buffer.dataset(bench.train_stream[0].dataset)
    assert memory is not None and torch.equal(der.logit_index, memory.indices.sort().values)
    x, _, t = memory.__getitems__(torch.arange(len(memory)))
    module.eval()
    with torch.no_grad():
        expected = module(x, t)
    rows = torch.searchsorted(der.logit_index, memory.indices)
    torch.testing.assert_close(der.logits[rows], expected)
    before = dict(zip(der.logit_index.tolist(), der.logits))
    module.train()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[der]).fit(
        module, datamodule=bench.train_stream[1]
    )
    memory = der.buffer.dataset(bench.train_stream[1].dataset)
    assert memory is not None and len(der.logit_index) == len(memory) == 60  # the ones that left are gone
    kept = [i for i in der.logit_index.tolist() if i in before]
    assert kept  # and those that stayed keep the logits of the model that stored them
    for i in kept:
        row = int(torch.searchsorted(der.logit_index, torch.tensor(i)))
        torch.testing.assert_close(der.logits[row], before[i])


def test_der_beats_replay_on_permuted_digits() -> None:
    naive = run_permuted([])
    replay = run_permuted([Replay(mem_size=200)])
    der = run_permuted([DER(mem_size=200, alpha=0.5, beta=0.0)])
    assert der.average_accuracy > naive.average_accuracy + 0.3
    assert der.average_accuracy > replay.average_accuracy + 0.02
