import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_cl.data import (
    DatasetView,
    SplitDigits,
    TensorClassificationDataset,
    benchmark_with_validation_stream,
    split_validation,
)


def test_validation_stream():
    bench = SplitDigits(n_experiences=5)
    split = benchmark_with_validation_stream(bench, 0.2, seed=3)
    assert len(split.valid_stream) == 5 and split.test_stream is bench.test_stream
    for orig, train, valid in zip(bench.train_stream, split.train_stream, split.valid_stream):
        a, b = set(train.dataset.indices.tolist()), set(valid.dataset.indices.tolist())
        assert not a & b and a | b == set(orig.dataset.indices.tolist())
        assert train.val_dataset is not None and len(train.val_dataset) == len(valid)
        assert valid.stream_name == "valid" and valid.index == train.index
        for c in orig.classes_in_this_experience:
            n_c = int((orig.dataset.targets == c).sum())
            assert int((valid.dataset.targets == c).sum()) == round(n_c * 0.2)
    assert len(split.train_stream[0].val_dataloader()) > 0


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_fraction_outside_open_interval(fraction):
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\)"):
        benchmark_with_validation_stream(SplitDigits(), fraction)


def test_too_small_to_split():
    view = DatasetView(TensorClassificationDataset(torch.zeros(2, 1), [0, 1]), [0, 1])
    with pytest.raises(ValueError, match="no validation"):
        split_validation(view, 0.2)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 60),
    fraction=st.floats(0.1, 0.9),
    balanced=st.booleans(),
    seed=st.integers(0, 100),
)
def test_validation_and_train_disjoint(n, fraction, balanced, seed):
    view = DatasetView(TensorClassificationDataset(torch.zeros(n, 1), torch.arange(n) % 3), range(n))
    try:
        train, valid = split_validation(view, fraction, class_balanced=balanced, seed=seed)
    except ValueError:
        return
    assert not set(train.tolist()) & set(valid.tolist())
    assert sorted(train.tolist() + valid.tolist()) == list(range(n))
    again = split_validation(view, fraction, class_balanced=balanced, seed=seed)
    assert torch.equal(again[1], valid)


def test_bad_validation_arguments_are_named() -> None:
    from lightning_cl.data import SplitDigits, benchmark_with_validation_stream

    bench = SplitDigits(n_experiences=5, seed=1)
    with pytest.raises(ValueError, match="seed must be an int or None, got 'a'"):
        benchmark_with_validation_stream(bench, 0.1, seed="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_balanced must be a bool, got 'no'"):
        benchmark_with_validation_stream(bench, 0.1, class_balanced="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="benchmark must be a lightning_cl Benchmark, got list"):
        benchmark_with_validation_stream([1, 2], 0.1)  # type: ignore[arg-type]
