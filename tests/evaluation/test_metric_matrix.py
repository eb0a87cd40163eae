from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lightning_cl.evaluation import MetricMatrices, MetricMatrix


def test_columns_are_the_test_experiences_recorded() -> None:
    m = MetricMatrix("accuracy")
    m.record(0, 0, 0.5)
    m.record(1, 0, 0.6)
    r = m.results()
    assert r.trained == [0, 1] and r.tested == [0]
    assert r.average == pytest.approx(0.6)
    # rows 0, 1 and one column do not pair by index: forgetting from the best earlier value
    assert r.pairing_source == "unknown"
    assert r.forgetting == pytest.approx(0.5 - 0.6) and r.bwt == pytest.approx(0.6 - 0.5)


def test_online_stream_gives_fifteen_rows_and_five_columns() -> None:
    m = MetricMatrix("accuracy")
    for row in range(15):
        m.mark_trained(row, row // 3)
        for column in range(5):
            m.record(row, column, 1.0 if column == row // 3 else 0.0)
    r = m.results()
    assert len(r.matrix) == 15 and r.tested == [0, 1, 2, 3, 4]
    assert r.average == pytest.approx(0.2) and r.seen_average == pytest.approx(0.2)
    # origins 0..3 were learned and then fully forgotten; origin 4 is still being trained
    assert r.forgetting_per_experience == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert r.forgetting == pytest.approx(1.0) and r.bwt == pytest.approx(-1.0)


def test_new_instances_stream_has_one_column() -> None:
    m = MetricMatrix("accuracy")
    for row, value in enumerate([0.7, 0.8, 0.75]):
        m.record(row, 0, value)
    r = m.results()
    assert r.tested == [0] and r.average == pytest.approx(0.75)
    assert r.forgetting == pytest.approx(0.8 - 0.75) and r.bwt == pytest.approx(-(0.8 - 0.75))


def test_aligned_rows_pair_by_index_mid_stream() -> None:
    m = MetricMatrix("accuracy")
    for row in range(2):
        for column in range(5):
            m.record(row, column, [[0.9, 0.0, 0.0, 0.0, 0.0], [0.5, 0.8, 0.0, 0.0, 0.0]][row][column])
    r = m.results()
    assert r.pairing_source == "labels"
    assert r.average == pytest.approx(1.3 / 5) and r.seen_average == pytest.approx(1.3 / 2)
    assert r.forgetting_per_experience == pytest.approx({0: 0.4})


def test_untrained_row_is_the_forward_transfer_baseline(aligned: torch.Tensor) -> None:
    m = MetricMatrix("accuracy")
    for j, b in enumerate([0.1, 0.05, 0.2]):
        m.record(None if j % 2 == 0 else -1, j, b)
    for i in range(3):
        for j in range(3):
            m.record(i, j, aligned[i, j])
        m.record_stream(i, aligned[i].mean())
    r = m.results()
    assert r.initial == pytest.approx([0.1, 0.05, 0.2]) and r.trained == [0, 1, 2]
    assert r.fwt == pytest.approx(((0.1 - 0.05) + (0.1 - 0.2)) / 2)
    assert r.stream == pytest.approx(aligned.mean(1).tolist())


def test_direction_comes_from_the_name_unless_given() -> None:
    assert not MetricMatrix("loss").higher_is_better and not MetricMatrix("test_error").higher_is_better
    assert MetricMatrix("f1").higher_is_better
    assert MetricMatrix("loss", higher_is_better=True).higher_is_better


def test_metric_matrices_record_by_name() -> None:
    m = MetricMatrices()
    m.add("f1", higher_is_better=True)
    for row, (acc, loss, f1) in enumerate([(0.9, 0.2, 0.8), (0.4, 1.4, 0.3)]):
        m.record("accuracy", row, 0, acc)
        m.record("loss", row, 0, loss)
        m.record("f1", row, 0, f1)
    m.mark_trained(0, [0])
    m.mark_trained(1, 1)
    m.record("loss", 1, 1, 0.1)
    results = m.results()
    assert list(results) == ["f1", "accuracy", "loss"]
    assert results["f1"].forgetting == pytest.approx(0.5)
    assert results["loss"].forgetting == pytest.approx(1.2)  # the loss rose by 1.2
    assert results["loss"].bwt == pytest.approx(-1.2)
    assert results["accuracy"].trained_on == [[0], [1]] and results["loss"].trained_on == [[0], [1]]
    with pytest.raises(KeyError, match="no metric 'top5'"):
        results["top5"]
    with pytest.raises(ValueError, match="higher_is_better=False"):
        m.add("loss", higher_is_better=True)


def test_state_dict_round_trips_through_a_weights_only_checkpoint(tmp_path: Any) -> None:
    m = MetricMatrices()
    m.record("accuracy", None, 0, 0.1)
    m.record("accuracy", 0, 0, 0.9)
    m.record("loss", 0, 0, 0.3)
    m.record_stream("accuracy", 0, 0.9)
    m.record_per_class("accuracy", 0, torch.tensor([1.0, 0.8]))
    m.mark_trained(0, 0)
    torch.save(m.state_dict(), tmp_path / "state.pt")
    restored = MetricMatrices()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.results() == m.results()
    assert restored.results()["accuracy"].amca == pytest.approx(0.9)
    assert not restored["loss"].higher_is_better


def test_bad_records_are_refused() -> None:
    m = MetricMatrix("accuracy")
    with pytest.raises(ValueError, match="must be >= 0, or None / -1 before the first experience; got -2"):
        m.record(-2, 0, 0.5)
    with pytest.raises(ValueError, match="test experience index\\) must be >= 0, got -1"):
        m.record(0, -1, 0.5)
    with pytest.raises(ValueError, match="must be a real number, got 'high'"):
        m.record(0, 0, "high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a scalar"):
        m.record(0, 0, torch.zeros(2))
    with pytest.raises(ValueError, match=r"must be an int, got 1\.5"):
        m.record(1.5, 0, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per-class values must be 1-d"):
        m.record_per_class(0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mark_trained needs a train experience index"):
        m.mark_trained(None, 0)  # type: ignore[arg-type]
    assert math.isnan(m.results().average)  # nothing was recorded


@pytest.mark.parametrize("where", ["bogus", "exp", "expx", "Stream", "exp-1"])
def test_record_tensor_refuses_a_place_that_is_no_column_or_the_stream(where: str) -> None:
    m = MetricMatrices()
    with pytest.raises(ValueError, match=r"where must be 'stream' or 'exp<j>'"):
        m.record_tensor("confusion", 0, where, torch.eye(2))
    assert "confusion" not in m.tensors  # nothing kept from the refused call
    m.record_tensor("confusion", 0, "exp3", torch.eye(2))
    assert set(m.tensors["confusion"][0]) == {"exp3"}
