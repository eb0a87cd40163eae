from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import AGEM, project_gradient
from tests.conftest import digits_module, quiet_trainer_kwargs
from tests.methods.permuted_digits import run_permuted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(patterns_per_experience=0), "patterns_per_experience must be an int >= 1, got 0"),
        (dict(sample_size=-3), "sample_size must be a positive int, got -3"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AGEM(**kwargs)


def test_projection_removes_only_the_opposing_component() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        gradient, reference = torch.randn(50, generator=g), torch.randn(50, generator=g)
        projected, changed = project_gradient(gradient, reference)
        assert changed == bool(torch.dot(gradient, reference) < 0)
        if changed:
            assert float(torch.dot(projected, reference)) == pytest.approx(0.0, abs=1e-4)
            # what was removed is parallel to the reference
            removed = gradient - projected
            scale = torch.dot(removed, reference) / torch.dot(reference, reference)
            torch.testing.assert_close(removed, scale * reference)
        else:
            assert projected is gradient


class _ConstraintProbe(L.Callback):
    """Listed after AGEM: the gradient the optimizer gets never opposes the memory's gradient."""

    def __init__(self, agem: AGEM) -> None:
        self.agem = agem
        self.dots: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.agem.memory is None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        reference = self.agem.reference_gradient(trainer, pl_module, params)  # the same draw
        current = torch.cat([p.grad.flatten() for p in params])
        self.dots.append(float(torch.dot(current, reference) / reference.norm()))


def test_no_step_increases_the_memory_loss_to_first_order() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, agem = digits_module(), AGEM(patterns_per_experience=30, sample_size=40, seed=3)
    probe = _ConstraintProbe(agem)
    for experience in bench.train_stream[:3]:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[agem, probe])
        trainer.fit(module, datamodule=experience)
    assert len(probe.dots) > 0 and min(probe.dots) > -1e-4
    assert agem.projections > 0  # the constraint was active
    assert len(agem.buffer) == 90 and sorted(agem.buffer.groups) == [0, 1, 2]
    assert all(len(group[0]) == 30 for group in agem.buffer.groups.values())


def test_agem_reduces_forgetting_on_permuted_digits() -> None:
    naive = run_permuted([])
    agem = run_permuted([AGEM(patterns_per_experience=100, sample_size=64)])
    assert agem.average_accuracy > naive.average_accuracy + 0.1
    assert agem.matrix[-1, 0] > naive.matrix[-1, 0] + 0.2  # the first permutation, after the last
