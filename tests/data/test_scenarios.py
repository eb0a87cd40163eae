import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_cl.data import (
    TensorClassificationDataset,
    class_incremental,
    resolve_class_order,
    split_classes,
    task_incremental,
)


def dataset(n_classes=6, per_class=4):
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return TensorClassificationDataset(torch.arange(len(y), dtype=torch.float32)[:, None], y)


def test_class_incremental_fixed_order():
    ds = dataset()
    bench = class_incremental(ds, ds, 3, class_order=[5, 4, 3, 2, 1, 0])
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[4, 5], [2, 3], [0, 1]]
    assert bench.scenario == "class_incremental" and bench.n_classes == 6
    assert set(bench.test_stream[0].dataset.targets.tolist()) == {4, 5}
    assert all(e.task_labels == [0] for e in bench.train_stream)


def test_task_incremental_labels():
    ds = dataset()
    bench = task_incremental(ds, ds, 3)
    assert [e.task_label for e in bench.train_stream] == [0, 1, 2]
    assert [e.task_label for e in bench.test_stream] == [0, 1, 2]
    assert bench.scenario == "task_incremental"


def test_per_experience_class_counts():
    ds = dataset(10, 2)
    bench = class_incremental(ds, ds, 3, per_exp_classes=[5, 3, 2])
    assert [len(e.classes_in_this_experience) for e in bench.train_stream] == [5, 3, 2]
    assert split_classes(list(range(10)), 4, {0: 4}) == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]


def test_class_ids_from_zero_in_each_experience():
    ds = dataset()
    bench = class_incremental(ds, ds, 3, class_order=[5, 4, 3, 2, 1, 0], class_ids_from_zero_in_each_exp=True)
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[0, 1]] * 3
    assert bench.n_classes == 2
    exp = bench.train_stream[0]
    x, y, _ = exp.dataset.__getitems__(list(range(len(exp))))
    original = (x.flatten() // 4).long()
    assert ((original == 5) == (y == 0)).all() and ((original == 4) == (y == 1)).all()


def test_class_ids_from_zero_from_first_experience():
    ds = dataset()
    bench = class_incremental(
        ds, ds, 2, class_order=[3, 4, 5, 0, 1, 2], class_ids_from_zero_from_first_exp=True
    )
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[0, 1, 2], [3, 4, 5]]
    assert bench.class_order == [3, 4, 5, 0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_experiences=4), r"cannot split 6 classes evenly; allowed values: \[1, 2, 3, 6\]"),
        (dict(n_experiences=7), "more than the 6 classes"),
        (dict(n_experiences=0), "positive int"),
        (dict(n_experiences=3, class_order=[0, 1, 2, 3, 4]), r"missing: \[5\]"),
        (dict(n_experiences=3, class_order=[0, 1, 2, 3, 4, 4]), r"repeated: \[4\]"),
        (dict(n_experiences=3, class_order=[0, 1, 2, 3, 4, 9]), r"not in the data: \[9\]"),
        (dict(n_experiences=3, class_order=list(range(6)), seed=1), "not both"),
        (dict(n_experiences=3, per_exp_classes=[4, 2, 0]), "counts >= 1"),
        (dict(n_experiences=2, per_exp_classes=[4, 3]), "add up to the 6 classes"),
        (dict(n_experiences=3, per_exp_classes={0: 3}), "must split"),
        (dict(n_experiences=3, per_exp_classes={5: 1}), "must lie in 0..2"),
        (
            dict(
                n_experiences=3, class_ids_from_zero_in_each_exp=True, class_ids_from_zero_from_first_exp=True
            ),
            "exclude each other",
        ),
    ],
)
def test_impossible_splits(kwargs, match):
    ds = dataset()
    with pytest.raises(ValueError, match=match):
        class_incremental(ds, ds, **kwargs)


def test_test_classes_missing_from_train_and_missing_targets():
    with pytest.raises(ValueError, match=r"classes \[6\] that the train set lacks"):
        class_incremental(dataset(), dataset(7), 3)
    with pytest.raises(ValueError, match="no `targets`"):
        class_incremental(object(), dataset(), 3)


@settings(max_examples=25, deadline=None)
@given(
    n_classes=st.integers(1, 12),
    data=st.data(),
    seed=st.one_of(st.none(), st.integers(0, 1000)),
)
def test_every_class_in_exactly_one_experience(n_classes, data, seed):
    divisors = [d for d in range(1, n_classes + 1) if n_classes % d == 0]
    n_exp = data.draw(st.sampled_from(divisors))
    ds = dataset(n_classes, 2)
    bench = class_incremental(ds, ds, n_exp, seed=seed)
    groups = [e.classes_in_this_experience for e in bench.train_stream]
    flat = [c for g in groups for c in g]
    assert sorted(flat) == list(range(n_classes))
    for train, test in zip(bench.train_stream, bench.test_stream):
        assert set(train.dataset.targets.tolist()) == set(train.classes_in_this_experience)
        assert set(test.dataset.targets.tolist()) == set(train.classes_in_this_experience)
    assert sum(len(e) for e in bench.train_stream) == len(ds)
    again = class_incremental(ds, ds, n_exp, seed=seed)
    assert again.class_order == bench.class_order
    assert all(
        torch.equal(a.dataset.indices, b.dataset.indices)
        for a, b in zip(again.train_stream, bench.train_stream)
    )


def test_seeded_order_is_a_shuffle():
    assert resolve_class_order(range(10), seed=3) == resolve_class_order(range(10), seed=3)
    assert sorted(resolve_class_order(range(10), seed=3)) == list(range(10))
    assert resolve_class_order(range(10), seed=3) != list(range(10))
