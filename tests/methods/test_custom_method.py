"""The README's custom method, as written: it acts, combines with Replay, and resumes mid-stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ContinualCallback, Replay
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, stream_trainer_kwargs

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _readme_method() -> type[ContinualCallback]:
    section = README.split("## Your own method", 1)[1]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    return namespace["L2ToOldWeights"]


def _run(callbacks: list[Any], tmp_path: Path, **kwargs: Any) -> tuple[Any, Any]:
    L.seed_everything(1)
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    results = fit_stream(
        module,
        bench,
        callbacks=callbacks,
        logger=False,
        checkpoint_dir=tmp_path,
        train_stream=bench.train_stream[:3],
        trainer_kwargs=stream_trainer_kwargs(max_epochs=2, enable_checkpointing=True),
        **kwargs,
    )
    return module, results


def test_the_readme_method_pulls_the_weights_back(tmp_path: Path) -> None:
    method = _readme_method()
    strong = method(strength=10.0)
    module, _ = _run([strong], tmp_path / "a")
    assert sorted(strong.old) == sorted(n for n, _ in module.named_parameters())
    plain, _ = _run([], tmp_path / "b")
    # The same first experience; afterwards the penalty keeps the weights nearer those of the end of
    # experience 1 than plain fine-tuning does.
    drift = sum(float((p - strong.old[n]).pow(2).sum()) for n, p in module.named_parameters())
    drift_plain = sum(float((p - strong.old[n]).pow(2).sum()) for n, p in plain.named_parameters())
    assert drift < 0.5 * drift_plain


def test_the_readme_method_resumes_mid_stream_with_replay(tmp_path: Path) -> None:
    method = _readme_method()
    module, results = _run([Replay(mem_size=60, seed=0), method(strength=0.5)], tmp_path / "full")
    checkpoint = tmp_path / "full" / "experience_000.ckpt"
    assert checkpoint.is_file()
    resumed_method = method(strength=0.5)
    resumed, resumed_results = _run(
        [Replay(mem_size=60, seed=0), resumed_method], tmp_path / "resumed", ckpt_path=checkpoint
    )
    assert resumed_results.accuracy_matrix == results.accuracy_matrix
    assert results.accuracy_matrix[2][0] > 0.5  # the memory and the penalty kept experience 0
    for a, b in zip(module.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    assert sorted(resumed_method.old) == sorted(n for n, _ in resumed.named_parameters())
