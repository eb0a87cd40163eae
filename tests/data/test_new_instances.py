import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_cl.data import TensorClassificationDataset, new_instances, split_instances


def dataset(n=40, n_classes=4):
    return TensorClassificationDataset(torch.zeros(n, 2), torch.arange(n) % n_classes)


def test_new_instances_benchmark():
    ds = dataset()
    bench = new_instances(ds, dataset(8), 4, balance_experiences=True, seed=1)
    assert bench.scenario == "new_instances"
    assert [len(e) for e in bench.train_stream] == [10] * 4
    assert all(e.classes_in_this_experience == [0, 1, 2, 3] for e in bench.train_stream)
    assert len(bench.test_stream) == 1 and len(bench.test_stream[0]) == 8
    tl = new_instances(ds, ds, 2, task_labels=True)
    assert [e.task_label for e in tl.train_stream] == [0, 1]


def test_errors():
    with pytest.raises(ValueError, match="more than the 40 samples"):
        new_instances(dataset(), dataset(), 41)
    with pytest.raises(ValueError, match="positive int"):
        split_instances(torch.zeros(3, dtype=torch.long), 0)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    n_classes=st.integers(1, 5),
    data=st.data(),
    balanced=st.booleans(),
    seed=st.integers(0, 100),
)
def test_every_instance_used_exactly_once(n, n_classes, data, balanced, seed):
    n_exp = data.draw(st.integers(1, n))
    targets = torch.arange(n) % n_classes
    groups = split_instances(targets, n_exp, balance_experiences=balanced, seed=seed)
    assert len(groups) == n_exp
    assert sorted(torch.cat(groups).tolist()) == list(range(n))
    again = split_instances(targets, n_exp, balance_experiences=balanced, seed=seed)
    assert all(torch.equal(a, b) for a, b in zip(groups, again))
    if balanced:
        for c in range(n_classes):
            counts = [int((targets[g] == c).sum()) for g in groups]
            assert max(counts) - min(counts) <= 1
    else:
        sizes = [len(g) for g in groups]
        assert max(sizes) - min(sizes) <= 1
