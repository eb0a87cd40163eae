from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import Replay
from lightning_cl.training import RESULTS_FILE, fit_stream
from tests.conftest import stream_trainer_kwargs
from tests.conftest import digits_module


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
    import lightning as L

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
