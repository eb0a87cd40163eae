"""Checkpoint after every experience, resume in a fresh process, get the same numbers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_cl.data import SplitDigits
from lightning_cl.methods import EWC, ContinualCallback, Replay
from lightning_cl.models import MLP, ContinualModule
from lightning_cl.training import fit_stream
from lightning_cl.training.checkpoint import checkpoint_name
from tests.conftest import digits_module, stream_trainer_kwargs
from tests.training.conftest import run_stream_script
from tests.training.stream_script import METHODS as SCRIPT_METHODS

# every method of the script
METHODS = tuple(SCRIPT_METHODS)


def _resume_from(ckpt_dir: Path, k: int, tmp_path: Path) -> dict[str, Any]:
    """Each method resumed in a fresh process from its checkpoint after experience ``k``."""
    stopped = tmp_path / "ckpt"
    for method in METHODS:
        (stopped / method).mkdir(parents=True)
        for j in range(k + 1):  # the files a run stopped after experience k would have left
            shutil.copy(ckpt_dir / method / checkpoint_name(j), stopped / method)
    return run_stream_script("--out", str(tmp_path / "resumed.json"), "--ckpt-dir", str(stopped), "--resume")


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 2])
def test_resume_in_a_fresh_process_gives_the_same_matrix(
    single_process_run: tuple[dict[str, Any], Path], tmp_path: Path, k: int
) -> None:
    uninterrupted, ckpt_dir = single_process_run
    resumed = _resume_from(ckpt_dir, k, tmp_path)
    for method in METHODS:
        assert resumed[method]["resumed_from"].endswith(checkpoint_name(k))
        assert resumed[method]["accuracy_matrix"] == uninterrupted[method]["accuracy_matrix"], method
        assert resumed[method]["checksums"] == uninterrupted[method]["checksums"], method


@pytest.mark.slow
def test_a_stopped_run_leaves_the_checkpoint_of_an_uninterrupted_one(
    single_process_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    uninterrupted, ckpt_dir = single_process_run
    methods = "naive,both"
    stopped = run_stream_script(
        "--out", str(tmp_path / "stopped.json"), "--ckpt-dir", str(tmp_path / "ckpt"),
        "--methods", methods, "--max-experiences", "2",
    )  # fmt: skip
    for method in methods.split(","):
        assert len(stopped[method]["accuracy_matrix"]) == 2
        assert stopped[method]["accuracy_matrix"] == uninterrupted[method]["accuracy_matrix"][:2]
        assert stopped[method]["checkpoint"] == checkpoint_name(1)
        assert sorted(p.name for p in (tmp_path / "ckpt" / method).glob("*.ckpt")) == [
            checkpoint_name(0),
            checkpoint_name(1),
        ]
        mine = torch.load(tmp_path / "ckpt" / method / checkpoint_name(1), weights_only=True)
        theirs = torch.load(ckpt_dir / method / checkpoint_name(1), weights_only=True)
        assert mine["state_dict"].keys() == theirs["state_dict"].keys()
        for name, value in mine["state_dict"].items():
            assert torch.equal(value, theirs["state_dict"][name]), (method, name)
        assert mine["lightning_cl"]["accuracy_matrix"] == theirs["lightning_cl"]["accuracy_matrix"]


@pytest.mark.slow
def test_checkpoints_hold_the_cl_state(single_process_run: tuple[dict[str, Any], Path]) -> None:
    checkpoint = torch.load(single_process_run[1] / "both" / checkpoint_name(2), weights_only=True)
    state = checkpoint["lightning_cl"]
    assert state["current_experience"] == 2 and state["experience_complete"]
    assert len(state["accuracy_matrix"]["rows"]) == 3
    (replay_state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("Replay")]
    indices = torch.cat([g["indices"] for g in replay_state["buffer"]["groups"].values()])
    assert indices.dtype == torch.long and len(indices) == 200  # indices, not images
    (ewc_state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("EWC")]
    assert sorted(ewc_state["anchors"]) == [0, 1, 2]
    assert checkpoint["lightning_cl_stream"]["fingerprint"]["name"] == "SplitDigits"


def _digits_run(tmp_path: Path, **kwargs: Any) -> tuple[ContinualModule, list[Any], Any]:
    L.seed_everything(1)
    module = digits_module()
    callbacks = [Replay(mem_size=50), EWC(ewc_lambda=1.0)]
    results = fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[*callbacks, *kwargs.pop("extra", [])],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(enable_checkpointing=True, max_epochs=2),
        checkpoint_dir=tmp_path / "ckpt",
        **kwargs,
    )
    return module, callbacks, results


def test_resume_inside_an_experience(tmp_path: Path) -> None:
    mid = ModelCheckpoint(dirpath=tmp_path / "mid", filename="{step}", every_n_train_steps=5, save_top_k=-1)
    _, _, first = _digits_run(tmp_path, max_experiences=3, extra=[mid])
    inside = max((tmp_path / "mid").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)  # inside experience 2
    assert torch.load(inside, weights_only=True)["lightning_cl"]["current_experience"] == 2
    _, callbacks, resumed = _digits_run(tmp_path, ckpt_path=inside)
    assert resumed.trained == [0, 1, 2, 3, 4]
    assert resumed.accuracy_matrix[:2] == first.accuracy_matrix[:2]
    assert sorted(callbacks[1].anchors) == [0, 1, 2, 3, 4] and len(callbacks[0].buffer) == 50
    assert resumed.average_accuracy > 0.5


def _fingerprint_of_state(module: ContinualModule, callbacks: list[Any]) -> str:
    h = hashlib.sha256()
    for v in module.state_dict().values():
        h.update(v.numpy().tobytes())
    h.update(repr(module.results).encode())
    h.update(repr(callbacks[0].buffer.groups).encode())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("benchmark", "model", "match"),
    [
        (SplitDigits(n_experiences=5, seed=2), None, "belongs to another benchmark .*class_order"),
        (SplitDigits(n_experiences=2, seed=1), None, "belongs to another benchmark"),
        (None, MLP(num_classes=10, input_size=64, hidden_size=32), "does not fit this model"),
    ],
)
def test_foreign_checkpoints_are_refused_and_nothing_changes(
    tmp_path: Path, benchmark: Any, model: Any, match: str
) -> None:
    _digits_run(tmp_path, max_experiences=2)
    ckpt = tmp_path / "ckpt" / checkpoint_name(1)
    before_file = ckpt.read_bytes()
    module = digits_module() if model is None else ContinualModule(model)
    callbacks = [Replay(mem_size=50), EWC(ewc_lambda=1.0)]
    before = _fingerprint_of_state(module, callbacks)
    with pytest.raises(ValueError, match=match):
        fit_stream(
            module,
            benchmark or SplitDigits(n_experiences=5, seed=1),
            callbacks=callbacks,
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(),
            ckpt_path=ckpt,
        )
    assert _fingerprint_of_state(module, callbacks) == before
    assert ckpt.read_bytes() == before_file
    assert module.current_experience is None


def test_a_plain_file_is_not_a_stream_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": digits_module().state_dict()}, path)
    with pytest.raises(ValueError, match="not a lightning_cl stream checkpoint"):
        fit_stream(
            digits_module(),
            SplitDigits(),
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(),
            ckpt_path=path,
        )
    with pytest.raises(FileNotFoundError):
        fit_stream(digits_module(), SplitDigits(), ckpt_path=tmp_path / "missing.ckpt")


@pytest.mark.parametrize("bad", [0, 1.5, "1", True])
def test_max_experiences_must_be_positive(bad: Any) -> None:
    with pytest.raises(ValueError, match=f"max_experiences must be a positive int or None, got {bad!r}"):
        fit_stream(digits_module(), SplitDigits(), max_experiences=bad)


def test_resume_with_other_cl_callbacks_is_refused_before_anything_changes(tmp_path: Path) -> None:
    _digits_run(tmp_path, max_experiences=2)  # written with Replay and EWC
    ckpt = tmp_path / "ckpt" / checkpoint_name(1)
    module, callbacks = digits_module(), [EWC(ewc_lambda=1.0)]
    before = hashlib.sha256(
        repr(sorted(module.state_dict().items(), key=lambda kv: kv[0])).encode()
    ).hexdigest()
    with pytest.raises(
        ValueError,
        match=r"written with the CL callbacks \[.*Replay.*EWC.*\], but the callbacks given are "
        r"\[.*EWC.*\]: the state of \[.*Replay",
    ):
        fit_stream(
            module,
            SplitDigits(n_experiences=5, seed=1),
            callbacks=callbacks,
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(),
            ckpt_path=ckpt,
        )
    after = hashlib.sha256(
        repr(sorted(module.state_dict().items(), key=lambda kv: kv[0])).encode()
    ).hexdigest()
    assert after == before and module.current_experience is None and callbacks[0].anchors == {}


def test_a_deliberate_change_of_callbacks_is_allowed(tmp_path: Path) -> None:
    _digits_run(tmp_path, max_experiences=2)
    ewc = EWC(ewc_lambda=1.0)
    with pytest.warns(UserWarning, match=r"the state of \[.*Replay.*\] would be dropped"):
        results = fit_stream(
            digits_module(),
            SplitDigits(n_experiences=5, seed=1),
            callbacks=[ewc],
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(limit_train_batches=2),
            ckpt_path=tmp_path / "ckpt" / checkpoint_name(1),
            strict_callbacks=False,
        )
    assert results.trained == [0, 1, 2, 3, 4]
    assert sorted(ewc.anchors) == [0, 1, 2, 3, 4]  # EWC's state came from the checkpoint


def test_ckpt_path_last_resumes_from_the_newest_checkpoint(tmp_path: Path) -> None:
    _, _, first = _digits_run(tmp_path, max_experiences=2)
    _, callbacks, resumed = _digits_run(tmp_path, ckpt_path="last")
    assert resumed.trained == [0, 1, 2, 3, 4]
    assert resumed.accuracy_matrix[:2] == first.accuracy_matrix[:2]
    assert sorted(callbacks[1].anchors) == [0, 1, 2, 3, 4]


def test_ckpt_path_last_without_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ckpt_path='last': no stream checkpoint"):
        fit_stream(digits_module(), SplitDigits(), logger=False, checkpoint_dir=tmp_path, ckpt_path="last")


class _Diverge(ContinualCallback):
    """An infinite penalty from experience ``at`` on (``None``: never)."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> torch.Tensor | None:
        if self.at is not None and module.current_experience >= self.at:
            return logits.new_tensor(float("inf"))
        return None


def test_a_diverging_run_leaves_the_last_good_checkpoint_intact(tmp_path: Path) -> None:
    kwargs = stream_trainer_kwargs(enable_checkpointing=True, limit_train_batches=3, limit_test_batches=1)
    bench = SplitDigits(n_experiences=5, seed=1)
    with pytest.raises(FloatingPointError, match=r"experience 2, step 0.*penalty of _diverge = inf"):
        fit_stream(
            digits_module(),
            bench,
            callbacks=[_Diverge(at=2)],
            logger=False,
            trainer_kwargs=kwargs,
            checkpoint_dir=tmp_path,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(0), checkpoint_name(1)]
    good = torch.load(tmp_path / checkpoint_name(1), weights_only=True)
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
    # The run goes on from it once the cause is gone.
    results = fit_stream(
        digits_module(),
        bench,
        callbacks=[_Diverge(at=None)],
        logger=False,
        trainer_kwargs=kwargs,
        checkpoint_dir=tmp_path,
        ckpt_path=tmp_path / checkpoint_name(1),
    )
    assert results.trained == [0, 1, 2, 3, 4]


def _metrics_run(tmp_path: Path, metrics: dict[str, Any], **kwargs: Any) -> Any:
    L.seed_everything(1)
    return fit_stream(
        digits_module(metrics=metrics),
        SplitDigits(n_experiences=5, seed=1),
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(enable_checkpointing=True, limit_train_batches=2),
        checkpoint_dir=tmp_path / "ckpt",
        **kwargs,
    )


def test_resuming_with_other_metrics_is_refused_before_anything_changes(tmp_path: Path) -> None:
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    _metrics_run(tmp_path, {"f1": MulticlassF1Score(num_classes=10)}, max_experiences=2)
    checkpoint = tmp_path / "ckpt" / checkpoint_name(1)
    for metrics in ({}, {"f1": MulticlassF1Score(10), "top3": MulticlassAccuracy(10, top_k=3)}):
        module = digits_module(metrics=metrics)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        with pytest.raises(ValueError, match=r"written with the metrics \['f1'\], this module has"):
            fit_stream(
                module,
                SplitDigits(n_experiences=5, seed=1),
                logger=False,
                trainer_kwargs=stream_trainer_kwargs(limit_train_batches=2),
                ckpt_path=checkpoint,
            )
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    resumed = _metrics_run(tmp_path, {"f1": MulticlassF1Score(num_classes=10)}, ckpt_path=checkpoint)
    assert resumed.trained == [0, 1, 2, 3, 4] and len(resumed["f1"].matrix) == 5


def test_a_file_that_is_no_checkpoint_is_refused_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text('{"accuracy_matrix": []}')
    with pytest.raises(ValueError, match=r"results.json is not a readable checkpoint \(torch.load"):
        fit_stream(digits_module(), SplitDigits(), logger=False, ckpt_path=bad)
