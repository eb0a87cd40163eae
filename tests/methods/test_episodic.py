"""The episodic memory of GEM and A-GEM: what it keeps, the gradients it gives, its restored views."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import EpisodicMemoryMethod
from tests.conftest import digits_module, quiet_trainer_kwargs


def _trained(method: EpisodicMemoryMethod, experiences: int = 2) -> tuple[SplitDigits, L.Trainer, object]:
    bench, module = SplitDigits(n_experiences=5, seed=1), digits_module()
    trainer = None
    for experience in bench.train_stream[:experiences]:
        trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[method])
        trainer.fit(module, datamodule=experience)
    return bench, trainer, module  # type: ignore[return-value]


def test_each_experience_adds_its_patterns_to_its_own_group() -> None:
    method = EpisodicMemoryMethod(patterns_per_experience=30, seed=0)
    bench, _, _ = _trained(method, experiences=3)
    assert sorted(method.buffer.groups) == [0, 1, 2] and len(method.buffer) == 90
    for key, view in method.memory_groups.items():
        assert len(view) == 30
        assert set(view.targets.tolist()) <= set(bench.train_stream[key].classes_in_this_experience)
    assert method.memory is not None and torch.equal(method.memory.indices, method.buffer.indices)


def test_memory_gradients_are_the_mean_loss_gradient_of_each_part() -> None:
    method = EpisodicMemoryMethod(patterns_per_experience=20, seed=0)
    _, trainer, module = _trained(method)
    params = [p for p in module.parameters() if p.requires_grad]  # type: ignore[attr-defined]
    parts = [(view, torch.arange(len(view))) for _, view in sorted(method.memory_groups.items())]
    rows = method.memory_gradients(trainer, module, parts, params)
    assert rows.shape == (2, sum(p.numel() for p in params))
    for row, (view, positions) in zip(rows, parts):
        x, y, t = view.__getitems__(positions)
        loss = module.criterion(module(x, t), y)  # type: ignore[operator,attr-defined]
        expected = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(row, expected, rtol=1e-4, atol=1e-6)


def test_restored_state_rebuilds_the_views_at_the_next_fit() -> None:
    method = EpisodicMemoryMethod(patterns_per_experience=25, seed=3)
    bench, _, module = _trained(method)
    restored = EpisodicMemoryMethod(patterns_per_experience=25, seed=3)
    restored.load_state_dict(method.state_dict())
    assert restored.memory is None  # state holds indices only; no view until it meets the data
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[restored])
    trainer.fit(module, datamodule=bench.train_stream[2])  # type: ignore[arg-type]
    assert restored.memory_groups.keys() == {0, 1, 2}
    assert torch.equal(restored.memory_groups[0].indices, method.memory_groups[0].indices)


def test_patterns_per_experience_is_checked() -> None:
    with pytest.raises(ValueError, match="patterns_per_experience must be an int >= 1, got 0"):
        EpisodicMemoryMethod(patterns_per_experience=0)
