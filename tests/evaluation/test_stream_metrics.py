"""StreamMetrics: values per experience, per task label and over the stream's pooled samples."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from lightning_cl.evaluation import MetricMatrices, StreamMetrics, metric_dict, record_measurements


def _onehot(preds: list[int], n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), n_classes).float() * 5.0


def _f1_by_hand(preds: list[int], targets: list[int], classes: list[int]) -> float:
    """Macro F1 over the classes that occur in the predictions or the targets."""
    scores = []
    for c in classes:
        tp = sum(p == c and t == c for p, t in zip(preds, targets))
        fp = sum(p == c and t != c for p, t in zip(preds, targets))
        fn = sum(p != c and t == c for p, t in zip(preds, targets))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


# Two experiences built so that pooling matters: experience 0 predicts class 0 for everything,
# experience 1 is right on its one class-1 sample and wrong on class 2.
EXPERIENCES = [
    ([0, 0, 0, 0], [0, 0, 1, 1]),
    ([1, 1, 1, 2], [1, 2, 2, 2]),
]


def _values(tracker: StreamMetrics) -> dict[str, torch.Tensor]:
    return {m.key("test"): m.value for m in tracker.compute()}


def test_stream_f1_is_the_f1_of_the_pooled_samples_not_the_mean_of_experiences() -> None:
    tracker = StreamMetrics(
        {"f1": MulticlassF1Score(num_classes=3, average="macro")}, columns=[0, 1], n_classes=3
    )
    for k, (preds, targets) in enumerate(EXPERIENCES):
        tracker.update(k, _onehot(preds, 3), torch.tensor(targets), torch.zeros(4, dtype=torch.long))
    values = _values(tracker)
    pooled_preds = [p for preds, _ in EXPERIENCES for p in preds]
    pooled_targets = [t for _, targets in EXPERIENCES for t in targets]
    by_hand = _f1_by_hand(pooled_preds, pooled_targets, [0, 1, 2])
    assert float(values["test/f1/stream"]) == pytest.approx(by_hand)
    per_experience = [float(values[f"test/f1/exp{j}"]) for j in (0, 1)]
    for j, (preds, targets) in enumerate(EXPERIENCES):
        assert per_experience[j] == pytest.approx(_f1_by_hand(preds, targets, [0, 1, 2]))
    mean_of_experiences = sum(per_experience) / 2
    assert abs(by_hand - mean_of_experiences) > 0.05  # 0.522 against 0.417
    # Accuracy and loss are measured too; the stream accuracy is the pooled fraction right.
    assert float(values["test/acc/stream"]) == pytest.approx(4 / 8)
    assert set(values) >= {"test/loss/exp0", "test/loss/exp1", "test/loss/stream"}


def test_stream_confusion_matrix_sums_to_the_test_samples_and_is_recorded() -> None:
    tracker = StreamMetrics({"cm": MulticlassConfusionMatrix(num_classes=3)}, columns=[0, 1], n_classes=3)
    for k, (preds, targets) in enumerate(EXPERIENCES):
        tracker.update(k, _onehot(preds, 3), torch.tensor(targets), torch.zeros(4, dtype=torch.long))
    measurements = tracker.compute()
    matrices = MetricMatrices()
    record_measurements(matrices, 0, measurements)
    stream = matrices.results().tensors["cm"][0]["stream"]
    assert stream.shape == (3, 3) and stream.sum().item() == 8
    assert stream.tolist() == [[2, 0, 0], [2, 1, 0], [0, 2, 1]]
    # A non-scalar metric has no matrix of scalars: accuracy and loss do.
    assert list(matrices) == ["accuracy", "loss"]


def test_class_accuracy_feeds_amca() -> None:
    tracker = StreamMetrics(
        {"class_acc": MulticlassAccuracy(num_classes=3, average=None)}, columns=[0, 1], n_classes=3
    )
    matrices = MetricMatrices()
    for row in (0, 1):
        for k, (preds, targets) in enumerate(EXPERIENCES):
            preds = preds if row == 0 else targets  # row 1: every sample right
            tracker.update(k, _onehot(preds, 3), torch.tensor(targets), torch.zeros(4, dtype=torch.long))
        record_measurements(matrices, row, tracker.compute())
    results = matrices.results()
    # Row 0: class 0 2/2, class 1 1/3, class 2 1/3; row 1: all right.
    assert results["class_acc"].per_class[0] == pytest.approx([1.0, 1 / 3, 1 / 3])
    assert results["class_acc"].amca == pytest.approx(((1 + 2 / 3) / 3 + 1.0) / 2)
    assert results.tensors["class_acc"][1]["exp0"].tolist() == [1.0, 1.0, 0.0]


def test_an_experience_that_mixes_tasks_gets_values_per_task() -> None:
    tracker = StreamMetrics({}, columns=[0], n_classes=3, task_labels={0: [0, 1]})
    preds, targets = [0, 1, 1, 2], [0, 1, 2, 2]
    tracker.update(0, _onehot(preds, 3), torch.tensor(targets), torch.tensor([0, 0, 1, 1]))
    values = _values(tracker)
    assert float(values["test/acc/exp0"]) == pytest.approx(3 / 4)
    assert float(values["test/acc/exp0/task0"]) == pytest.approx(1.0)
    assert float(values["test/acc/exp0/task1"]) == pytest.approx(1 / 2)
    assert "test/loss/exp0/task1" in values


def test_mean_metric_of_the_loss_and_narrow_logits() -> None:
    tracker = StreamMetrics({"mean_loss": MeanMetric()}, columns=[0], n_classes=4)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # a head of 2 units on a 4-class benchmark
    targets = torch.tensor([0, 3])
    tracker.update(0, logits, targets, torch.zeros(2, dtype=torch.long))
    values = _values(tracker)
    padded = torch.nn.functional.pad(logits, (0, 2), value=-1e9)
    expected = torch.nn.functional.cross_entropy(padded, targets)
    assert float(values["test/mean_loss/exp0"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(values["test/loss/exp0"]) == pytest.approx(float(expected), rel=1e-6)


def test_scopes_choose_where_the_users_metrics_are_measured() -> None:
    tracker = StreamMetrics(
        {"f1": MulticlassF1Score(num_classes=3)}, columns=[0, 1], n_classes=3, scopes=["stream"]
    )
    for k, (preds, targets) in enumerate(EXPERIENCES):
        tracker.update(k, _onehot(preds, 3), torch.tensor(targets), torch.zeros(4, dtype=torch.long))
    keys = set(_values(tracker))
    assert "test/f1/stream" in keys and "test/f1/exp0" not in keys
    assert "test/acc/exp0" in keys  # the defaults keep every scope
    with pytest.raises(ValueError, match=r"among \('experience', 'stream'\), got \['minibatch'\]"):
        StreamMetrics({}, columns=[0], n_classes=3, scopes=["minibatch"])


def test_compute_resets_and_skips_unmeasured_columns() -> None:
    tracker = StreamMetrics({}, columns=[0, 1], n_classes=3)
    tracker.update(1, _onehot([0], 3), torch.tensor([0]), torch.zeros(1, dtype=torch.long))
    first = _values(tracker)
    assert "test/acc/exp0" not in first and float(first["test/acc/exp1"]) == 1.0
    assert _values(tracker) == {}


def test_metric_dict_names_and_refusals() -> None:
    f1 = MulticlassF1Score(num_classes=3)
    assert list(metric_dict(MetricCollection({"f1": f1, "top2": MulticlassAccuracy(3, top_k=2)}))) == [
        "f1",
        "top2",
    ]
    assert list(metric_dict([f1])) == ["MulticlassF1Score"]
    assert metric_dict(None) == {}
    with pytest.raises(ValueError, match="'acc' is taken"):
        metric_dict({"acc": f1})
    with pytest.raises(ValueError, match=r"'accuracy' is taken.*named \('accuracy', 'loss'\)"):
        metric_dict({"accuracy": f1})  # the built-in accuracy's results name: it would be replaced
    with pytest.raises(ValueError, match="metric 'f1' must be a torchmetrics Metric, got str"):
        metric_dict({"f1": "f1"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="'a/b' must hold only letters"):
        metric_dict({"a/b": f1})
    with pytest.raises(ValueError, match="metrics must be a torchmetrics Metric"):
        metric_dict(3)  # type: ignore[arg-type]


def test_results_json_round_trip_keeps_tensors(tmp_path: object) -> None:
    matrices = MetricMatrices()
    matrices.record("accuracy", 0, 0, 0.5)
    matrices.record_tensor("cm", 0, "stream", torch.tensor([[1.0, math.nan], [0.0, 2.0]]))
    results = matrices.results()
    back = type(results).from_json(results.to_json())
    assert back == results
    assert back.tensors["cm"][0]["stream"][0, 0].item() == 1.0 and math.isnan(
        back.tensors["cm"][0]["stream"][0, 1]
    )
    state = MetricMatrices()
    state.load_state_dict(matrices.state_dict())
    assert state.results() == results


def test_default_accuracy_and_loss_equal_per_batch_updates_across_a_flush(monkeypatch) -> None:
    # The defaults are updated once from concatenated batches (and flushed when many are held):
    # the values must be those of one torchmetrics update per batch.
    import lightning_cl.evaluation.stream_metrics as sm

    monkeypatch.setattr(sm, "_FLUSH_VALUES", 200)  # 50 samples of 4 logits
    g = torch.Generator().manual_seed(0)
    tracker = StreamMetrics({}, columns=[0, 1], n_classes=4)
    reference = {c: (MulticlassAccuracy(num_classes=4, average="micro"), MeanMetric()) for c in (0, 1)}
    for step in range(12):
        column = step % 2
        logits = torch.randn(16, 4, generator=g)
        y = torch.randint(0, 4, (16,), generator=g)
        tracker.update(column, logits, y, torch.zeros(16, dtype=torch.long))
        acc, loss = reference[column]
        acc.update(logits, y)
        loss.update(torch.nn.functional.cross_entropy(logits, y, reduction="none"))
    values = {m.key("test"): float(m.value) for m in tracker.compute()}
    for c in (0, 1):
        assert values[f"test/acc/exp{c}"] == pytest.approx(float(reference[c][0].compute()), abs=1e-7)
        assert values[f"test/loss/exp{c}"] == pytest.approx(float(reference[c][1].compute()), rel=1e-6)
    pooled = (float(reference[0][0].compute()) + float(reference[1][0].compute())) / 2  # equal sizes
    assert values["test/acc/stream"] == pytest.approx(pooled, abs=1e-7)
    # Nothing is held after compute: a new evaluation starts empty.
    assert tracker.compute() == []


def test_deferred_loss_uses_the_losses_given_to_update() -> None:
    # A caller's per-sample losses (not the cross-entropy of the logits) are what the default
    # loss averages, also when the logits wait for one argmax and one cross-entropy at compute.
    tracker = StreamMetrics({}, columns=[0], n_classes=3)
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 2])
    tracker.update(0, logits, y, torch.zeros(2, dtype=torch.long), loss=torch.tensor([1.0, 3.0]))
    tracker.update(0, logits, y, torch.zeros(2, dtype=torch.long))  # no loss: its cross-entropy
    values = {m.key("test"): float(m.value) for m in tracker.compute()}
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert values["test/loss/exp0"] == pytest.approx((1.0 + 3.0 + float(ce.sum())) / 4, rel=1e-6)
    assert values["test/acc/exp0"] == pytest.approx(0.5)
