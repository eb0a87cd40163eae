from __future__ import annotations

import pytest
import torch

from lightning_cl.data import SplitDigits, SubsampledBenchmark, subsample_train


def test_every_training_experience_keeps_a_seeded_random_subset() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    small = subsample_train(bench, 30, seed=4)
    again = SubsampledBenchmark(SplitDigits(n_experiences=5, seed=1), samples_per_experience=30, seed=4)
    for full, cut, same in zip(bench.train_stream, small.train_stream, again.train_stream, strict=True):
        kept = cut.dataset.indices
        assert len(cut) == 30 and len(set(kept.tolist())) == 30
        assert set(kept.tolist()) <= set(full.dataset.indices.tolist())  # a subset of its own experience
        assert torch.equal(kept, same.dataset.indices)  # the seed fixes it
        assert cut.classes_in_this_experience == full.classes_in_this_experience
    other = subsample_train(bench, 30, seed=5)
    assert not torch.equal(other.train_stream[0].dataset.indices, small.train_stream[0].dataset.indices)
    # The test stream is the benchmark's, whole.
    assert [len(e) for e in small.test_stream] == [len(e) for e in bench.test_stream]
    assert small.class_order == bench.class_order and small.scenario == bench.scenario


def test_bad_sizes_are_refused() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    smallest = min(len(e) for e in bench.train_stream)
    with pytest.raises(ValueError, match="samples_per_experience must be an int >= 1, got 0"):
        subsample_train(bench, 0)
    with pytest.raises(ValueError, match=rf"exceeds the smallest training experience \({smallest} samples\)"):
        SubsampledBenchmark(bench, samples_per_experience=smallest + 1)
