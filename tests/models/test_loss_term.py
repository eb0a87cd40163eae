"""The task-loss extension point: one callback may put its own loss in place of the criterion's."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ContinualCallback, Replay
from lightning_cl.models import LossTerm, batch_parts, task_loss_owner
from tests.conftest import digits_module, quiet_trainer_kwargs


class _Recorder(ContinualCallback):
    """Replaces the task loss by ``scale * CE`` on the current rows only, recording ``parts``."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.parts: list[dict[str, slice]] = []
        self.losses: list[float] = []

    def task_loss(self, module: Any, batch: Any, logits: torch.Tensor, parts: Any) -> torch.Tensor:
        self.parts.append(dict(parts))
        rows = parts["current"]
        loss = self.scale * F.cross_entropy(logits[rows], batch[1][rows])
        self.losses.append(float(loss.detach()))
        return loss


class _Other(ContinualCallback):
    def task_loss(self, module: Any, batch: Any, logits: torch.Tensor, parts: Any) -> None:
        return None


def _weights(module: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_batch_parts_follow_merge_order_and_skip_missing_loaders() -> None:
    b3 = (torch.zeros(3, 2), torch.zeros(3), torch.zeros(3))
    b2 = (torch.zeros(2, 2), torch.zeros(2), torch.zeros(2))
    assert batch_parts(b3) == {"current": slice(0, 3)}
    assert batch_parts({"current": b3, "gone": None, "replay": b2}) == {
        "current": slice(0, 3),
        "replay": slice(3, 5),
    }


def test_the_replaced_loss_is_what_trains_and_sees_the_replay_rows() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    L.seed_everything(0)
    module = digits_module()
    replay, recorder = Replay(mem_size=40, mem_batch_size=8), _Recorder(scale=0.0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=bench.train_stream[0])
    before = _weights(module)
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay, recorder])
    trainer.fit(module, datamodule=bench.train_stream[1])
    # A zero loss: the weights do not move, so the criterion's loss was not used.
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(module)))
    assert recorder.parts[0] == {"current": slice(0, 32), "replay": slice(32, 40)}
    assert len(recorder.parts) == trainer.global_step


def test_a_callback_returning_none_keeps_the_criterions_loss() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    runs = []
    for callbacks in ([], [_Other()]):
        L.seed_everything(0)
        module = digits_module()
        L.Trainer(**quiet_trainer_kwargs(), callbacks=callbacks).fit(module, datamodule=bench.train_stream[0])
        runs.append(_weights(module))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_penalties_are_added_to_the_replaced_loss() -> None:
    class Constant(ContinualCallback):
        def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> torch.Tensor:
            return logits.sum() * 0.0 + 2.5

    class Total(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            self.losses.append(float(outputs["loss"]))

    recorder, total = _Recorder(), Total()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3), callbacks=[recorder, Constant(), total])
    trainer.fit(digits_module(), datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
    assert total.losses == pytest.approx([v + 2.5 for v in recorder.losses], abs=1e-5)


def test_two_callbacks_replacing_the_task_loss_are_refused_at_set_up() -> None:
    with pytest.raises(MisconfigurationException, match="_Recorder, _Other each replace the task loss"):
        task_loss_owner([_Recorder(), LossTerm(), _Other()])
    module = digits_module()
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[_Recorder(), _Other()])
    with pytest.raises(MisconfigurationException, match="at most one callback"):
        trainer.fit(module, datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
    assert module.global_step_all == 0
