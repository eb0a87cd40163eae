from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import Replay
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


class _BatchProbe(L.Callback):
    def __init__(self) -> None:
        self.batches: list[Any] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append(batch)


def test_replay_batches_mix_current_and_memory_samples() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, replay = digits_module(), Replay(mem_size=100, mem_batch_size=16)
    probes = []
    for experience in bench.train_stream[:3]:
        probe = _BatchProbe()
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay, probe]).fit(module, datamodule=experience)
        probes.append(probe)
    # First experience: the memory is empty, batches are plain (x, y, t).
    assert all(isinstance(b, (list, tuple)) for b in probes[0].batches)
    for i in (1, 2):
        experience = bench.train_stream[i]
        batches = probes[i].batches
        assert len(batches) == math.ceil(len(experience) / 32)
        assert all(set(b) == {"current", "replay"} for b in batches)
        assert all(len(b["replay"][1]) == 16 for b in batches)
        current_classes = set(experience.classes_in_this_experience)
        past_classes = {c for e in bench.train_stream[:i] for c in e.classes_in_this_experience}
        seen_replay = {c for b in batches for c in b["replay"][1].tolist()}
        assert seen_replay <= past_classes and not seen_replay & current_classes
        assert {c for b in batches for c in b["current"][1].tolist()} == current_classes
    assert len(replay.buffer) == 100


def test_memory_is_drawn_evenly_across_passes() -> None:
    bench = SplitDigits(n_experiences=5)
    module, replay = digits_module(), Replay(mem_size=40, mem_batch_size=8)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(module, datamodule=bench.train_stream[0])
    probe = _BatchProbe()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay, probe]).fit(
        module, datamodule=bench.train_stream[1]
    )
    ids = torch.cat([b["replay"][0].flatten(1) for b in probe.batches])
    # 9 batches x 8 = 72 draws from 40 samples: whole passes, so no sample drawn more than twice.
    _, counts = torch.unique(ids, dim=0, return_counts=True)
    assert int(counts.max()) <= 2 and len(counts) == 40


def test_zero_memory_means_naive() -> None:
    bench = SplitDigits(n_experiences=5)
    replay = Replay(mem_size=0)
    module = digits_module()
    probe = _BatchProbe()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay, probe]).fit(module, datamodule=experience)
    assert all(isinstance(b, (list, tuple)) for b in probe.batches)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mem_size=-1), "mem_size must be an int >= 0, got -1"),
        (dict(mem_size=True), "mem_size must be an int >= 0, got True"),
        (dict(seed="a"), "seed must be an int or None, got 'a'"),
        (dict(policy="lru"), "policy must be one of"),
        (dict(mem_batch_size=0), "mem_batch_size"),
        (dict(mem_batch_size=2.5), r"mem_batch_size must be a positive int or None, got 2\.5"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Replay(**kwargs)


def test_seed_fixes_the_memory() -> None:
    bench = SplitDigits(n_experiences=5)
    contents = []
    for _ in range(2):
        replay = Replay(mem_size=30, seed=5)
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(
            digits_module(), datamodule=bench.train_stream[0]
        )
        contents.append(replay.buffer.indices)
    assert torch.equal(contents[0], contents[1])


def test_state_dict_round_trip() -> None:
    bench = SplitDigits(n_experiences=5)
    replay = Replay(mem_size=30)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[replay]).fit(
        digits_module(), datamodule=bench.train_stream[0]
    )
    restored = Replay(mem_size=30)
    restored.load_state_dict(replay.state_dict())
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[restored]).fit(
        digits_module(), datamodule=bench.train_stream[1]
    )
    first_exp = set(bench.train_stream[0].dataset.indices.tolist())
    assert len(set(restored.buffer.indices.tolist()) & first_exp) == 15


def naive_and_replay_results(epochs: int = 5) -> tuple[Any, Any]:
    bench = SplitDigits(n_experiences=5, seed=1)
    out = []
    for callbacks in ([], [Replay(mem_size=200)]):
        L.seed_everything(1)
        out.append(
            fit_stream(
                digits_module(),
                bench,
                callbacks=callbacks,
                logger=False,
                trainer_kwargs=stream_trainer_kwargs(max_epochs=epochs),
            )
        )
    return out[0], out[1]


def test_naive_forgets_and_replay_remembers_on_split_digits() -> None:
    naive, replay = naive_and_replay_results()
    # Naive: the first experience is forgotten completely after the last one.
    assert naive.accuracy_matrix[-1][0] < 0.05
    assert naive.accuracy_matrix[0][0] > 0.9
    assert naive.average_accuracy < 0.25
    assert replay.average_accuracy >= naive.average_accuracy + 0.3
    assert replay.forgetting < naive.forgetting - 0.3


def test_two_memories_feeding_the_replay_loader_are_refused_before_anything_changes() -> None:
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_cl.methods import ERACE, SCR, CoPE

    bench = SplitDigits(n_experiences=5, seed=1)
    for first, second in (
        (Replay(mem_size=20), Replay(mem_size=30)),
        (ERACE(mem_size=20), Replay(mem_size=20)),
        (Replay(mem_size=20), SCR(mem_size=20)),
        (CoPE(mem_size=20), Replay(mem_size=20)),
    ):
        module = digits_module()
        weights = [p.detach().clone() for p in module.parameters()]
        trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=2), callbacks=[first, second])
        names = f"{type(first).__name__}, {type(second).__name__}"
        with pytest.raises(
            MisconfigurationException, match=f"{names} each feed a memory loader named 'replay'"
        ):
            trainer.fit(module, datamodule=bench.train_stream[0])
        assert all(torch.equal(a, b) for a, b in zip(weights, module.parameters()))
        for callback in (first, second):  # no memory filled, no seed drawn
            inner = callback.replay if isinstance(callback, CoPE) else callback
            assert len(inner.buffer) == 0 and inner.state_dict()["seed"] is None
