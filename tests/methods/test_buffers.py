from __future__ import annotations

import pytest
import torch

from lightning_cl.data import DatasetView, TensorClassificationDataset
from lightning_cl.methods import ReplayBuffer


def _base(n: int = 60, classes: int = 6) -> TensorClassificationDataset:
    return TensorClassificationDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n) % classes)


def _experience(base: TensorClassificationDataset, classes: list[int], task: int = 0) -> DatasetView:
    idx = torch.isin(base.targets, torch.tensor(classes)).nonzero().flatten()
    return DatasetView(base, idx, task)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_experience_balanced_splits_memory_equally() -> None:
    base = _base()
    buffer = ReplayBuffer(10, "experience_balanced")
    for i, classes in enumerate([[0, 1], [2, 3], [4, 5]]):
        buffer.update(_experience(base, classes), i, _gen(i))
    assert len(buffer) == 10
    assert buffer.quotas() == {0: 4, 1: 3, 2: 3}
    memory = buffer.dataset(_experience(base, [0]))
    assert memory is not None
    assert torch.equal(memory.indices, buffer.indices) and torch.equal(memory.targets, buffer.targets)
    # Every sample comes from its experience, without duplicates.
    assert len(set(memory.indices.tolist())) == 10
    per_exp = [int(torch.isin(memory.targets, torch.tensor(c)).sum()) for c in ([0, 1], [2, 3], [4, 5])]
    assert per_exp == [4, 3, 3]


def test_class_balanced_splits_memory_by_class() -> None:
    base = _base()
    buffer = ReplayBuffer(12, "class_balanced")
    buffer.update(_experience(base, [0, 1, 2]), 0, _gen(0))
    assert torch.bincount(buffer.targets, minlength=6).tolist() == [4, 4, 4, 0, 0, 0]
    buffer.update(_experience(base, [3, 4, 5]), 1, _gen(1))
    assert torch.bincount(buffer.targets, minlength=6).tolist() == [2] * 6


def test_reservoir_keeps_a_uniform_subset_of_everything_seen() -> None:
    base = _base(600, 2)
    counts = torch.zeros(2)
    for seed in range(20):
        buffer = ReplayBuffer(50, "reservoir")
        buffer.update(_experience(base, [0]), 0, _gen(2 * seed))
        buffer.update(_experience(base, [1]), 1, _gen(2 * seed + 1))
        assert len(buffer) == 50
        counts += torch.bincount(buffer.targets, minlength=2)
    # Both experiences have 300 samples: on average, half the memory each.
    assert abs(float(counts[0] / counts.sum()) - 0.5) < 0.06


def test_shrinking_keeps_a_subset_of_what_was_kept() -> None:
    base = _base()
    buffer = ReplayBuffer(8)
    buffer.update(_experience(base, [0, 1]), 0, _gen(0))
    first = set(buffer.indices.tolist())
    buffer.update(_experience(base, [2, 3]), 1, _gen(1))
    kept = set(buffer.indices.tolist()) & set(_experience(base, [0, 1]).indices.tolist())
    assert len(first) == 8 and len(kept) == 4 and kept <= first


def test_same_seed_same_content() -> None:
    base = _base()
    a, b = ReplayBuffer(7), ReplayBuffer(7)
    for buffer in (a, b):
        buffer.update(_experience(base, [0, 1, 2]), 0, _gen(3))
    assert torch.equal(a.indices, b.indices)


def test_state_dict_round_trip_holds_indices_only() -> None:
    base = _base()
    buffer = ReplayBuffer(6)
    buffer.update(_experience(base, [0, 1]), 0, _gen(0))
    state = buffer.state_dict()
    assert all(g["indices"].dtype == torch.long for g in state["groups"].values())
    restored = ReplayBuffer(6)
    restored.load_state_dict(state)
    view = restored.dataset(_experience(base, [2, 3]))
    assert view is not None and torch.equal(view.indices, buffer.indices)
    # The view reads the held samples from the dataset it is given.
    assert torch.equal(view.__getitems__(torch.arange(len(view)))[0].flatten(), buffer.indices.float())


def test_a_different_dataset_is_refused() -> None:
    base = _base()
    buffer = ReplayBuffer(6)
    buffer.update(_experience(base, [0, 1]), 0, _gen(0))
    other = TensorClassificationDataset(torch.zeros(60, 1), (torch.arange(60) + 1) % 6)
    restored = ReplayBuffer(6)
    restored.load_state_dict(buffer.state_dict())
    with pytest.raises(ValueError, match="other labels"):
        restored.dataset(_experience(other, [2, 3]))
    with pytest.raises(ValueError, match="other labels"):
        restored.update(_experience(other, [2, 3]), 1, _gen(1))
    small = _base(4, 2)
    with pytest.raises(ValueError, match="dataset of 60 samples"):
        restored.dataset(_experience(small, [0]))
    # Nothing changed: the state is the one loaded.
    assert torch.equal(restored.indices, buffer.indices) and len(restored.groups) == 1


def test_load_state_with_other_settings_is_refused() -> None:
    with pytest.raises(ValueError, match="mem_size=6"):
        ReplayBuffer(5).load_state_dict(ReplayBuffer(6).state_dict())


@pytest.mark.parametrize(
    ("mem_size", "policy", "match"), [(-1, "reservoir", "mem_size"), (5, "fifo", "policy")]
)
def test_bad_arguments(mem_size: int, policy: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReplayBuffer(mem_size, policy)
