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
from lightning_cl.methods import AGEM, AR1, EWC, GEM, SI, CWRStar, ExpertGate, LwF, PackNet, Replay
from lightning_cl.models import MLP, ContinualModule, ExpertGateNetwork
from lightning_cl.training import fit_stream

# The architectural methods, each on the model it needs; the task-incremental ones on task labels.
_ARCHITECTURAL = {
    "cwr": lambda: [CWRStar()],
    "ar1+si": lambda: [AR1(latent_layer="features.1", mem_size=50), SI(si_lambda=0.1)],
    "packnet": lambda: [PackNet(prune_ratio=0.5, post_prune_epochs=1)],
    "expert_gate": lambda: [ExpertGate(gate_epochs=5)],
}
_TASK_INCREMENTAL = {"packnet", "expert_gate"}


def _methods(case: str) -> list[Any]:
    if case == "naive":
        return []
    if case in _ARCHITECTURAL:
        return _ARCHITECTURAL[case]()
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
    if case == "expert_gate":
        net = ExpertGateNetwork(input_size=64, hidden_size=32, code_size=8)
        return ContinualModule(net, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    head = "multihead" if case == "packnet" else "linear"
    model = MLP(num_classes=10, input_size=64, hidden_size=64, drop_rate=0.2, head=head)  # dropout draws
    if case in _ARCHITECTURAL:
        return ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
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
        SplitDigits(n_experiences=5, seed=1, task_labels=case in _TASK_INCREMENTAL),
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


@pytest.mark.slow  # two runs of the stream per case: ~10 s each on a quiet 2-core machine
@pytest.mark.parametrize("epoch", [0, 1])
@pytest.mark.parametrize("case", sorted(_ARCHITECTURAL))
def test_architectural_methods_resume_in_the_middle_of_an_epoch_exactly(
    tmp_path: Path, case: str, epoch: int
) -> None:
    # Epoch 0 and 1 of experience 2: PackNet trains, then (pruned at the start of epoch 1) retrains;
    # CWR* / AR1 freeze and hold output rows, Expert Gate trains the new expert alone.
    full_module, full = _run(case, tmp_path / "full", every="5 steps")
    inside = [
        (p, path) for p, path in _inside_experience_2(tmp_path / "full" / "checkpoints", epoch) if 0 < p < 9
    ]
    _, path = inside[0]
    assert torch.load(path, weights_only=True)["lightning_cl"]["experience_complete"] is False
    resumed_module, resumed = _run(case, tmp_path / "resumed", ckpt_path=path, every="5 steps")
    assert list(resumed_module.state_dict()) == list(full_module.state_dict())  # experts, heads: in order
    _assert_same_run(full_module, full, resumed_module, resumed)
