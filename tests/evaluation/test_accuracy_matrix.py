from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_cl.evaluation import (
    AccuracyMatrix,
    ContinualResults,
    average_accuracy,
    backward_transfer,
    forgetting,
)

# R[i, j]: after training experience i, accuracy on experience j.
R = torch.tensor(
    [
        [0.9, 0.1, 0.0],
        [0.6, 0.8, 0.1],
        [0.3, 0.7, 0.95],
    ]
)


def test_average_accuracy_is_the_mean_of_the_last_row() -> None:
    assert average_accuracy(R) == pytest.approx((0.3 + 0.7 + 0.95) / 3)
    assert average_accuracy(R[:2, :]) == pytest.approx((0.6 + 0.8) / 2)


def test_backward_transfer() -> None:
    # ((0.3 - 0.9) + (0.7 - 0.8)) / 2
    assert backward_transfer(R) == pytest.approx(-0.35)


def test_forgetting_uses_the_best_earlier_accuracy() -> None:
    r = R.clone()
    r[1, 0] = 0.95  # experience 0 improved before it was forgotten
    # ((0.95 - 0.3) + (0.8 - 0.7)) / 2
    assert forgetting(r) == pytest.approx(0.375)
    assert forgetting(R) == pytest.approx(-backward_transfer(R))


def test_one_experience_has_no_forgetting_or_bwt() -> None:
    assert math.isnan(forgetting(R[:1, :])) and math.isnan(backward_transfer(R[:1, :]))
    assert average_accuracy(R[:1, :]) == pytest.approx(0.9)


def test_matrix_must_be_2d() -> None:
    with pytest.raises(ValueError, match="2-d"):
        average_accuracy(torch.zeros(3))


def _filled() -> AccuracyMatrix:
    m = AccuracyMatrix()
    for i in range(3):
        for j in range(3):
            m.record(i, j, float(R[i, j]))
        m.record_stream(i, float(R[i].mean()))
    m.record(None, 0, 0.1)
    return m


def test_accuracy_matrix_builds_results() -> None:
    results = _filled().results()
    assert results.trained == [0, 1, 2] and results.tested == [0, 1, 2]
    assert torch.allclose(results.matrix, R.double())
    assert results.bwt == pytest.approx(-0.35)
    assert results.stream_accuracy == pytest.approx(R.mean(1).tolist())


def test_missing_cells_are_nan_and_json_null() -> None:
    m = AccuracyMatrix()
    m.record(0, 0, 0.5)
    m.record(0, 2, 0.25)
    results = m.results()
    assert results.tested == [0, 1, 2] and math.isnan(results.accuracy_matrix[0][1])
    data = json.loads(results.to_json())
    assert data["accuracy_matrix"] == [[0.5, None, 0.25]]
    assert data["forgetting"] is None and data["bwt"] is None


def test_to_json_and_table(tmp_path) -> None:
    results = _filled().results()
    path = tmp_path / "results.json"
    results.to_json(path)
    data = json.loads(path.read_text())
    assert {"accuracy_matrix", "average_accuracy", "forgetting", "bwt", "stream_accuracy"} <= set(data)
    assert data["average_accuracy"] == pytest.approx(results.average_accuracy)
    table = results.table()
    assert "0.950" in table and "BWT -0.3500" in table and table == str(results)


def test_state_dict_round_trip() -> None:
    m = _filled()
    restored = AccuracyMatrix()
    restored.load_state_dict(m.state_dict())
    assert restored.results() == m.results()
    assert restored.initial == {0: 0.1}


def test_plot_draws_every_cell() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = _filled().results().plot()
    assert len(ax.texts) == 9
    assert isinstance(_filled().results(), ContinualResults)
