"""Generative replay: a VAE learns the inputs, the previous model labels its samples."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data import SplitDigits, TensorClassificationDataset
from lightning_cl.data.scenarios import class_incremental
from lightning_cl.methods import ERACE, GenerativeReplay
from lightning_cl.models import MLP, MNIST_NORMALISED_RANGE, VAE, ContinualModule
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


def test_the_vae_learns_to_reconstruct_digits() -> None:
    data = SplitDigits(n_experiences=1, seed=1).train_stream[0].dataset
    x, _, _ = data.__getitems__(torch.arange(256))
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), hidden_size=128, latent_size=8)
    rng = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(vae.loss(x, generator=torch.Generator().manual_seed(1)))
        error_before = float((vae(x) - x).pow(2).mean())
    for _ in range(150):
        loss = vae.loss(x[torch.randperm(256, generator=rng)[:64]], generator=rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(vae.loss(x, generator=torch.Generator().manual_seed(1)))
        error_after = float((vae(x) - x).pow(2).mean())
    assert after < 0.7 * before
    assert error_after < 0.5 * error_before
    assert tuple(vae.sample(4).shape) == (4, 1, 8, 8)


def test_the_vae_loss_per_sample_averages_to_the_batch_loss() -> None:
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), hidden_size=16, latent_size=3)
    x = torch.rand(6, 1, 8, 8)
    per_sample = vae.loss(x, generator=torch.Generator().manual_seed(2), reduction="none")
    batch = vae.loss(x, generator=torch.Generator().manual_seed(2))
    assert tuple(per_sample.shape) == (6,)
    assert float(per_sample.mean()) == pytest.approx(float(batch), rel=1e-6)
    # Each row is that sample's own loss: a decoder that outputs the first input whatever the
    # code reconstructs that row exactly (its loss the KL term alone), the others not.
    gaussian = VAE((1, 8, 8), hidden_size=16, latent_size=3, likelihood="gaussian")
    with torch.no_grad():
        gaussian.decoder[-1].weight.zero_()
        gaussian.decoder[-1].bias.copy_(x[0].flatten())
        losses = gaussian.loss(x, generator=torch.Generator().manual_seed(2), reduction="none")
        mean, log_var = gaussian.encode(x[:1])
        kl = float(0.5 * (mean.pow(2) + log_var.exp() - log_var - 1).sum())
    assert float(losses[0]) == pytest.approx(kl, rel=1e-5)
    assert float(losses[1:].min()) > float(losses[0]) + 1.0
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none', got 'sum'"):
        vae.loss(x, reduction="sum")


def test_the_generator_replays_its_earlier_self() -> None:
    """After a second experience the generator models the first one's inputs better with replay."""
    bench = SplitDigits(n_experiences=5, seed=1)
    first, second = bench.train_stream[0], bench.train_stream[1]
    trainer = L.Trainer(**quiet_trainer_kwargs())

    def first_experience_loss(replay_ratio: float) -> float:
        torch.manual_seed(0)
        module = digits_module()
        gr = GenerativeReplay(
            generator_epochs=10, hidden_size=64, latent_size=4, seed=0, replay_ratio=replay_ratio
        )
        gr.on_experience_end(trainer, module, first)
        gr.on_experience_end(trainer, module, second)  # replay weighs 1 - replay_ratio
        x, _, _ = first.dataset.__getitems__(torch.arange(len(first.dataset)))
        assert gr.generator is not None
        with torch.no_grad():
            return float(gr.generator.loss(x, generator=torch.Generator().manual_seed(1)))

    # The same two experiences in the same order; only the weight of the earlier self's samples
    # differs. Measured (negative ELBO per image of the first experience): 27.5 with half the
    # weight on replay, 31.4 without replay (replay_ratio 1).
    assert first_experience_loss(0.5) < 0.93 * first_experience_loss(1.0)


class AlwaysThree(nn.Module):
    """A classifier whose logits put class 3 first whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.zeros(len(x), 10, device=x.device)
        logits[:, 3] = 5.0
        return logits * self.scale + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_generated_samples_are_labelled_by_the_previous_model() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = ContinualModule(AlwaysThree())
    gr = GenerativeReplay(generator_epochs=1, hidden_size=32, latent_size=4, seed=0)
    with pytest.raises(RuntimeError, match="after the first experience"):
        gr.generate(4)
    trainer = L.Trainer(**quiet_trainer_kwargs())
    gr.on_experience_end(trainer, module, bench.train_stream[0])
    x, y, t = gr.generate(16, generator=torch.Generator().manual_seed(0))
    assert tuple(x.shape) == (16, 1, 8, 8)
    assert torch.equal(y, torch.full((16,), 3))
    assert torch.equal(t, torch.zeros(16, dtype=torch.long))
    # The labeller is a frozen copy: changing the live model afterwards changes no label.
    with torch.no_grad():
        module.model.scale.fill_(-1.0)
    assert torch.equal(gr.generate(8)[1], torch.full((8,), 3))


def test_the_task_loss_mixes_current_and_generated_by_the_ratio() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    torch.manual_seed(0)
    module = digits_module()
    gr = GenerativeReplay(generator_epochs=1, hidden_size=32, latent_size=4, seed=0)
    trainer = L.Trainer(**quiet_trainer_kwargs())
    module.trainer = trainer  # type: ignore[assignment]
    x, y, t = bench.train_stream[1].dataset.__getitems__(torch.arange(8))
    logits = module(x, t)
    parts = {"current": slice(0, 8)}
    assert gr.task_loss(module, (x, y, t), logits, parts) is None  # nothing learnt yet
    gr.on_experience_end(trainer, module, bench.train_stream[0])
    gr.on_experience_end(trainer, module, bench.train_stream[1])
    assert gr.experiences_trained == 2 and gr.current_weight(2) == pytest.approx(1 / 3)
    loss = gr.task_loss(module, (x, y, t), logits, parts)
    rng = torch.Generator().manual_seed(0 + 7919 * (module.global_step_all + 1))
    x_gen, y_gen, t_gen = gr.generate(8, generator=rng)
    expected = module.criterion(logits, y) / 3 + 2 / 3 * module.criterion(module(x_gen, t_gen), y_gen)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), abs=1e-5)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="replay_ratio must be one of"):
        GenerativeReplay(replay_ratio="half")
    with pytest.raises(ValueError, match=r"replay_ratio must be one of .* got 0"):
        GenerativeReplay(replay_ratio=0)
    with pytest.raises(ValueError, match="generator_epochs must be an int >= 1"):
        GenerativeReplay(generator_epochs=0)
    with pytest.raises(ValueError, match="generator_lr must be a finite number > 0"):
        GenerativeReplay(generator_lr=-1.0)
    with pytest.raises(ValueError, match=r"generator must be a lightning_cl\.models\.VAE"):
        GenerativeReplay(generator=nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE((1, 8, 8), likelihood="poisson")
    with pytest.raises(ValueError, match="input_shape must be"):
        VAE(())


def test_multi_head_models_and_a_second_task_loss_are_refused() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module = ContinualModule(MLP(input_size=64, hidden_size=16, head="multihead"))
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[GenerativeReplay()])
    with pytest.raises(MisconfigurationException, match="MultiHeadClassifier"):
        trainer.fit(module, datamodule=bench.train_stream[0])
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[GenerativeReplay(), ERACE(mem_size=10)])
    with pytest.raises(MisconfigurationException, match="each replace the task loss"):
        trainer.fit(digits_module(), datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])


def _state_sum(state: dict[str, Any]) -> float:
    return float(sum(v.double().sum() for v in state.values()))


def test_state_round_trips_and_is_small() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    gr = GenerativeReplay(generator_epochs=1, hidden_size=32, latent_size=4, seed=3)
    gr.on_experience_end(L.Trainer(**quiet_trainer_kwargs()), module, bench.train_stream[0])
    state = gr.state_dict()
    fresh = GenerativeReplay(hidden_size=32, latent_size=4)
    fresh.load_state_dict(state)
    assert fresh.generator is not None and fresh.generator.latent_size == 4
    assert _state_sum(fresh.generator.state_dict()) == pytest.approx(_state_sum(state["generator"]))
    assert fresh.experiences_trained == 1 and fresh.seed == 3
    assert fresh.solver_state is not None
    # No data in the state: the generator and one copy of the model.
    n_values = sum(v.numel() for v in state["generator"].values()) + sum(
        v.numel() for v in state["solver"].values()
    )
    assert n_values == sum(p.numel() for p in gr.generator.parameters()) + sum(  # type: ignore[union-attr]
        v.numel() for v in module.model.state_dict().values()
    )


@pytest.mark.slow
def test_class_incremental_digits_beats_naive() -> None:
    def run(callbacks: list[Any]) -> float:
        L.seed_everything(1)
        bench = SplitDigits(n_experiences=5, seed=1)
        results = fit_stream(
            digits_module(), bench, callbacks=callbacks, trainer_kwargs=stream_trainer_kwargs(max_epochs=5)
        )
        return float(results.average_accuracy)

    naive = run([])
    generative = run([GenerativeReplay(generator_epochs=50, latent_size=16, seed=1)])
    # Measured: naive 0.194, generative replay 0.802 (configs/split_digits_generative_replay.yaml,
    # 100 generator epochs and latent size 32: 0.847).
    assert generative > naive + 0.4


@pytest.mark.parametrize("shift, expected", [(0.0, "bernoulli"), (-0.5, "gaussian")])
def test_the_default_generator_fits_its_likelihood_to_the_inputs(shift: float, expected: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4) + shift  # in [0, 1], or normalised-like with negative values
    data = TensorClassificationDataset(x, torch.arange(64) % 2)
    experience = class_incremental(data, data, n_experiences=1, seed=1).train_stream[0]
    replay = GenerativeReplay(
        generator_epochs=2, generator_batch_size=16, hidden_size=8, latent_size=2, seed=0
    )
    replay.train_generator(experience, torch.device("cpu"))
    assert replay.generator is not None and replay.generator.likelihood == expected
    assert all(torch.isfinite(p).all() for p in replay.generator.parameters())


def test_the_bernoulli_likelihood_refuses_inputs_outside_the_unit_interval() -> None:
    vae = VAE((1, 4, 4), hidden_size=8, latent_size=2)
    before = [p.detach().clone() for p in vae.parameters()]
    with pytest.raises(
        ValueError, match=r"Bernoulli likelihood takes inputs in \[0, 1\], got values in \[-0.4"
    ):
        vae.loss(torch.rand(3, 1, 4, 4) * 0.1 - 0.45)  # values in [-0.45, -0.35]
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert torch.isfinite(VAE((1, 4, 4), 8, 2, likelihood="gaussian").loss(torch.rand(3, 1, 4, 4) - 0.5))


def test_the_vae_layout_options_build_what_they_say() -> None:
    vae = VAE((1, 8, 8), latent_size=2, encoder_sizes=(32, 16), decoder_sizes=(8, 12, 24), batch_norm=True)
    linears = [m for m in vae.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (64, 32), (32, 16), (16, 2), (16, 2), (2, 8), (8, 12), (12, 24), (24, 64),
    ]  # fmt: skip
    # One batch norm after every hidden linear layer, none after the decoder's output layer.
    assert [m.num_features for m in vae.modules() if isinstance(m, nn.BatchNorm1d)] == [32, 16, 8, 12, 24]
    assert isinstance(vae.decoder[-1], nn.Linear)
    assert VAE(**vae.config).config == vae.config
    assert tuple(vae.train().loss(torch.rand(4, 1, 8, 8), reduction="none").shape) == (4,)


def test_a_bounded_gaussian_decoder_stays_in_its_range() -> None:
    torch.manual_seed(0)
    low, high = MNIST_NORMALISED_RANGE
    assert low == pytest.approx(-0.1307 / 0.3081) and high == pytest.approx(0.8693 / 0.3081)
    vae = VAE((1, 8, 8), 16, 2, "gaussian", output_range=(low, high))
    with torch.no_grad():
        vae.decoder[-1].bias.fill_(50.0)  # saturates the sigmoid at the top
        top = vae.sample(64, generator=torch.Generator().manual_seed(0))
        vae.decoder[-1].bias.fill_(-50.0)
        bottom = vae.sample(64, generator=torch.Generator().manual_seed(0))
    assert float(top.min()) == pytest.approx(high, abs=1e-5)
    assert float(bottom.max()) == pytest.approx(low, abs=1e-5)
    unbounded = VAE((1, 8, 8), 16, 2, "gaussian")
    with torch.no_grad():
        unbounded.decoder[-1].bias.fill_(50.0)
        assert float(unbounded.sample(4).min()) > 40.0


def test_the_gaussian_variance_scales_the_squared_error() -> None:
    """``variance=0.5`` is Avalanche's summed squared error; the KL term is the same."""
    torch.manual_seed(0)
    unit = VAE((1, 4, 4), 8, 2, "gaussian")
    half = VAE((1, 4, 4), 8, 2, "gaussian", variance=0.5)
    half.load_state_dict(unit.state_dict())
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        mean, log_var = unit.encode(x)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1).sum(1)
        nll_unit = unit.loss(x, generator=torch.Generator().manual_seed(3), reduction="none") - kl
        nll_half = half.loss(x, generator=torch.Generator().manual_seed(3), reduction="none") - kl
    torch.testing.assert_close(nll_half, 2 * nll_unit, rtol=1e-5, atol=1e-5)


def test_avalanche_layout_matches_mlp_vae() -> None:
    vae = VAE.avalanche_mlp_vae()
    assert vae.latent_size == 2 and vae.variance == 0.5 and vae.likelihood == "gaussian"
    assert vae.output_range == pytest.approx(MNIST_NORMALISED_RANGE)
    widths = [m.out_features for m in vae.modules() if isinstance(m, nn.Linear)]
    assert widths == [400, 128, 2, 2, 64, 128, 256, 784]
    assert VAE.avalanche_mlp_vae(normalised_mnist=False).output_range is None


def test_bad_vae_layouts_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"encoder_sizes must be a non-empty sequence of ints >= 1 or None, got \(\)"
    ):
        VAE((1, 8, 8), encoder_sizes=())
    with pytest.raises(ValueError, match=r"decoder_sizes must be .* got \[8, 0\]"):
        VAE((1, 8, 8), decoder_sizes=[8, 0])
    with pytest.raises(
        ValueError, match=r"output_range must be two finite numbers low < high, got \(2.0, 1.0\)"
    ):
        VAE((1, 8, 8), likelihood="gaussian", output_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="output_range bounds the Gaussian decoder's means; the 'bernoulli'"):
        VAE((1, 8, 8), output_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="variance must be a finite number > 0, got 0"):
        VAE((1, 8, 8), likelihood="gaussian", variance=0)
    with pytest.raises(ValueError, match="batch_norm must be a bool, got 'yes'"):
        VAE((1, 8, 8), batch_norm="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"generator_weight_decay must be a finite number >= 0, got -0\.1"):
        GenerativeReplay(generator_weight_decay=-0.1)


def test_a_batch_norm_generator_trains_resumes_and_skips_a_batch_of_one() -> None:
    """A batch-norm VAE trains on an experience whose last batch holds one sample, decays its
    weights, and comes back whole (batch-norm statistics included) from the method's state."""
    bench = SplitDigits(n_experiences=5, seed=1)
    experience = bench.train_stream[0]
    n = len(experience.dataset)
    batch_size = next(b for b in range(5, 40) if n % b == 1)  # the epoch's last batch: one sample
    module = digits_module()
    vae = VAE((1, 8, 8), 16, 2, "gaussian", batch_norm=True, output_range=(0.0, 1.0))
    gr = GenerativeReplay(
        generator=vae,
        generator_epochs=1,
        generator_batch_size=batch_size,
        generator_weight_decay=1e-4,
        seed=3,
    )
    gr.on_experience_end(L.Trainer(**quiet_trainer_kwargs()), module, experience)
    running = [m.running_mean.clone() for m in vae.modules() if isinstance(m, nn.BatchNorm1d)]
    assert all(float(r.abs().sum()) > 0 for r in running)  # the statistics were updated
    fresh = GenerativeReplay()
    fresh.load_state_dict(gr.state_dict())
    assert fresh.generator is not None and fresh.generator.config == vae.config
    restored = [m.running_mean for m in fresh.generator.modules() if isinstance(m, nn.BatchNorm1d)]
    for a, b in zip(running, restored, strict=True):
        torch.testing.assert_close(a, b)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(
        fresh.generator.sample(8, generator=g), vae.sample(8, generator=torch.Generator().manual_seed(0))
    )


def test_replay_size_sets_the_generated_samples_per_step() -> None:
    """Avalanche's replay_size: that many generated samples whatever the batch, for the solver
    and the generator's own replay alike."""
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    sizes: list[int] = []

    class Recording(VAE):
        def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
            sizes.append(n)
            return super().sample(n, generator=generator)

    gr = GenerativeReplay(
        generator=Recording((1, 8, 8), 16, 2),
        generator_epochs=1,
        generator_batch_size=8,
        replay_size=5,
        seed=0,
    )
    trainer = L.Trainer(**quiet_trainer_kwargs())
    module.trainer = trainer  # type: ignore[assignment]
    gr.on_experience_end(trainer, module, bench.train_stream[0])
    gr.on_experience_end(trainer, module, bench.train_stream[1])  # the generator replays its earlier self
    assert sizes and set(sizes) == {5}
    sizes.clear()
    x, y, t = bench.train_stream[2].dataset.__getitems__(torch.arange(12))
    loss = gr.task_loss(module, (x, y, t), module(x, t), {"current": slice(0, 12)})
    assert loss is not None and sizes == [5]
    with pytest.raises(ValueError, match="replay_size must be an int >= 1 or None, got 0"):
        GenerativeReplay(replay_size=0)


def test_a_checkpoint_of_another_generator_layout_is_refused_before_anything_loads() -> None:
    saved = GenerativeReplay(generator=VAE((1, 8, 8), 16, 2, batch_norm=True))
    state = saved.state_dict()
    other = GenerativeReplay(generator=VAE((1, 8, 8), 16, 2, batch_norm=False))
    before = {k: v.clone() for k, v in other.generator.state_dict().items()}
    with pytest.raises(ValueError, match="the checkpoint's generator was built with"):
        other.load_state_dict(state)
    after = other.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The same layout loads.
    same = GenerativeReplay(generator=VAE((1, 8, 8), 16, 2, batch_norm=True))
    same.load_state_dict(state)
    assert torch.equal(same.generator.to_mean.weight, saved.generator.to_mean.weight)


def test_a_numeric_replay_ratio_is_read_as_a_number_on_the_command_line(capsys) -> None:
    from pathlib import Path

    import yaml

    from lightning_cl.training.cli import main

    config = Path(__file__).parents[2] / "configs" / "split_digits_generative_replay.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.callbacks.replay_ratio", "0.5", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    ratio = printed["trainer"]["callbacks"][0]["init_args"]["replay_ratio"]
    assert ratio == 0.5 and isinstance(ratio, float)
    assert GenerativeReplay(replay_ratio=ratio).current_weight(1) == 0.5


def test_a_diverging_generator_is_named_and_left_as_it_was() -> None:
    from lightning_cl.models import NonFiniteLossError

    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    trainer = L.Trainer(**quiet_trainer_kwargs())
    gr = GenerativeReplay(generator_epochs=1, hidden_size=16, latent_size=2, seed=0)
    gr.on_experience_end(trainer, module, bench.train_stream[0])
    assert gr.generator is not None
    before = {k: v.clone() for k, v in gr.generator.state_dict().items()}
    gr.generator_lr = float("1e30")  # the constructor refuses no finite rate; this one diverges
    diverged = r"generator diverged while learning experience 1.*generator_lr=1e\+30"
    with pytest.raises(NonFiniteLossError, match=diverged):
        gr.train_generator(bench.train_stream[1], torch.device("cpu"))
    after = gr.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # A generator built in the failed call is dropped, not kept half-trained.
    fresh = GenerativeReplay(generator_epochs=1, hidden_size=16, latent_size=2, seed=0, generator_lr=1e30)
    with pytest.raises(NonFiniteLossError):
        fresh.train_generator(bench.train_stream[0], torch.device("cpu"))
    assert fresh.generator is None


def test_resuming_with_other_default_generator_sizes_is_refused() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    gr = GenerativeReplay(generator_epochs=1, hidden_size=32, latent_size=4, seed=3)
    gr.on_experience_end(L.Trainer(**quiet_trainer_kwargs()), digits_module(), bench.train_stream[0])
    state = gr.state_dict()
    other = GenerativeReplay(hidden_size=40, latent_size=7)
    sizes = r"hidden_size=32, latent_size=4, this GenerativeReplay has hidden_size=40, latent_size=7"
    with pytest.raises(ValueError, match=sizes):
        other.load_state_dict(state)
    assert other.generator is None and other.experiences_trained == 0
    same = GenerativeReplay(hidden_size=32, latent_size=4)
    same.load_state_dict(state)
    assert same.generator is not None and same.generator.latent_size == 4
    # A generator of an explicit layout is adopted with generator=None, as documented.
    explicit = GenerativeReplay(generator=VAE((1, 8, 8), 16, 2, batch_norm=True))
    adopted = GenerativeReplay()
    adopted.load_state_dict(explicit.state_dict())
    assert adopted.generator is not None and adopted.generator.config == explicit.generator.config


def test_a_generator_that_cannot_take_the_inputs_is_refused_before_the_solver_trains() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    gr = GenerativeReplay(generator=VAE((1, 28, 28), 16, 2), generator_epochs=1)
    shapes = r"generator takes inputs of shape \(1, 28, 28\), but experience 0's have shape \(1, 8, 8\)"
    with pytest.raises(ValueError, match=shapes):
        fit_stream(module, bench, callbacks=[gr], trainer_kwargs=stream_trainer_kwargs())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_inputs_leaving_the_unit_interval_name_the_default_bernoulli_choice() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4)
    x[32:] *= 2.0  # the second experience's inputs reach 2
    y = torch.arange(64) // 32  # classes 0, 1: one per experience
    data = TensorClassificationDataset(x, y)
    bench = class_incremental(data, data, n_experiences=2, class_order=[0, 1])
    module = ContinualModule(MLP(num_classes=2, input_size=16, hidden_size=8, drop_rate=0.0))
    gr = GenerativeReplay(generator_epochs=1, generator_batch_size=16, hidden_size=8, latent_size=2, seed=0)
    chosen = r"default generator with the Bernoulli likelihood.*experience 1's inputs reach.*'gaussian'"
    with pytest.raises(ValueError, match=chosen):
        fit_stream(module, bench, callbacks=[gr], trainer_kwargs=stream_trainer_kwargs())
    assert gr.experiences_trained == 1  # refused when experience 1 started, before it trained


def test_the_vae_refuses_empty_and_non_finite_batches_and_a_bool_count() -> None:
    vae = VAE((1, 4, 4), hidden_size=8, latent_size=2)
    with pytest.raises(ValueError, match="got an empty batch"):
        vae.loss(torch.rand(0, 1, 4, 4))
    with pytest.raises(ValueError, match="finite inputs"):
        vae.loss(torch.full((2, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="n must be an int >= 0, got True"):
        vae.sample(True)
    # A value just above 1 is shown as above 1.
    with pytest.raises(ValueError, match=r"\[0, 1.0000001\]"):
        vae.loss(torch.cat([torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 1.0000001)]))


class _RecordingReplay(GenerativeReplay):
    """Records the sum of every generated batch."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.drawn: list[float] = []

    def generate(self, n: int, task_label: int = 0, generator: torch.Generator | None = None) -> Any:
        x, y, t = super().generate(n, task_label, generator)
        self.drawn.append(float(x.sum()))
        return x, y, t


@pytest.mark.parametrize("accumulate", [1, 2])
def test_every_batch_draws_its_own_samples_also_with_gradient_accumulation(accumulate: int) -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    gr = _RecordingReplay(generator_epochs=1, hidden_size=16, latent_size=2, seed=2**70)  # any int seed
    fit_stream(
        digits_module(),
        bench,
        callbacks=[gr],
        trainer_kwargs=stream_trainer_kwargs(limit_train_batches=6, accumulate_grad_batches=accumulate),
        max_experiences=2,
    )
    assert len(gr.drawn) == 6  # experience 1's batches
    assert len(set(gr.drawn)) == 6
