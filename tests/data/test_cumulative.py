from __future__ import annotations

import pytest
import torch

from lightning_cl.data import (
    DatasetView,
    Experience,
    SplitDigits,
    Stream,
    TensorClassificationDataset,
    cumulative,
    joint,
)


def test_cumulative_experiences_hold_everything_so_far() -> None:
    stream = SplitDigits(n_experiences=5, seed=1).train_stream
    grown = cumulative(stream)
    assert len(grown) == 5 and grown.indices == stream.indices
    for i, experience in enumerate(grown):
        expected = torch.cat([e.dataset.indices for e in stream[: i + 1]])
        assert torch.equal(experience.dataset.indices, expected)
        assert experience.classes_in_this_experience == sorted(
            c for e in stream[: i + 1] for c in e.classes_in_this_experience
        )
        assert experience.batch_size == stream[i].batch_size
    (everything,) = joint(stream)
    assert len(everything) == sum(len(e) for e in stream) and everything.index == stream[-1].index


def test_cumulative_training_is_the_upper_reference(fit_digits_stream) -> None:
    bench = SplitDigits(n_experiences=5, seed=1)

    def run(train: Stream) -> float:
        return fit_digits_stream(bench, train_stream=train).average_accuracy

    naive, upper, offline = (
        run(bench.train_stream),
        run(cumulative(bench.train_stream)),
        run(joint(bench.train_stream)),
    )
    assert naive < 0.3 and upper > 0.9 and offline > 0.9


def test_experiences_of_different_datasets_are_refused() -> None:
    def experience(index: int) -> Experience:
        data = TensorClassificationDataset(torch.zeros(4, 2), [0, 1, 0, 1])
        return Experience(
            DatasetView(data, range(4)), index=index, classes_in_this_experience=[0, 1], n_classes=2
        )

    with pytest.raises(ValueError, match="one base dataset"):
        cumulative(Stream("train", [experience(0), experience(1)]))
