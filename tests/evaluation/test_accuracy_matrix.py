from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_cl.evaluation import AccuracyMatrix, ContinualResults


def _filled(aligned: torch.Tensor) -> AccuracyMatrix:
    m = AccuracyMatrix()
    for i in range(3):
        for j in range(3):
            m.record(i, j, float(aligned[i, j]))
        m.record_stream(i, float(aligned[i].mean()))
    m.record(None, 0, 0.1)
    return m


def test_accuracy_matrix_builds_results(aligned: torch.Tensor) -> None:
    results = _filled(aligned).results()
    assert isinstance(results, ContinualResults) and list(results) == ["accuracy"]
    assert results.trained == [0, 1, 2] and results.tested == [0, 1, 2]
    assert torch.allclose(results.matrix, aligned)
    assert results.bwt == pytest.approx(-0.35) and results.forgetting == pytest.approx(0.35)
    assert results.average_accuracy == pytest.approx((0.3 + 0.7 + 0.95) / 3)
    assert results.stream_accuracy == pytest.approx(aligned.mean(1).tolist())


def test_smallest_case_of_a_test_stream_unlike_the_train_stream() -> None:
    m = AccuracyMatrix()
    m.record(0, 0, 0.5)
    m.record(1, 0, 0.6)
    assert m.results().tested == [0] and m.results().average_accuracy == pytest.approx(0.6)


def test_missing_cells_are_nan_and_json_null() -> None:
    m = AccuracyMatrix()
    m.record(0, 0, 0.5)
    m.record(0, 2, 0.25)
    results = m.results()
    assert results.tested == [0, 2] and results.accuracy_matrix == [[0.5, 0.25]]
    m.record(1, 1, 0.75)
    results = m.results()
    assert results.tested == [0, 1, 2] and math.isnan(results.accuracy_matrix[0][1])
    data = json.loads(results.to_json())
    assert data["accuracy_matrix"] == [[0.5, None, 0.25], [None, 0.75, None]]
    assert data["forgetting"] is None and data["bwt"] is None


def test_to_json_and_table(aligned: torch.Tensor, tmp_path) -> None:
    results = _filled(aligned).results()
    path = tmp_path / "results.json"
    results.to_json(path)
    data = json.loads(path.read_text())
    assert {"accuracy_matrix", "average_accuracy", "forgetting", "bwt", "stream_accuracy"} <= set(data)
    assert data["average_accuracy"] == pytest.approx(results.average_accuracy)
    assert ContinualResults.from_json(path) == results
    table = results.table()
    assert "Accuracy matrix R[i, j]" in table and "0.950" in table and "BWT -0.3500" in table


def test_state_dict_round_trip_and_older_states(aligned: torch.Tensor) -> None:
    m = _filled(aligned)
    state = m.state_dict()
    assert len(state["rows"]) == 3
    restored = AccuracyMatrix()
    restored.load_state_dict(state)
    assert restored.results() == m.results() and repr(restored.results()) == repr(m.results())
    assert restored.initial == {0: 0.1}
    older = AccuracyMatrix()  # the layout written before pairing and per-class values existed
    older.load_state_dict({"rows": state["rows"], "stream": state["stream"], "initial": state["initial"]})
    assert older.results() == m.results()


def test_mark_trained_pairs_online_rows(online) -> None:
    m = AccuracyMatrix()
    for i, cols in enumerate(online["trained_on"]):
        m.mark_trained(i, cols)
        for j in range(3):
            m.record(i, j, online["matrix"][i, j])
    assert m.results().bwt == pytest.approx(((0.2 - 0.9) + (0.4 - 0.8)) / 2)


def test_plot_draws_every_cell(aligned: torch.Tensor, agg) -> None:
    figure = _filled(aligned).results().plot()
    assert len(figure.axes[0].texts) == 9
