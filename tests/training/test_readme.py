"""The README's Python examples run as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _python_blocks() -> list[str]:
    return [part.split("```", 1)[0] for part in README.split("```python")[1:]]


def test_readme_has_the_plain_loop() -> None:
    first = _python_blocks()[0]
    assert "for experience in bench.train_stream:" in first
    assert "trainer.fit(module, datamodule=experience)" in first
    assert "trainer.test(module, datamodule=bench.test_stream" in first


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for block in _python_blocks()[:2]:  # the plain loop, then fit_stream; later blocks are fragments
        exec(compile(block, "README.md", "exec"), namespace)
    module = namespace["module"]
    # The plain loop trained all five experiences with Replay + EWC, then fit_stream went on.
    assert "Accuracy matrix" in capsys.readouterr().out
    assert namespace["results"].trained == [0, 1, 2, 3, 4]
    assert module.current_experience == 4
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["average_accuracy"] == pytest.approx(namespace["results"].average_accuracy)
    assert namespace["results"].average_accuracy > 0.5


@pytest.mark.slow
def test_the_early_stopping_example_runs(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning_cl

    block = next(b for b in _python_blocks() if 'EarlyStopping(monitor="val/loss"' in b)
    calls: list[Any] = []
    real = lightning_cl.fit_stream

    def short(module: Any, bench: Any, *, trainer_kwargs: dict[str, Any], **kwargs: Any) -> Any:
        # The example as written, cut to one experience of a few batches.
        quick = dict(trainer_kwargs, limit_train_batches=4, limit_val_batches=2, accelerator="cpu")
        calls.append((trainer_kwargs, kwargs))
        return real(module, bench, trainer_kwargs=quick, max_experiences=1, logger=False, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_CL_DATA", str(data_root))
    monkeypatch.setattr(lightning_cl, "fit_stream", short)
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    ((trainer_kwargs, kwargs),) = calls
    assert trainer_kwargs == {"max_epochs": 20}
    assert [type(c).__name__ for c in kwargs["callbacks"]] == ["Replay", "EarlyStopping"]
    assert namespace["module"].current_experience == 0
    assert len(namespace["bench"].valid_stream) == 5
