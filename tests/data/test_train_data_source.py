"""The training-data extension points: extra loaders, and one loader in place of the experience's own."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits, TrainDataSource
from lightning_cl.data.train_data_source import current_data_source
from lightning_cl.methods import ContinualCallback, Replay
from tests.conftest import digits_module, quiet_trainer_kwargs


class _OneClass(ContinualCallback):
    """Trains on the experience's samples of class ``c`` alone; records the labels trained on."""

    def __init__(self, c: int) -> None:
        self.c = c
        self.labels: list[torch.Tensor] = []
        self.started = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(c=self.c)

    def on_experience_start(self, trainer: Any, module: Any, experience: Any) -> None:
        self.started += 1

    def current_dataloader(self, experience: Any) -> Any:
        data = experience.dataset
        return experience.loader(data.subset((data.targets == self.c).nonzero().flatten()), train=True)

    def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> None:
        self.labels.append(batch[1].cpu())


def test_the_replacing_loader_is_all_the_training_sees() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    experience = bench.train_stream[0]
    c = experience.classes_in_this_experience[1]
    only = _OneClass(c)
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[only])
    trainer.fit(digits_module(), datamodule=experience)
    seen = torch.cat(only.labels)
    n_ones = int((experience.dataset.targets == c).sum())
    assert seen.unique().tolist() == [c]
    assert len(seen) == n_ones  # one pass over the class's samples
    assert trainer.global_step == -(-n_ones // experience.batch_size)


def test_extra_loaders_join_the_replacing_loader() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    c = bench.train_stream[1].classes_in_this_experience[0]
    replay, only = Replay(mem_size=20, mem_batch_size=4), _OneClass(c)
    module = digits_module()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=bench.train_stream[0])
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay, only]).fit(
        module, datamodule=bench.train_stream[1]
    )
    first = only.labels[0]
    assert first[:-4].unique().tolist() == [c]  # the current part: class c only
    assert set(first[-4:].tolist()) <= set(bench.train_stream[0].classes_in_this_experience)  # the memory


def test_two_replacing_sources_are_refused_before_any_callback_sets_up() -> None:
    assert current_data_source([TrainDataSource(), Replay()]) is None
    with pytest.raises(MisconfigurationException, match="_OneClass, _OneClass each replace the experience's"):
        current_data_source([_OneClass(0), _OneClass(1)])
    first, second = _OneClass(0), _OneClass(1)
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[first, second])
    with pytest.raises(MisconfigurationException, match="at most one callback"):
        trainer.fit(digits_module(), datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
    assert first.started == second.started == 0


class _ExtraLoader(ContinualCallback):
    """Adds a loader of the experience's data under ``name``."""

    def __init__(self, name: str, tag: int) -> None:
        self.loader_name, self.tag = name, tag

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.loader_name, tag=self.tag)

    def train_dataloaders(self, experience: Any, current: Any) -> dict[str, Any]:
        return {self.loader_name: experience.loader(experience.dataset, train=True)}


def test_two_sources_of_one_loader_name_are_refused_naming_both() -> None:
    experience = SplitDigits(n_experiences=5, seed=1).train_stream[0]
    trainer = L.Trainer(
        **quiet_trainer_kwargs(), callbacks=[_ExtraLoader("mine", 1), _ExtraLoader("mine", 2)]
    )
    module = digits_module()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(
        ValueError, match="_ExtraLoader and _ExtraLoader both return a training loader named 'mine'"
    ):
        trainer.fit(module, datamodule=experience)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # nothing trained
    # apart, both are used
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[_ExtraLoader("a", 1), _ExtraLoader("b", 2)])
    trainer.fit(digits_module(), datamodule=experience)
