"""AR1* with latent replay: the memory's replacement rule, frozen lower layers, replayed classes in CWR*."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import AR1, CWRStar
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


def test_memory_frozen_latent_layers_and_replayed_classes() -> None:
    L.seed_everything(0)
    bench, module = SplitDigits(n_experiences=5, seed=1), digits_module()
    ar1 = AR1(latent_layer="features.1", mem_size=100, seed=3)
    first, second = bench.train_stream[0], bench.train_stream[1]
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[ar1]).fit(module, datamodule=first)
    assert len(ar1.indices) == 100
    base_targets = first.dataset.base_targets
    assert set(base_targets[ar1.indices].tolist()) <= set(first.classes_in_this_experience)
    latent = module.model.features[1].weight.detach().clone()
    consolidated = ar1.consolidated.clone()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[ar1]).fit(module, datamodule=second)
    assert torch.equal(module.model.features[1].weight, latent)  # frozen up to the latent layer
    held = base_targets[ar1.indices]
    # h = mem_size // 2 = 50 samples of the second experience replaced 50 entries.
    assert (
        len(ar1.indices) == 100
        and int(torch.isin(held, torch.tensor(second.classes_in_this_experience)).sum()) == 50
    )
    old = first.classes_in_this_experience
    # The replayed classes were trained and consolidated again, their counts with the memory's.
    assert not torch.equal(ar1.consolidated[old], consolidated[old])
    assert int(ar1.past[old].sum()) == len(first.dataset) + 100


@pytest.mark.slow  # two streams of 3 experiences
def test_latent_replay_beats_cwr_alone() -> None:
    bench, scores = SplitDigits(n_experiences=5, seed=1), {}
    for name, method in (("cwr", CWRStar(freeze_remaining=False)), ("ar1", AR1(mem_size=200, seed=1))):
        L.seed_everything(1)
        results = fit_stream(
            digits_module(),
            bench,
            callbacks=[method],
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(max_epochs=2),
            max_experiences=3,
        )
        scores[name] = results.average_accuracy
    assert scores["ar1"] > scores["cwr"] + 0.1, scores


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mem_size must be an int >= 1"):
        AR1(mem_size=0)
    with pytest.raises(ValueError, match="mem_batch_size must be a positive int or None"):
        AR1(mem_batch_size=0)
    with pytest.raises(ValueError, match="init must be one of"):
        AR1(init="random")
