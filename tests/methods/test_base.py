"""The method contract: hook order, restored state, seeds, and the extension points it implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits, TrainDataSource
from lightning_cl.methods import ContinualCallback, experience_generator, step_generator
from lightning_cl.models import LossTerm
from tests.conftest import digits_module, quiet_trainer_kwargs


class _Recorder(ContinualCallback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.counter = 0

    def on_experience_start(self, trainer: Any, module: Any, experience: Any) -> None:
        self.calls.append(("start", experience.index))

    def on_experience_end(self, trainer: Any, module: Any, experience: Any) -> None:
        self.calls.append(("end", experience.index))

    def on_state_restored(self, trainer: Any, module: Any, experience: Any) -> None:
        # Runs after the weights and this state are back, before any batch.
        self.calls.append(("restored", experience.index))
        self.restored_counter = self.counter
        self.restored_weights = torch.cat([p.detach().flatten() for p in module.parameters()])

    def on_train_batch_end(self, *args: Any) -> None:
        self.counter += 1

    def state_dict(self) -> dict[str, Any]:
        return {"counter": self.counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counter = state_dict["counter"]


def test_a_method_is_a_callback_a_loss_term_and_a_data_source() -> None:
    recorder = _Recorder()
    assert isinstance(recorder, L.Callback) and isinstance(recorder, LossTerm)
    assert isinstance(recorder, TrainDataSource)
    assert recorder.name == "_recorder" and recorder.penalty(None, None, torch.zeros(1)) is None  # type: ignore[arg-type]


def test_experience_hooks_run_once_per_fit() -> None:
    bench, recorder, module = SplitDigits(n_experiences=5), _Recorder(), digits_module()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[recorder]).fit(module, datamodule=experience)
    assert recorder.calls == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]


def test_on_state_restored_runs_once_after_a_restore_inside_an_experience(tmp_path: Path) -> None:
    bench = SplitDigits(n_experiences=5)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    first = _Recorder()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2, enable_checkpointing=True), callbacks=[first, saver]).fit(
        digits_module(), datamodule=bench.train_stream[0]
    )
    after_epoch_0 = sorted(tmp_path.glob("epoch=0*.ckpt"))[0]
    steps_per_epoch = first.counter // 2
    resumed = _Recorder()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[resumed]).fit(
        digits_module(), datamodule=bench.train_stream[0], ckpt_path=after_epoch_0
    )
    assert resumed.calls == [("start", 0), ("restored", 0), ("end", 0)]
    # The state and the weights it saw were the checkpoint's: no batch had run in this fit yet.
    assert resumed.restored_counter == steps_per_epoch
    saved = torch.load(after_epoch_0, weights_only=True)["state_dict"]
    torch.testing.assert_close(resumed.restored_weights, torch.cat([v.flatten() for v in saved.values()]))


def test_a_method_needs_a_continual_module() -> None:
    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0].flatten(1)).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bench = SplitDigits(n_experiences=5)
    with pytest.raises(MisconfigurationException, match="_Recorder is a continual-learning callback"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[_Recorder()]).fit(
            Plain(), datamodule=bench.train_stream[0]
        )


def test_seed_generators_differ_by_experience_and_step_and_repeat() -> None:
    draws = {
        (kind, i): torch.randint(0, 2**31 - 1, (4,), generator=make(7, i)).tolist()
        for kind, make in (("exp", experience_generator), ("step", step_generator))
        for i in range(5)
    }
    assert len({tuple(v) for v in draws.values()}) == len(draws)  # all different
    assert (
        torch.randint(0, 2**31 - 1, (4,), generator=experience_generator(7, 3)).tolist() == draws[("exp", 3)]
    )


class _Keyed(_Recorder):
    def __init__(self, key: int) -> None:
        super().__init__()
        self.key = key

    @property
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key)


def test_two_callbacks_with_one_state_key_are_refused_at_set_up() -> None:
    experience = SplitDigits(n_experiences=5, seed=1).train_stream[0]
    # Built with both, the Trainer itself refuses (Lightning's check of stateful callbacks).
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `_Recorder`"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[_Recorder(), _Recorder()])
    # Added after the Trainer was built, set-up refuses before any hook of the method ran.
    first, second = _Recorder(), _Recorder()
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[first])
    trainer.callbacks.append(second)
    with pytest.raises(
        ValueError, match=r"2 callbacks of the trainer share the state_key '_Recorder' of _Recorder"
    ):
        trainer.fit(digits_module(), datamodule=experience)
    assert first.calls == [] and second.calls == []
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[first])
    trainer.callbacks.append(first)
    with pytest.raises(
        ValueError, match=r"_Recorder is listed 2 times in the trainer's callbacks: .* Pass one _Recorder"
    ):
        trainer.fit(digits_module(), datamodule=experience)
    # Instances that tell themselves apart in their state_key combine.
    a, b = _Keyed(1), _Keyed(2)
    L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[a, b]).fit(
        digits_module(), datamodule=experience
    )
    assert a.calls == b.calls == [("start", 0), ("end", 0)]
