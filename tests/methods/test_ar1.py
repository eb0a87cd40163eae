"""AR1* with latent replay: the memory's replacement rule, frozen lower layers, replayed classes in CWR*."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
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
    # Moments at rate 0.1: the frozen layers' moments, fixed after the first experience's ~20 steps,
    # must have settled by then (at the paper's 0.01 they would still be near their initial values).
    settings = BatchRenormSettings(momentum=0.1, warmup_steps=10, r_max_steps=30, d_max_steps=20)
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
    steps, lower, upper = module.global_step_all, layers[:2], layers[2:]
    assert steps > 30 and all(int(m.num_batches_tracked) == steps for m in upper)
    # Below the latent layer: frozen, in eval mode, after the first experience.
    first = int(lower[0].num_batches_tracked)
    assert 0 < first < steps and all(int(m.num_batches_tracked) == first for m in lower)
    assert upper[0].limits() == (3.0, 5.0)  # the schedule relaxed the clipping fully
    assert not any(p.requires_grad is False for p in model.parameters())  # flags given back
    assert si.importance and len(ar1.indices) == 100
    assert results.accuracy_matrix[1][0] > 0.9  # the first experience's classes are remembered


class _LearningRates(L.Callback):
    """The first parameter group's learning rate when each fit's training starts."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


def _bn_cnn_run(experiences: int, **ar1_kwargs: object) -> tuple[CNN, list[dict[str, torch.Tensor]], float]:
    """AR1 on a batch-norm CNN, latent layer ``features.7``: the lower layers' state after each experience."""
    L.seed_everything(1)
    model = CNN(num_classes=10, channels=(8, 16), drop_rate=0.0, batch_norm=True)
    module = ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    settings = BatchRenormSettings(warmup_steps=5, r_max_steps=20, d_max_steps=10)
    ar1 = AR1(latent_layer="features.7", mem_size=60, seed=3, batch_renorm=settings, **ar1_kwargs)  # type: ignore[arg-type]
    bench = SplitDigits(n_experiences=5, seed=1)
    states = [{k: v.clone() for k, v in model.features[:8].state_dict().items()}]
    rates = _LearningRates()
    for experience in bench.train_stream[:experiences]:
        L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[ar1, rates]).fit(
            module, datamodule=experience
        )
        states.append({k: v.clone() for k, v in model.features[:8].state_dict().items()})
    return model, states, rates.seen[-1]


def test_frozen_layers_keep_weights_and_moments_over_a_second_experience() -> None:
    model, (start, first, second), lr = _bn_cnn_run(2)
    moments = [k for k in first if k.endswith(("running_mean", "running_var"))]
    assert len(moments) == 4  # two renormalisation layers below the latent layer
    assert not all(torch.equal(start[k], first[k]) for k in moments)  # the first experience trains them
    for key in first:
        assert torch.equal(first[key], second[key]), key  # weights, moments and step counts unchanged
    above = [m for m in model.features[8:].modules() if isinstance(m, BatchRenorm2d)]
    assert all(m.training for m in model.features)  # the modes were given back
    assert int(above[0].num_batches_tracked) > int(second["1.num_batches_tracked"])  # the rest learnt
    assert lr == pytest.approx(0.05)  # the module's optimizer unchanged without inc_lr


def test_the_frozen_layers_moments_follow_the_data_with_freeze_moments_never() -> None:
    _, (_, first, second), _ = _bn_cnn_run(2, freeze_moments="never")
    assert torch.equal(first["0.weight"], second["0.weight"])  # the weights are frozen
    assert not torch.equal(first["1.running_mean"], second["1.running_mean"])


def test_freeze_moments_always_keeps_the_initial_moments_from_the_first_experience() -> None:
    _, (start, first), _ = _bn_cnn_run(1, freeze_moments="always")
    assert torch.equal(start["1.running_mean"], first["1.running_mean"])
    assert torch.equal(start["4.running_var"], first["4.running_var"])
    assert not torch.equal(start["0.weight"], first["0.weight"])  # the weights still learn at first


def test_later_experiences_take_inc_lr_and_inc_batch_renorm() -> None:
    slow = BatchRenormSettings(
        momentum=5e-5, r_max=1.25, d_max=0.5, warmup_steps=0, r_max_steps=0, d_max_steps=0
    )
    model, _, lr = _bn_cnn_run(2, inc_lr=0.001, inc_batch_renorm=slow)
    assert lr == pytest.approx(0.001)
    layers = [m for m in model.modules() if isinstance(m, BatchRenorm2d)]
    assert all(m.settings == slow and m.limits() == (1.25, 0.5) for m in layers)


def test_inc_lr_is_refused_with_a_scheduler_and_bad_values() -> None:
    with pytest.raises(ValueError, match="freeze_moments must be one of"):
        AR1(freeze_moments="later")
    with pytest.raises(ValueError, match="inc_lr must be a positive number or None, got 0"):
        AR1(inc_lr=0)
    with pytest.raises(ValueError, match="inc_batch_renorm must be a BatchRenormSettings or None"):
        AR1(inc_batch_renorm=0.5)  # type: ignore[arg-type]
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    ar1 = AR1(latent_layer="features.1", mem_size=20, seed=0, inc_lr=0.01)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[ar1]).fit(module, datamodule=bench.train_stream[0])
    with pytest.raises(
        MisconfigurationException, match=r"AR1\(inc_lr=0.01\) .* module's scheduler \(StepLR\)"
    ):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[ar1]).fit(module, datamodule=bench.train_stream[1])


@pytest.mark.parametrize("layer", ["head", "features"])
def test_a_latent_layer_at_or_above_the_output_layer_is_refused_at_set_up(layer: str) -> None:
    # An MLP's head reads the features; naming the head (or a model without layers above the
    # latent one) would leave nothing to train after the first experience.
    bench = SplitDigits(n_experiences=5, seed=1)
    if layer == "head":
        module = digits_module()
    else:  # a model whose output layer is inside "features"
        net = torch.nn.Module()
        net.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # type: ignore[assignment]
        net.forward = lambda x, t=None: net.features(x)  # type: ignore[method-assign]
        module = ContinualModule(net, optimizer=partial(torch.optim.SGD, lr=0.05))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    ar1 = AR1(latent_layer=layer, head_layer="head" if layer == "head" else "features.1", mem_size=20, seed=0)
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[ar1])
    with pytest.raises(ValueError, match=rf"AR1\(latent_layer='{layer}'\) .* nothing would be left to train"):
        trainer.fit(module, datamodule=bench.train_stream[0])
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": "a"}, "seed must be an int or None, got 'a'"),
        ({"seed": 1.5}, "seed must be an int or None, got 1.5"),
        ({"mem_batch_size": 2.5}, "mem_batch_size must be a positive int or None, got 2.5"),
        ({"latent_layer": 3}, r"latent_layer must be a layer name \(str\), got 3"),
    ],
)
def test_bad_seed_and_sizes_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AR1(**kwargs)
