"""GDumb: a greedy class-balanced memory; the model re-initialised and trained on the memory alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import MER, MIR, ContinualCallback, GDumb, GSSGreedy, Replay, greedy_class_balanced
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


class _Probe(ContinualCallback):
    """Records the weights each fit starts from and the labels of every training batch."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.labels: list[list[torch.Tensor]] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_fit_start(trainer, pl_module)
        self.starts.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})
        self.labels.append([])

    def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> None:
        self.labels[-1].append(batch[1].cpu())


def _order(n: int) -> torch.Tensor:
    return torch.arange(n)


def test_the_greedy_sampler_balances_classes_and_lends_room_to_the_others() -> None:
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([0] * 6 + [1, 1] + [2, 2])
    held = greedy_class_balanced({}, targets, 6, _order(10), g)
    assert {c: len(v) for c, v in held.items()} == {0: 2, 1: 2, 2: 2}
    assert held[1] == [6, 7] and held[2] == [8, 9]  # the later classes entered in full
    # A class with one sample keeps it; the other fills the rest of the memory.
    held = greedy_class_balanced({}, torch.tensor([0] * 10 + [1]), 6, _order(11), g)
    assert {c: len(v) for c, v in held.items()} == {0: 5, 1: 1}
    # Arriving later, a new class still gets its share from the largest class.
    held = greedy_class_balanced(
        {0: [0, 1, 2, 3, 4, 5]}, torch.tensor([0] * 6 + [1] * 5), 6, _order(11)[6:], g
    )
    assert {c: len(v) for c, v in held.items()} == {0: 3, 1: 3}


def test_the_memory_is_class_balanced_after_every_experience() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    gdumb, module = GDumb(mem_size=50, seed=0), digits_module()
    seen: list[int] = []
    for experience in bench.train_stream[:3]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[gdumb]).fit(module, datamodule=experience)
        seen += experience.classes_in_this_experience
        counts = gdumb.class_counts()
        assert sorted(counts) == sorted(seen)
        assert sum(counts.values()) == 50 and max(counts.values()) - min(counts.values()) <= 1
        # Indices into the stream's dataset, pointing at samples of the labels it records.
        assert torch.equal(experience.dataset.base_targets[gdumb.indices], gdumb.targets)


def test_an_experience_fitted_twice_is_held_once() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    gdumb, module = GDumb(mem_size=500, seed=0), digits_module()
    experience = bench.train_stream[0]
    for _ in range(2):
        L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[gdumb]).fit(
            module, datamodule=experience
        )
    # Room for every sample of experience 0, each held once.
    assert len(gdumb) == len(experience.dataset) == len(set(gdumb.indices.tolist()))
    small = GDumb(mem_size=50, seed=0)
    for _ in range(2):
        L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[small]).fit(
            module, datamodule=experience
        )
    assert len(set(small.indices.tolist())) == 50 and sorted(small.class_counts().values()) == [25, 25]


@pytest.mark.parametrize("init", ["initial", "reset"])
def test_the_model_is_reinitialised_and_trained_on_the_memory_alone(init: str) -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    initial = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    gdumb, probe = GDumb(mem_size=40, init=init, seed=0), _Probe()
    ends = []
    for experience in bench.train_stream[:3]:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[gdumb, probe])
        trainer.fit(module, datamodule=experience)
        ends.append({k: v.detach().clone() for k, v in module.model.state_dict().items()})
        # Two passes over the memory, and nothing else: its labels, as many as it holds.
        labels = torch.cat(probe.labels[-1])
        assert len(labels) == 2 * len(gdumb)
        classes, counts = torch.unique(labels, return_counts=True)
        assert dict(zip(classes.tolist(), (counts // 2).tolist())) == gdumb.class_counts()
    for start, end in zip(probe.starts[1:], ends[:-1]):
        assert not torch.equal(start["head.weight"], end["head.weight"])
        same_as_initial = all(torch.equal(start[k], initial[k]) for k in initial)
        assert same_as_initial == (init == "initial")


def test_replay_next_to_gdumb_is_refused_before_anything_changes() -> None:
    gdumb, module = GDumb(mem_size=20), digits_module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[gdumb, Replay(mem_size=20)])
    with pytest.raises(MisconfigurationException, match=r"GDumb trains on its memory alone.*Replay"):
        trainer.fit(module, datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
    assert len(gdumb) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="mem_size must be an int >= 1, got 0"):
        GDumb(mem_size=0)
    with pytest.raises(ValueError, match="init must be one of"):
        GDumb(init="zeros")
    with pytest.raises(ValueError, match="seed must be an int or None"):
        GDumb(seed=1.5)  # type: ignore[arg-type]


def test_state_round_trips_and_is_small() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    gdumb = GDumb(mem_size=30, seed=0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[gdumb]).fit(
        digits_module(), datamodule=bench.train_stream[0]
    )
    state = gdumb.state_dict()
    assert state["scratch"]["initial_state"] is None  # init="reset" keeps no copy of the weights
    other = GDumb(mem_size=30)
    other.load_state_dict(state)
    assert torch.equal(other.indices, gdumb.indices) and other.class_counts() == gdumb.class_counts()
    state["targets"] = (state["targets"] + 1) % 10  # as if saved over another dataset
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="other labels"):
        other.memory(bench.train_stream[1].dataset)


@pytest.mark.slow
def test_gdumb_beats_naive_on_split_digits() -> None:
    averages = {}
    for name, callbacks, epochs in (("naive", [], 2), ("gdumb", [GDumb(mem_size=200, seed=0)], 10)):
        L.seed_everything(1)
        results = fit_stream(
            digits_module(),
            SplitDigits(n_experiences=5, seed=1),
            callbacks=callbacks,
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(max_epochs=epochs),
        )
        averages[name] = results.average_accuracy
    print(averages)
    assert averages["naive"] < 0.25
    assert averages["gdumb"] > averages["naive"] + 0.4, averages


def _stream(root: Path, ckpt_path: Path | None, max_experiences: int) -> tuple[Any, Any]:
    L.seed_everything(1, verbose=False)
    module = digits_module()
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", save_top_k=-1, every_n_epochs=1)
    kwargs = stream_trainer_kwargs(max_epochs=3)
    kwargs.pop("enable_checkpointing")
    results = fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[GDumb(mem_size=60, seed=0), checkpoints],
        logger=False,
        trainer_kwargs=kwargs,
        checkpoint_dir=root / "experiences",
        ckpt_path=ckpt_path,
        max_experiences=max_experiences,
    )
    return module, results


@pytest.mark.slow
def test_a_resume_inside_an_experience_continues_the_memorys_loader_exactly(tmp_path: Path) -> None:
    full_module, full = _stream(tmp_path / "full", None, 3)
    inside = []
    for path in (tmp_path / "full" / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        if checkpoint["lightning_cl"]["current_experience"] == 1 and checkpoint["epoch"] == 0:
            inside.append(path)
    assert len(inside) == 1
    # Experiences 1 (from its second epoch on) and 2: the same numbers and weights.
    resumed_module, resumed = _stream(tmp_path / "resumed", inside[0], 2)
    assert resumed.trained == full.trained == [0, 1, 2]
    assert resumed.accuracy_matrix == full.accuracy_matrix
    for a, b in zip(full_module.parameters(), resumed_module.parameters()):
        assert torch.equal(a, b)


def test_optimizer_policy_keep_is_refused_naming_gdumb() -> None:
    module = digits_module(optimizer_policy="keep")
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[GDumb(mem_size=20)])
    message = r"^GDumb re-initialises the model .*optimizer_policy='keep'"
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(module, datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])


@pytest.mark.parametrize(
    "other",
    [
        lambda: MIR(mem_size=20, subsample=10, mem_batch_size=5),
        lambda: GSSGreedy(mem_size=20, n_reference=2, mem_batch_size=5),
        lambda: MER(mem_size=20, mem_batch_size=4, n_batches=1),
    ],
    ids=["MIR", "GSSGreedy", "MER"],
)
def test_methods_rehearsing_their_own_memory_are_refused(other: Any) -> None:
    gdumb, module, method = GDumb(mem_size=20), digits_module(), other()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[gdumb, method])
    with pytest.raises(
        MisconfigurationException, match=rf"GDumb trains on its memory alone.*{type(method).__name__}"
    ):
        trainer.fit(module, datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
    assert len(gdumb) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_a_state_larger_than_the_memory_is_refused_and_nothing_changes() -> None:
    big = GDumb(mem_size=4)
    big.load_state_dict(
        {
            **GDumb(mem_size=4).state_dict(),
            "indices": torch.arange(4),
            "targets": torch.tensor([0, 0, 1, 1]),
            "task_labels": torch.zeros(4, dtype=torch.long),
        }
    )
    small = GDumb(mem_size=2)
    with pytest.raises(ValueError, match=r"holds 4 samples, more than this GDumb's mem_size=2"):
        small.load_state_dict(big.state_dict())
    assert len(small) == 0


def test_expert_gate_beside_it_is_refused() -> None:
    from lightning_cl.methods import ExpertGate

    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    with pytest.raises(
        MisconfigurationException, match=r"GDumb cannot be combined with ExpertGate.*wipe the experts"
    ):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[GDumb(mem_size=20), ExpertGate()]).fit(
            digits_module(), datamodule=bench.train_stream[0]
        )
