from __future__ import annotations

import itertools
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import GEM, gem_projection
from tests.conftest import digits_module, quiet_trainer_kwargs
from tests.methods.permuted_digits import run_permuted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(patterns_per_experience=0), "patterns_per_experience must be an int >= 1, got 0"),
        (dict(memory_strength=-0.1), "memory_strength must be a number >= 0, got -0.1"),
        (dict(cache_memory=1), "cache_memory must be a bool, got 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GEM(**kwargs)


def _closest_feasible(G: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Brute force over active sets: the closest gradient with G x >= 0."""
    best = None
    for size in range(len(G) + 1):
        for active in itertools.combinations(range(len(G)), size):
            x = g.clone()
            if active:
                Ga = G[list(active)]
                v = torch.linalg.solve(Ga @ Ga.T, -(Ga @ g))
                if bool((v < 0).any()):
                    continue
                x = g + Ga.T @ v
            if bool((G @ x >= -1e-9).all()) and (best is None or (x - g).norm() < (best - g).norm()):
                best = x
    assert best is not None
    return best


def test_the_projection_is_the_closest_gradient_that_opposes_no_memory() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        G = torch.randn(3, 12, generator=gen, dtype=torch.float64)
        g = torch.randn(12, generator=gen, dtype=torch.float64)
        projected = gem_projection(G, g, margin=0.0, eps=1e-12, tol=1e-14, max_sweeps=10_000)
        assert bool((G @ projected >= -1e-6).all())
        torch.testing.assert_close(projected, _closest_feasible(G, g), atol=1e-6, rtol=1e-6)


def test_a_satisfied_constraint_leaves_the_gradient_alone() -> None:
    G, g = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.5, 2.0])
    torch.testing.assert_close(gem_projection(G, g, margin=0.0, eps=1e-12), g)


class _ConstraintProbe(L.Callback):
    """Listed after GEM: the step's gradient against each past experience's memory gradient."""

    def __init__(self, gem: GEM) -> None:
        self.gem = gem
        self.dots: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.gem.memory is None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        rows = self.gem.memory_gradient_rows(trainer, pl_module, params)
        current = torch.cat([p.grad.flatten() for p in params])
        self.dots.extend((rows @ current / rows.norm(dim=1) / current.norm()).tolist())  # cosines


def test_no_step_increases_a_past_experience_loss_to_first_order() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, gem = digits_module(), GEM(patterns_per_experience=30, memory_strength=0.5, seed=3)
    probe = _ConstraintProbe(gem)
    for experience in bench.train_stream[:3]:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[gem, probe])
        trainer.fit(module, datamodule=experience)
    assert len(probe.dots) > 0 and min(probe.dots) > -1e-3
    assert gem.projections > 0
    assert sorted(gem.buffer.groups) == [0, 1, 2] and len(gem.buffer) == 90


def test_gem_reduces_forgetting_on_permuted_digits() -> None:
    naive = run_permuted([])
    gem = run_permuted([GEM(patterns_per_experience=100, memory_strength=0.5)])
    assert gem.average_accuracy > naive.average_accuracy + 0.2
    assert gem.matrix[-1, 0] > naive.matrix[-1, 0] + 0.4  # the first permutation, after the last


class _CountReads(L.Callback):
    """Listed after GEM: counts the reads of GEM's memory views."""

    def __init__(self, gem: GEM) -> None:
        self.gem = gem
        self.reads = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        for view in self.gem.memory_groups.values():
            if "__getitems__" not in vars(view):
                read = view.__getitems__

                def counted(positions: Any, read: Any = read) -> Any:
                    self.reads += 1
                    return read(positions)

                view.__getitems__ = counted  # type: ignore[method-assign]


@pytest.mark.parametrize("cache_memory", [True, False])
def test_held_memory_gives_the_same_training_and_reads_each_memory_once(cache_memory: bool) -> None:
    def run(cache: bool) -> tuple[Any, GEM, int, int]:
        L.seed_everything(5)
        bench = SplitDigits(n_experiences=5, seed=1)
        module, gem = digits_module(), GEM(patterns_per_experience=20, seed=3, cache_memory=cache)
        counter, group_steps = _CountReads(gem), 0
        for experience in bench.train_stream[:3]:
            past_groups = len(gem.memory_groups)
            trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[gem, counter])
            trainer.fit(module, datamodule=experience)
            group_steps += trainer.global_step * past_groups
        return module, gem, counter.reads, group_steps

    uncached_module, uncached_gem, uncached_reads, group_steps = run(False)
    module, gem, reads, _ = run(cache_memory)
    for a, b in zip(module.parameters(), uncached_module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert gem.projections == uncached_gem.projections > 0
    if cache_memory:
        assert reads == 1 + 2  # experience 1 reads its one past group once, experience 2 its two
    else:
        assert reads == uncached_reads == group_steps > 3  # one read per past group per step
