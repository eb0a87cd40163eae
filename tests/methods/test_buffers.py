from __future__ import annotations

import pytest
import torch

from lightning_cl.data import DatasetView, TensorClassificationDataset
from lightning_cl.methods import RandomSelection, ReplayBuffer


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


def _stream_batches(base: TensorClassificationDataset, size: int) -> list[DatasetView]:
    return [DatasetView(base, torch.arange(i, min(i + size, len(base)))) for i in range(0, len(base), size)]


def test_online_reservoir_keeps_each_seen_sample_with_probability_mem_over_seen() -> None:
    # Algorithm R over a stream of 200 samples (4 steps of 50), memory 20: each sample stays
    # with probability 20/200 = 0.1, so over 400 seeded runs each is kept ~Binomial(400, 0.1)
    # times (mean 40, sd 6). A bound of 28 is 4.7 sd: a fair reservoir does not cross it, while
    # keeping the first (or last) samples gives 400 (or 0) for some of them.
    base = _base(200, 4)
    batches = _stream_batches(base, 50)
    counts = torch.zeros(200)
    for run in range(400):
        buffer = ReplayBuffer(20, "reservoir")
        for step, batch in enumerate(batches):
            buffer.offer(batch, 0, _gen(run * 100 + step))
        assert buffer.seen == 200 and len(set(buffer.indices.tolist())) == 20
        counts[buffer.indices] += 1
    assert float((counts - 40).abs().max()) < 28
    # Each quarter of the stream is kept as often (mean 2000 each, sd ~42).
    assert (counts.view(4, 50).sum(1) - 2000).abs().max() < 250
    # While the memory fills, every sample enters.
    buffer = ReplayBuffer(20, "reservoir")
    buffer.offer(batches[0].subset(torch.arange(15)), 0, _gen(0))
    assert buffer.indices.tolist() == list(range(15))


def test_online_reservoir_is_seeded() -> None:
    base = _base(100, 2)
    contents = []
    for _ in range(2):
        buffer = ReplayBuffer(15, "reservoir")
        for step, batch in enumerate(_stream_batches(base, 7)):
            buffer.offer(batch, 0, _gen(step))
        contents.append(buffer.indices)
    assert torch.equal(contents[0], contents[1])


def test_online_class_balanced_stays_balanced() -> None:
    # Classes arrive in order: 0, 1 first, then 2, 3, then 4, 5 (40 samples each, batches of 8).
    targets = torch.arange(6).repeat_interleave(40)
    base = TensorClassificationDataset(torch.arange(240).float().unsqueeze(1), targets)
    buffer = ReplayBuffer(30, "class_balanced")
    seen = torch.zeros(6, dtype=torch.long)
    for batch in _stream_batches(base, 8):
        buffer.offer(batch, 0, _gen(int(batch.indices[0])))
        seen += torch.bincount(batch.targets, minlength=6)
        counts = torch.bincount(buffer.targets, minlength=6)
        quotas = buffer.quotas()
        expected = [min(quotas.get(c, 0), int(seen[c])) for c in range(6)]
        assert counts.tolist() == expected
    assert torch.bincount(buffer.targets, minlength=6).tolist() == [5] * 6


def test_online_experience_balanced_groups_by_the_given_experience() -> None:
    base = _base(120, 6)
    buffer = ReplayBuffer(12, "experience_balanced")
    for step, batch in enumerate(_stream_batches(base, 20)):
        buffer.offer(batch, step // 2, _gen(step))
    assert buffer.quotas() == {0: 4, 1: 4, 2: 4}
    assert [int(((buffer.indices >= 40 * e) & (buffer.indices < 40 * (e + 1))).sum()) for e in range(3)] == [
        4
    ] * 3


def test_task_balanced_splits_by_task_label() -> None:
    base = _base(60, 6)
    buffer = ReplayBuffer(9, "task_balanced")
    buffer.update(_experience(base, [0, 1], task=0), 0, _gen(0))
    buffer.update(_experience(base, [2, 3], task=1), 1, _gen(1))
    buffer.update(_experience(base, [4, 5], task=1), 2, _gen(2))
    assert buffer.quotas() == {0: 5, 1: 4}
    assert torch.bincount(buffer.task_labels).tolist() == [5, 4]


class _FirstCoordinate(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Identity()
        self.head = torch.nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_a_selection_strategy_chooses_each_group_and_shrinking_keeps_its_front() -> None:
    from lightning_cl.methods import ClosestToCenterSelection

    # Inputs are the sample numbers: class c holds c, c + 6, c + 12, ...; its mean is c + 27.
    base = _base(60, 6)
    buffer = ReplayBuffer(12, "class_balanced", ClosestToCenterSelection())
    model = _FirstCoordinate()
    buffer.update(_experience(base, [0, 1, 2]), 0, _gen(0), module=model)
    held = {c: buffer.groups[c][0].tolist() for c in (0, 1, 2)}
    assert held[0] == [24, 30, 18, 36]  # nearest 27 first: 24 and 30 at 3, then 18 and 36 at 9
    buffer.update(_experience(base, [3, 4, 5]), 1, _gen(1), module=model)
    assert buffer.groups[0][0].tolist() == [24, 30]  # the front of the old order
    assert torch.bincount(buffer.targets, minlength=6).tolist() == [2] * 6
    with pytest.raises(ValueError, match="pass module="):
        ReplayBuffer(4, "class_balanced", ClosestToCenterSelection()).update(
            _experience(base, [0]), 0, _gen(0)
        )
    with pytest.raises(ValueError, match="online updates choose at random"):
        ReplayBuffer(4, "class_balanced", ClosestToCenterSelection()).offer(
            _experience(base, [0]), 0, _gen(0)
        )


def test_bad_selection_and_reservoir() -> None:
    with pytest.raises(ValueError, match="selection must be a SelectionStrategy"):
        ReplayBuffer(5, "reservoir", "herding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reservoir must be one of"):
        ReplayBuffer(5, "reservoir", reservoir="L")


@pytest.mark.parametrize("policy", ["experience_balanced", "class_balanced", "reservoir"])
def test_an_experience_offered_twice_is_held_once(policy: str) -> None:
    base = _base()
    first, second = _experience(base, [0, 1]), _experience(base, [2, 3])
    buffer = ReplayBuffer(12, policy)
    buffer.update(first, 0, _gen(0))
    buffer.update(first, 0, _gen(1))  # the same experience trained again
    assert len(buffer) == 12 and len(set(buffer.indices.tolist())) == 12
    buffer.update(second, 1, _gen(2))
    assert len(buffer) == 12 and len(set(buffer.indices.tolist())) == 12
    # The second offer drew afresh: what a buffer that saw it once with that seed holds.
    once = ReplayBuffer(12, policy)
    once.update(first, 0, _gen(1))
    once.update(second, 1, _gen(2))
    assert sorted(buffer.indices.tolist()) == sorted(once.indices.tolist())
    # The same index under another task label is another sample (a task-aware stream).
    tasks = ReplayBuffer(20, "reservoir")
    tasks.update(_experience(base, [0, 1], task=0), 0, _gen(0))
    tasks.update(_experience(base, [0, 1], task=1), 1, _gen(1))
    assert len(tasks) == 20 and set(tasks.task_labels.tolist()) == {0, 1}


def test_a_failed_update_leaves_the_buffer_as_it_was() -> None:
    class Failing(RandomSelection):
        needs_model = False

        def select(self, candidates: DatasetView, k: int, **kwargs: object) -> torch.Tensor:
            raise RuntimeError("no choice")

    base = _base()
    buffer = ReplayBuffer(8, "class_balanced")
    buffer.update(_experience(base, [0, 1]), 0, _gen(0))
    held = buffer.indices.clone()
    buffer.selection = Failing()
    with pytest.raises(RuntimeError, match="no choice"):
        buffer.update(_experience(base, [0, 1]), 0, _gen(1))
    assert torch.equal(buffer.indices, held)
