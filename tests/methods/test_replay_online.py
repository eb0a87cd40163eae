from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import LoaderSettings, SplitDigits, split_online
from lightning_cl.methods import HerdingSelection, Replay
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs


def test_online_replay_offers_every_sample_of_the_first_epoch_once() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    experience = bench.train_stream[0]
    replay = Replay(mem_size=10_000, policy="reservoir", online=True)
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[replay]).fit(
        digits_module(), datamodule=experience
    )
    # A memory larger than the experience holds all of it, each sample once; the second epoch
    # offers nothing new.
    assert replay.buffer.seen == len(experience)
    assert sorted(replay.buffer.indices.tolist()) == sorted(experience.dataset.indices.tolist())


def test_online_reservoir_memory_is_updated_inside_an_experience() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    L.seed_everything(1)  # the loaders' order: the stream a reservoir sees
    replay = Replay(mem_size=50, policy="reservoir", online=True, seed=3)
    module = digits_module()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=experience)
    seen = len(bench.train_stream[0]) + len(bench.train_stream[1])
    assert replay.buffer.seen == seen and len(replay.buffer) == 50
    # Both experiences are represented (each about half of what was seen).
    classes = set(replay.buffer.targets.tolist())
    assert classes & set(bench.train_stream[0].classes_in_this_experience)
    assert classes & set(bench.train_stream[1].classes_in_this_experience)
    # Seeded: the same memory again.
    L.seed_everything(1)
    again = Replay(mem_size=50, policy="reservoir", online=True, seed=3)
    module = digits_module()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[again]).fit(module, datamodule=experience)
    assert torch.equal(again.buffer.indices, replay.buffer.indices)
    restored = Replay(mem_size=50, policy="reservoir", online=True, seed=3)
    restored.load_state_dict(replay.state_dict())
    assert torch.equal(restored.buffer.indices, replay.buffer.indices) and restored.buffer.seen == seen


def test_experience_groups_on_an_online_stream_follow_the_boundaries_flag() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    for known, groups in ((True, [0, 1]), (False, list(range(4)))):
        online = split_online(bench.train_stream[:2], 150, access_task_boundaries=known)
        assert len(online) == 4
        replay, module = Replay(mem_size=20, online=True), digits_module()
        for mini in online:
            L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=mini)
        # Known boundaries: the origin experiences; hidden: the mini-experiences.
        assert sorted(replay.buffer.groups) == groups and len(replay.buffer) == 20


def test_online_feature_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="use it with online=False"):
        Replay(mem_size=10, online=True, selection=HerdingSelection())
    with pytest.raises(ValueError, match="online must be True or False"):
        Replay(online="yes")  # type: ignore[arg-type]


def _train_online(callbacks: list[Any], access_task_boundaries: bool = False) -> Any:
    L.seed_everything(1)
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=10))
    online = split_online(bench.train_stream, 100, seed=0, access_task_boundaries=access_task_boundaries)
    module = ContinualModule(
        MLP(num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )
    for mini in online:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=callbacks).fit(module, datamodule=mini)
        if mini.online.is_last_subexp:
            L.Trainer(**quiet_trainer_kwargs()).test(module, datamodule=bench.test_stream, verbose=False)
    return module.results


@pytest.mark.slow
def test_online_replay_beats_naive_on_an_online_split_digits_stream() -> None:
    naive = _train_online([])
    reservoir = _train_online([Replay(mem_size=200, policy="reservoir", online=True)])
    balanced = _train_online([Replay(mem_size=200, policy="class_balanced", online=True)])
    by_experience = _train_online([Replay(mem_size=200, online=True)], access_task_boundaries=True)
    assert naive.average_accuracy < 0.3
    for results in (reservoir, balanced, by_experience):
        assert results.average_accuracy > naive.average_accuracy + 0.3
        assert results.forgetting < naive.forgetting - 0.3
