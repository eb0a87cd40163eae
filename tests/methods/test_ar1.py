"""AR1* with latent replay: the memory's replacement rule, frozen lower layers, replayed classes in CWR*."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch import nn

from lightning_cl.data import SplitDigits
from lightning_cl.methods import AR1, SI, CWRStar
from lightning_cl.models import CNN, BatchRenorm2d, BatchRenormSettings, ContinualModule
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
    with pytest.raises(ValueError, match="batch_renorm must be True, False or a BatchRenormSettings"):
        AR1(batch_renorm="yes")  # type: ignore[arg-type]


def test_batch_renormalisation_on_a_cnn_with_batch_norm_and_si() -> None:
    # The paper's AR1: CWR* + latent replay + SI, the model's batch normalisation renormalised.
    L.seed_everything(1)
    model = CNN(num_classes=10, channels=(8, 16), drop_rate=0.0, batch_norm=True)
    module = ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    settings = BatchRenormSettings(warmup_steps=10, r_max_steps=30, d_max_steps=20)
    ar1, si = AR1(latent_layer="features.7", mem_size=100, seed=3, batch_renorm=settings), SI(si_lambda=0.1)
    results = fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[ar1, si],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=2),
        max_experiences=2,
    )
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(layers) == 4 and all(isinstance(m, BatchRenorm2d) for m in layers)
    steps = module.global_step_all
    assert steps > 30 and all(int(m.num_batches_tracked) == steps for m in layers)
    assert layers[0].limits() == (3.0, 5.0)  # the schedule relaxed the clipping fully
    assert not any(p.requires_grad is False for p in model.parameters())  # flags given back
    assert si.importance and len(ar1.indices) == 100
    assert results.accuracy_matrix[1][0] > 0.3  # the first experience's classes are remembered
