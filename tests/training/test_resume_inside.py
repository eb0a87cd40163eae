"""A checkpoint written inside an experience resumes to exactly the numbers of a run that never stopped.

The training loaders are stateful (seed, pass, position in the pass, random states): Lightning
saves their state in every checkpoint and restores it on resume, so epoch 1 of the resumed
experience sees the batch order, dropout masks and memory draws of the uninterrupted run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_cl.data import SplitDigits
from lightning_cl.methods import AGEM, EWC, GEM, SI, LwF, Replay
from lightning_cl.models import MLP, ContinualModule
from lightning_cl.training import fit_stream


def _methods(case: str) -> list[Any]:
    if case == "naive":
        return []
    if case == "replay+ewc":
        return [Replay(mem_size=80), EWC(ewc_lambda=5.0)]
    return [
        Replay(mem_size=50),
        EWC(ewc_lambda=1.0),
        LwF(alpha=1.0),
        SI(si_lambda=0.1),
        AGEM(patterns_per_experience=20, sample_size=16),
        GEM(patterns_per_experience=20),
    ]


def _module(case: str) -> ContinualModule:
    model = MLP(num_classes=10, input_size=64, hidden_size=64, drop_rate=0.2)  # dropout draws random numbers
    if case == "replay+ewc":
        return ContinualModule(model, optimizer=partial(torch.optim.Adam, lr=1e-3), optimizer_policy="keep")
    return ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05))


def _run(
    case: str, root: Path, ckpt_path: Path | None = None, every: str = "epoch"
) -> tuple[ContinualModule, Any]:
    """The whole stream, with fresh objects, a checkpoint after every epoch (or every 5 steps)."""
    L.seed_everything(1, verbose=False)
    module = _module(case)
    when = dict(every_n_epochs=1) if every == "epoch" else dict(every_n_train_steps=5, filename="{step}")
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", save_top_k=-1, **when)  # type: ignore[arg-type]
    results = fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[*_methods(case), checkpoints],
        logger=False,
        trainer_kwargs=dict(
            accelerator="cpu", devices=1, max_epochs=2, enable_progress_bar=False, enable_model_summary=False
        ),
        checkpoint_dir=root / "experiences",
        ckpt_path=ckpt_path,
    )
    return module, results


def _inside_experience_2(folder: Path, epoch: int) -> list[tuple[int, Path]]:
    """``(position in the pass, path)`` of the checkpoints written in ``epoch`` of experience 2."""
    found = []
    for path in folder.glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        if checkpoint["lightning_cl"]["current_experience"] == 2 and checkpoint["epoch"] == epoch:
            (current, *_) = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
            found.append((current["position"], path))
    return sorted(found)


@pytest.mark.parametrize("case", ["naive", "replay+ewc", "combined"])
def test_resume_after_an_epoch_inside_an_experience_is_exact(tmp_path: Path, case: str) -> None:
    full_module, full = _run(case, tmp_path / "full")
    ((position, inside),) = _inside_experience_2(tmp_path / "full" / "checkpoints", epoch=0)
    assert position == 9  # the end of the first pass: 291 samples in batches of 32

    resumed_module, resumed = _run(case, tmp_path / "resumed", ckpt_path=inside)
    _assert_same_run(full_module, full, resumed_module, resumed)


def test_resume_in_the_middle_of_an_epoch_is_exact(tmp_path: Path) -> None:
    full_module, full = _run("replay+ewc", tmp_path / "full", every="5 steps")
    ((position, inside), *_) = _inside_experience_2(tmp_path / "full" / "checkpoints", epoch=1)
    assert 0 < position < 9  # inside the second pass
    resumed_module, resumed = _run("replay+ewc", tmp_path / "resumed", ckpt_path=inside, every="5 steps")
    _assert_same_run(full_module, full, resumed_module, resumed)


def _assert_same_run(
    full_module: ContinualModule, full: Any, resumed_module: ContinualModule, resumed: Any
) -> None:
    assert resumed.trained == [0, 1, 2, 3, 4]
    assert resumed.accuracy_matrix == full.accuracy_matrix
    for (name, a), b in zip(full_module.state_dict().items(), resumed_module.state_dict().values()):
        assert torch.equal(a, b), name
