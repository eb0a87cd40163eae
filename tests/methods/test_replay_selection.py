from __future__ import annotations

from typing import Any

import lightning as L
import pytest

from lightning_cl.data import SplitDigits
from lightning_cl.methods import HerdingSelection, Replay
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


def test_herding_replay_keeps_first_the_sample_nearest_each_class_mean() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    experience = bench.train_stream[0]
    module = digits_module()
    replay = Replay(mem_size=20, policy="class_balanced", selection=HerdingSelection(normalize=False))
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=experience)
    strategy = HerdingSelection(normalize=False)
    for c in experience.classes_in_this_experience:
        data = experience.dataset.subset((experience.dataset.targets == c).nonzero().flatten())
        features = strategy.features(data, module)
        nearest = int((features - features.mean(0)).norm(dim=1).argmin())
        held = replay.buffer.groups[c][0]
        assert len(held) == 10 and int(held[0]) == int(data.indices[nearest])
        assert held.tolist() == data.indices[strategy.select(data, 10, module=module)].tolist()
    # The next experience halves each group's quota: the groups keep the front of their order.
    before = {c: replay.buffer.groups[c][0].clone() for c in experience.classes_in_this_experience}
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=bench.train_stream[1])
    for c, held in before.items():
        assert replay.buffer.groups[c][0].tolist() == held[:5].tolist()


def _results(callbacks: list[Any]) -> Any:
    L.seed_everything(1)
    return fit_stream(
        digits_module(),
        SplitDigits(n_experiences=5, seed=1),
        callbacks=callbacks,
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=3),
    )


@pytest.mark.slow
def test_herding_replay_beats_naive_on_split_digits() -> None:
    naive = _results([])
    herding = _results([Replay(mem_size=200, policy="class_balanced", selection=HerdingSelection())])
    assert herding.average_accuracy > naive.average_accuracy + 0.3
    assert herding.forgetting < naive.forgetting - 0.3
