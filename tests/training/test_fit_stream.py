from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import Replay
from lightning_cl.training import RESULTS_FILE, fit_stream
from lightning_cl.training.fit_stream import FIGURE_FILE, save_results
from tests.conftest import digits_module, stream_trainer_kwargs


def test_fit_stream_trains_every_experience_and_writes_results(tmp_path: Path) -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    results = fit_stream(
        module,
        bench,
        callbacks=[Replay(mem_size=100)],
        trainer_kwargs=stream_trainer_kwargs(default_root_dir=str(tmp_path)),
    )
    assert results.trained == [0, 1, 2, 3, 4] and len(results.accuracy_matrix) == 5
    assert module.current_experience == 4 and module.seen_classes == set(range(10))
    (path,) = tmp_path.glob(f"lightning_logs/version_*/{RESULTS_FILE}")
    data = json.loads(path.read_text())
    assert data["accuracy_matrix"] == results.accuracy_matrix
    assert data["average_accuracy"] == pytest.approx(results.average_accuracy)
    assert (path.parent / "metrics.csv").is_file()


def test_fit_stream_is_the_plain_loop() -> None:
    from tests.conftest import quiet_trainer_kwargs

    bench = SplitDigits(n_experiences=5, seed=1)
    L.seed_everything(3)
    via_function = fit_stream(digits_module(), bench, logger=False, trainer_kwargs=stream_trainer_kwargs())
    L.seed_everything(3)
    module = digits_module()
    for experience in bench.train_stream:
        trainer = L.Trainer(**quiet_trainer_kwargs())
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    assert via_function.accuracy_matrix == module.results.accuracy_matrix


def test_evaluate_false_skips_the_tests() -> None:
    bench = SplitDigits(n_experiences=5)
    results = fit_stream(
        digits_module(), bench, logger=False, evaluate=False, trainer_kwargs=stream_trainer_kwargs()
    )
    assert results.accuracy_matrix == []


@pytest.mark.parametrize("key", ["callbacks", "logger"])
def test_own_arguments_are_refused_in_trainer_kwargs(key: str) -> None:
    with pytest.raises(ValueError, match=f"pass \\['{key}'\\] as fit_stream arguments"):
        fit_stream(digits_module(), SplitDigits(), trainer_kwargs={key: None})


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_strategies_that_lose_callback_state_are_refused(strategy: str) -> None:
    module = digits_module()
    with pytest.raises(MisconfigurationException, match="use strategy='ddp'"):
        fit_stream(module, SplitDigits(), trainer_kwargs={"strategy": strategy})
    assert module.current_experience is None


# ---------------------------------------------------------------- what a run shows


@pytest.fixture
def lightning_lines() -> Iterator[list[str]]:
    """The lines logged through Lightning's loggers (where fit_stream's lines go) during the test."""
    lines: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    # "lightning.pytorch" is where every record of its children arrives (it may not propagate further).
    handler = _Keep(level=logging.INFO)
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_one_line_after_each_experience(lightning_lines: list[str]) -> None:
    results = fit_stream(
        digits_module(),
        SplitDigits(n_experiences=5, seed=1),
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(),
    )
    summaries = [line for line in lightning_lines if line.startswith("lightning_cl: experience")]
    assert len(summaries) == 5
    assert summaries[0].startswith("lightning_cl: experience 0 (1/5) done in ")
    last = summaries[-1]
    assert f"accuracy on experiences seen so far {results.seen_accuracy:.4f}" in last
    assert f"stream accuracy {results.stream_accuracy[-1]:.4f}" in last
    # After experience 0 only experience 0 was seen: its accuracy is R[0][0].
    assert f"seen so far {results.accuracy_matrix[0][0]:.4f}" in summaries[0]


def test_start_up_lines_and_summary_once_per_run(lightning_lines: list[str]) -> None:
    kwargs = stream_trainer_kwargs(enable_model_summary=True)
    fit_stream(digits_module(), SplitDigits(n_experiences=5, seed=1), logger=False, trainer_kwargs=kwargs)
    assert sum(line.startswith("GPU available") for line in lightning_lines) == 1
    assert sum("Trainable params" in line for line in lightning_lines) == 1
    # The filter is gone once the run ends: a later Trainer shows its lines again.
    lightning_lines.clear()
    L.Trainer(logger=False, enable_checkpointing=False)
    assert sum(line.startswith("GPU available") for line in lightning_lines) == 1


class _ProgressBarProbe(L.Callback):
    def __init__(self) -> None:
        self.bars: list[bool] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bars.append(trainer.progress_bar_callback is not None)


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_follows_the_terminal(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = stream_trainer_kwargs(limit_train_batches=2, limit_test_batches=1)
    kwargs.pop("enable_progress_bar")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    probe = _ProgressBarProbe()
    fit_stream(
        digits_module(), SplitDigits(n_experiences=2), callbacks=[probe], logger=False, trainer_kwargs=kwargs
    )
    assert probe.bars == [tty, tty]


def test_results_and_figure_beside_each_other(tmp_path: Path) -> None:
    fit_stream(
        digits_module(),
        SplitDigits(n_experiences=2),
        trainer_kwargs=stream_trainer_kwargs(default_root_dir=str(tmp_path), limit_train_batches=2),
    )
    (results,) = tmp_path.glob(f"lightning_logs/version_0/{RESULTS_FILE}")
    figure = results.with_name(FIGURE_FILE)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_is_skipped_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lightning_lines: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    results = fit_stream(
        digits_module(),
        SplitDigits(n_experiences=2),
        logger=False,
        evaluate=True,
        trainer_kwargs=stream_trainer_kwargs(limit_train_batches=1),
    )
    path = save_results(results, tmp_path)
    assert path.is_file() and not (tmp_path / FIGURE_FILE).exists()
    assert [line for line in lightning_lines if "needs matplotlib" in line] == [
        f"lightning_cl: no {FIGURE_FILE} (the figure needs matplotlib: pip install matplotlib)"
    ]


def test_leafspec_deprecation_is_filtered_outside_pytest() -> None:
    trigger = "from torch.utils._pytree import LeafSpec; LeafSpec()"
    plain = subprocess.run(
        [sys.executable, "-W", "default", "-c", trigger], capture_output=True, text=True, check=True
    )
    assert "LeafSpec" in plain.stderr  # torch warns without lightning_cl
    filtered = subprocess.run(
        [sys.executable, "-W", "default", "-c", f"import lightning_cl; {trigger}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "LeafSpec" not in filtered.stderr


# ---------------------------------------------------------------- a module trained before


def test_an_already_trained_module_is_refused() -> None:
    bench = SplitDigits(n_experiences=2)
    module = digits_module()
    kwargs = stream_trainer_kwargs(limit_train_batches=2)
    first = fit_stream(module, bench, logger=False, trainer_kwargs=kwargs)
    with pytest.raises(
        ValueError, match=r"already trained experiences \[0, 1\].*fresh ContinualModule.*ckpt_path"
    ):
        fit_stream(module, bench, logger=False, trainer_kwargs=kwargs)
    assert module.results.accuracy_matrix == first.accuracy_matrix


def test_a_module_from_the_plain_loop_is_refused() -> None:
    bench = SplitDigits(n_experiences=2)
    module = digits_module()
    from tests.conftest import quiet_trainer_kwargs

    L.Trainer(**quiet_trainer_kwargs(limit_train_batches=2)).fit(module, datamodule=bench.train_stream[0])
    with pytest.raises(ValueError, match=r"already trained experiences \[0\]"):
        fit_stream(module, bench, logger=False, trainer_kwargs=stream_trainer_kwargs())


def test_a_module_may_go_on_with_the_experiences_it_has_not_trained() -> None:
    bench = SplitDigits(n_experiences=5)
    module = digits_module()
    kwargs = stream_trainer_kwargs(limit_train_batches=2, limit_test_batches=1)
    fit_stream(module, bench, logger=False, train_stream=bench.train_stream[:1], trainer_kwargs=kwargs)
    results = fit_stream(
        module, bench, logger=False, train_stream=bench.train_stream[1:2], trainer_kwargs=kwargs
    )
    assert results.trained == [0, 1]
