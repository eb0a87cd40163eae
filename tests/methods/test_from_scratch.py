"""FromScratch re-initialises the model before every experience after the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import PNN, ExpertGate, FromScratch, PackNet, Replay
from lightning_cl.models import MLP, ContinualModule
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _AtFitStart(L.Callback):
    """Listed after FromScratch: the weights each experience starts from."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.starts.append(_weights(pl_module.model))


def test_every_experience_starts_from_the_initial_weights() -> None:
    L.seed_everything(0)
    bench, module = SplitDigits(n_experiences=5, seed=1), digits_module()
    initial = _weights(module.model)
    method, probe = FromScratch(), _AtFitStart()
    trained = []
    for experience in bench.train_stream[:3]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[method, probe]).fit(module, datamodule=experience)
        trained.append(_weights(module.model))
    for start in probe.starts:
        assert all(torch.equal(start[k], initial[k]) for k in initial)
    assert not torch.equal(trained[1]["head.weight"], initial["head.weight"])  # it did train


def test_a_grown_head_keeps_initial_values_and_new_units_are_fresh() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    module = ContinualModule(MLP(input_size=64, hidden_size=32, head="incremental"))
    initial = _weights(module.model)
    method, probe = FromScratch(seed=3), _AtFitStart()
    for experience in bench.train_stream[:3]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[method, probe]).fit(module, datamodule=experience)
    third = probe.starts[2]  # the head has grown since the initial copy
    grown = [k for k in third if third[k].shape != initial[k].shape]
    assert grown, "the head should have grown"
    for k in (k for k in grown if third[k].is_floating_point()):
        rows = initial[k].shape[0]
        assert torch.equal(third[k][:rows], initial[k])  # the units that existed: initial values
    assert all(torch.equal(third[k], initial[k]) for k in third if k not in grown)


def test_reset_draws_a_new_seeded_initialisation() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    starts = []
    for _ in range(2):
        L.seed_everything(0)
        module, probe = digits_module(), _AtFitStart()
        initial = _weights(module.model)
        method = FromScratch(init="reset", seed=11)
        for experience in bench.train_stream[:2]:
            L.Trainer(**quiet_trainer_kwargs(), callbacks=[method, probe]).fit(module, datamodule=experience)
        starts.append(probe.starts[1])
        assert not torch.equal(probe.starts[1]["head.weight"], initial["head.weight"])
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def test_keeping_the_optimizer_state_is_refused() -> None:
    bench = SplitDigits(n_experiences=5)
    module = digits_module(optimizer_policy="keep")
    with pytest.raises(MisconfigurationException, match="optimizer_policy='reset'"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[FromScratch()]).fit(
            module, datamodule=bench.train_stream[0]
        )


def test_bad_init_is_refused() -> None:
    with pytest.raises(ValueError, match=r"init must be one of \('initial', 'reset'\), got 'zeros'"):
        FromScratch(init="zeros")


def test_from_scratch_forgets_and_resumes_exactly(tmp_path: Path) -> None:
    def run(ckpt: Path | None, out: Path) -> Any:
        L.seed_everything(1)
        return fit_stream(
            digits_module(),
            SplitDigits(n_experiences=5, seed=1),
            callbacks=[FromScratch(), Replay(mem_size=0)],
            logger=False,
            checkpoint_dir=out,
            ckpt_path=ckpt,
            trainer_kwargs=stream_trainer_kwargs(max_epochs=2, enable_checkpointing=True),
        )

    full = run(None, tmp_path / "full")
    # Each experience trained alone: the earlier classes are forgotten, the latest learnt.
    assert full.accuracy_matrix[4][0] < 0.05 and full.accuracy_matrix[4][4] > 0.9
    resumed = run(tmp_path / "full" / "experience_001.ckpt", tmp_path / "resumed")
    assert resumed.accuracy_matrix == full.accuracy_matrix


@pytest.mark.parametrize("seed", ["x", 1.5, True])
def test_a_seed_that_is_not_an_int_is_refused(seed: object) -> None:
    with pytest.raises(ValueError, match=f"seed must be an int or None, got {seed!r}"):
        FromScratch(seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("other", [PNN, PackNet, ExpertGate])
def test_methods_that_freeze_earlier_tasks_are_refused_beside_it(other: type) -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module = digits_module()
    before = _weights(module.model)
    refused = f"FromScratch cannot be combined with {other.__name__} in one callbacks list: re-initialising"
    with pytest.raises(MisconfigurationException, match=refused):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[FromScratch(), other()]).fit(
            module, datamodule=bench.train_stream[0]
        )
    assert all(torch.equal(v, before[k]) for k, v in _weights(module.model).items())
