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
