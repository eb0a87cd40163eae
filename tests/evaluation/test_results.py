from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lightning_cl.evaluation import ContinualResults, MetricMatrices, MetricResults


@pytest.fixture
def results(online: dict[str, Any]) -> ContinualResults:
    """Accuracy (with a baseline, a pairing, per-class values and a gap), loss and F1."""
    m = MetricMatrices()
    r = online["matrix"]
    for j, b in enumerate(online["initial"]):
        m.record("accuracy", None, j, b)
    for i, cols in enumerate(online["trained_on"]):
        m.mark_trained(i, cols)
        for j in range(3):
            if (i, j) != (0, 2):  # one cell not measured
                m.record("accuracy", i, j, r[i, j])
            m.record("loss", i, j, 2.0 - 2.0 * float(r[i, j]))
            m.record("f1", i, j, float(r[i, j]) * 0.9)
        m.record_stream("accuracy", i, r[i].mean())
        m.record_per_class("accuracy", i, [float(r[i, 0]), float(r[i, 1]), math.nan])
    return m.results()


def test_results_json_round_trips(results: ContinualResults, tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    text = results.to_json(path)
    assert path.read_text() == text + "\n"
    back = ContinualResults.from_json(path)
    assert back == results and ContinualResults.from_json(text) == results
    for name in results:
        assert back[name].to_dict() == results[name].to_dict()
    assert math.isnan(back["accuracy"].matrix[0][2])
    assert back["accuracy"].fwt == pytest.approx(results["accuracy"].fwt)
    assert not back["loss"].higher_is_better


def test_json_keys_are_the_attribute_names(results: ContinualResults) -> None:
    data = json.loads(results.to_json())
    for key, value in data.items():
        if key == "metrics":
            continue
        attribute = getattr(results, key)
        if isinstance(value, list):
            assert json.loads(json.dumps(attribute).replace("NaN", "null")) == value, key
        else:
            assert (value is None and math.isnan(attribute)) or attribute == pytest.approx(value), key
    assert set(data["metrics"]) == {"accuracy", "loss", "f1"}
    for key in data["metrics"]["loss"]:
        assert hasattr(results["loss"], key), key
    assert data["trained"] == [0, 1, 2, 3, 4, 5] and data["tested"] == [0, 1, 2]
    assert data["accuracy_matrix"][0] == [0.5, 0.0, None]


def test_every_metric_has_its_derived_values(results: ContinualResults) -> None:
    # by hand from the online fixture: origins 0 and 1 learned before the last row
    assert results["f1"].forgetting == pytest.approx(0.9 * ((0.9 - 0.2) + (0.8 - 0.4)) / 2)
    assert results["loss"].forgetting == pytest.approx(2.0 * ((0.9 - 0.2) + (0.8 - 0.4)) / 2)
    assert results["loss"].bwt == pytest.approx(-results["loss"].forgetting)
    assert results.fwt == pytest.approx(((0.0 - 0.1) + (0.1 - 0.1)) / 2)
    assert results.average_accuracy == pytest.approx(0.5) and results.seen_accuracy == pytest.approx(0.5)
    mca = [(r0 + r1) / 2 for r0, r1, _ in results["accuracy"].per_class]
    assert results.amca == pytest.approx(sum(mca) / len(mca))


def test_legacy_results_json_still_loads() -> None:
    legacy = {
        "accuracy_matrix": [[0.9, None], [0.4, 0.8]],
        "trained_experiences": [0, 1],
        "test_experiences": [0, 1],
        "stream_accuracy": [0.45, 0.6],
        "average_accuracy": 0.6,
    }
    back = ContinualResults.from_dict(legacy)
    assert back.trained == [0, 1] and math.isnan(back.accuracy_matrix[0][1])
    assert back.bwt == pytest.approx(0.4 - 0.9) and back.stream_accuracy == [0.45, 0.6]


def test_bad_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not JSON results"):
        ContinualResults.from_json("{not json")
    path = tmp_path / "r.json"
    path.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="'metrics' or an 'accuracy_matrix' key; got \\['rows'\\]"):
        ContinualResults.from_json(path)
    with pytest.raises(ValueError, match="need the keys \\['tested'\\]"):
        MetricResults.from_dict({"matrix": [], "trained": []})
    with pytest.raises(ValueError, match="do not have one value per tested column"):
        MetricResults("accuracy", [[0.1, 0.2]], [0], [0])


def test_table_prints_every_metric(results: ContinualResults) -> None:
    table = results.table()
    assert table.index("Accuracy matrix R[i, j]") < table.index("Loss matrix") < table.index("F1 matrix")
    assert "average accuracy 0.5000" in table and "AMCA" in table
    assert "lower is better" in table and "untrained" in table
    assert table == str(results)
    assert "average accuracy nan" in ContinualResults().table()


def test_empty_results_have_empty_accuracy() -> None:
    empty = ContinualResults()
    assert empty.accuracy_matrix == [] and empty.trained == [] and math.isnan(empty.average_accuracy)
    assert ContinualResults.from_json(empty.to_json()) == empty


def test_inconsistent_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="matrix has 1 rows but trained names 2"):
        MetricResults("accuracy", [[0.1]], [0, 1], [0])
    with pytest.raises(ValueError, match="stream needs one value per row \\(1\\), got 2"):
        MetricResults("accuracy", [[0.1]], [0], [0], stream=[0.1, 0.2])
    with pytest.raises(ValueError, match="initial needs one value per tested column \\(1\\), got 2"):
        MetricResults("accuracy", [[0.1]], [0], [0], initial=[0.1, 0.2])
    with pytest.raises(ValueError, match="trained_on needs one entry per row \\(1\\), got 0"):
        MetricResults("accuracy", [[0.1]], [0], [0], trained_on=[])
    with pytest.raises(ValueError, match="metric 'f1' must be a MetricResults, got dict"):
        ContinualResults({"f1": {}})  # type: ignore[dict-item]
