"""Every key reaches Lightning's CSV, TensorBoard and MLflow (local file store) loggers; figures too."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassF1Score

from lightning_cl.data import LoaderSettings, SplitDigits
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, stream_trainer_kwargs

PNG = b"\x89PNG\r\n\x1a\n"


def _csv_keys(logger: CSVLogger) -> set[str]:
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k for row in rows for k, v in row.items() if v not in ("", None)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("tensorboard", reason="the TensorBoard logger test needs tensorboard ([test] extra)")
    pytest.importorskip("mlflow", reason="the MLflow logger test needs mlflow-skinny ([test] extra)")
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("loggers")
    mp = pytest.MonkeyPatch()
    # mlflow 3 refuses its file store unless told; the issue asks for the local file store.
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    loggers = [
        CSVLogger(tmp, name="csv"),
        TensorBoardLogger(tmp, name="tb"),
        MLFlowLogger(experiment_name="lightning_cl", tracking_uri=f"file:{tmp / 'mlruns'}"),
    ]
    bench = SplitDigits(n_experiences=2, seed=1, loader=LoaderSettings(batch_size=64))
    module = digits_module(
        metrics={
            "f1": MulticlassF1Score(num_classes=10),
            "confusion": MulticlassConfusionMatrix(num_classes=10),
        },
        metric_scopes=("minibatch", "epoch", "experience", "stream"),
    )
    results = fit_stream(
        module,
        bench,
        logger=loggers,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=1, log_every_n_steps=2, enable_checkpointing=False),
    )
    for logger in loggers:
        logger.finalize("success")
    mp.undo()
    return {"loggers": loggers, "results": results, "tmp": tmp}


EXPECTED = {
    "test/acc/exp0",
    "test/acc/exp1",
    "test/acc/stream",
    "test/loss/exp0",
    "test/loss/stream",
    "test/f1/exp0",
    "test/f1/exp1",
    "test/f1/stream",
    "train/acc_epoch",
    "train/loss_epoch",
    "train/loss_step",
    "train/f1_step",
    "train/f1_epoch",
    "experience",
}


def test_csv_tensorboard_and_mlflow_receive_every_key(run: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger, tb, mlf = run["loggers"]
    csv_keys = _csv_keys(csv_logger) - {"epoch", "step"}  # the CSV's own columns
    assert csv_keys >= EXPECTED
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    tb_keys = set(events.Tags()["scalars"]) - {"epoch"}
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=mlf._tracking_uri)
    ml_keys = set(client.get_run(mlf.run_id).data.metrics) - {"epoch"}
    mp.undo()
    assert tb_keys == csv_keys and ml_keys == csv_keys
    # The confusion matrix is not a scalar: no key, but kept in the results.
    assert not any("confusion" in k for k in csv_keys)
    assert set(run["results"].tensors["confusion"]) == {0, 1}


def test_values_agree_across_loggers(run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger, tb, _ = run["loggers"]
    with open(Path(csv_logger.log_dir) / "metrics.csv") as f:
        last = [r for r in csv.DictReader(f) if r.get("test/f1/stream")][-1]
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    assert events.Scalars("test/f1/stream")[-1].value == pytest.approx(
        float(last["test/f1/stream"]), abs=1e-6
    )
    assert float(last["test/f1/stream"]) == pytest.approx(run["results"]["f1"].stream[-1], abs=1e-6)


def test_figures_reach_tensorboard_and_mlflow_as_png(run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, tb, mlf = run["loggers"]
    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"accuracy_matrix", "accuracy_curves", "f1_matrix", "loss_curves", "confusion_stream"} <= images
    encoded = events.Images("confusion_stream")[-1].encoded_image_string
    assert encoded.startswith(PNG) and len(encoded) > 1000
    artifacts = sorted((Path(run["tmp"]) / "mlruns").glob(f"*/{mlf.run_id}/artifacts/figures/*.png"))
    names = {p.stem for p in artifacts}
    assert {"accuracy_matrix", "f1_curves", "confusion_stream"} <= names
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 1000 for p in artifacts)
