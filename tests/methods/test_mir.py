from __future__ import annotations

import copy
from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_cl.data import LoaderSettings, SplitDigits, split_online
from lightning_cl.methods import MIR, interference_scores
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import quiet_trainer_kwargs


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.2, 0.1], [0.3, -0.1]]))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(x)


def _brute_force(model: nn.Module, batch: Any, candidates: Any, lr: float) -> torch.Tensor:
    """The loss change of each candidate after a real SGD step on a copy of the model."""
    copy_ = copy.deepcopy(model)
    cx, cy, ct = candidates
    before = F.cross_entropy(copy_(cx, ct), cy, reduction="none").detach()
    opt = torch.optim.SGD(copy_.parameters(), lr=lr)
    F.cross_entropy(copy_(batch[0], batch[2]), batch[1]).backward()
    opt.step()
    return F.cross_entropy(copy_(cx, ct), cy, reduction="none").detach() - before


def test_mir_picks_the_samples_whose_loss_the_virtual_step_raises_most() -> None:
    model = _Linear()
    # The current batch: class 0 along the first axis. A step on it raises class 0's logit and
    # lowers class 1's for inputs along that axis: memory samples of class 1 there suffer
    # most, the more so the longer they are; samples along the second axis barely change.
    batch = (torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0]), torch.zeros(2, dtype=torch.long))
    cx = torch.tensor([[0.0, 1.0], [3.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [2.0, 0.0]])
    cy = torch.tensor([1, 1, 0, 0, 1, 1])
    candidates = (cx, cy, torch.zeros(6, dtype=torch.long))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.train()
    scores = interference_scores(model, batch, candidates, lr=0.5)
    expected = _brute_force(model, batch, candidates, lr=0.5)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert scores.argsort(descending=True)[:3].tolist() == [1, 5, 4]  # class 1 at 3, 2, 1 along axis 0
    assert scores[2] < 0  # a class-0 sample along the first axis gains
    # Nothing of the model, its gradients, mode, or the random state changed.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert torch.equal(rng, torch.get_rng_state())


def test_mir_penalty_replays_the_top_scored_subsample() -> None:
    # A memory of two experiences, then one step of MIR: the chosen samples are the top of the
    # subsample by the scores computed on the model as it was before the step.
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=16))
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    mir = MIR(mem_size=100, subsample=20, mem_batch_size=5, seed=0)
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[mir]).fit(module, datamodule=experience)
    assert len(mir.buffer) == 100 and mir.buffer.seen == sum(len(e) for e in bench.train_stream[:2])
    memory = mir.buffer.dataset(bench.train_stream[2].dataset)
    assert memory is not None
    experience = bench.train_stream[2]
    snapshot = copy.deepcopy(module)
    probe: dict[str, Any] = {}

    class _First(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 0:
                probe["batch"] = batch

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            probe.setdefault("choice", mir.last_choice.clone())  # type: ignore[union-attr]

    L.Trainer(**quiet_trainer_kwargs(max_steps=1), callbacks=[mir, _First()]).fit(
        module, datamodule=experience
    )
    from lightning_cl.methods import step_generator

    pool = torch.randperm(100, generator=step_generator(mir._seed, snapshot.global_step_all))[:20]  # type: ignore[arg-type]
    cx, cy, ct = memory.__getitems__(pool)
    scores = interference_scores(snapshot, probe["batch"], (cx, cy, ct), lr=0.01)
    expected = memory.indices[pool[scores.argsort(descending=True)[:5]]]
    assert probe["choice"].tolist() == expected.tolist()


def test_state_round_trip_and_bad_arguments() -> None:
    mir = MIR(mem_size=30, subsample=10, mem_batch_size=4, seed=2)
    restored = MIR(mem_size=30, subsample=10, mem_batch_size=4)
    restored.load_state_dict(mir.state_dict())
    assert restored._seed is None and len(restored.buffer) == 0
    for kwargs, match in (
        (dict(mem_size=0), "mem_size must be an int >= 1, got 0"),
        (dict(subsample=0), "subsample must be an int >= 1, got 0"),
        (dict(subsample=5, mem_batch_size=6), "mem_batch_size=6 must not exceed subsample=5"),
        (dict(lr=0.0), "lr must be a number > 0 or None, got 0.0"),
        (dict(policy="fifo"), "policy must be one of"),
    ):
        with pytest.raises(ValueError, match=match):
            MIR(**kwargs)  # type: ignore[arg-type]


def _train_online(callbacks: list[Any]) -> Any:
    L.seed_everything(1)
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=10))
    online = split_online(bench.train_stream, 100, seed=0)
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
def test_mir_beats_naive_on_an_online_split_digits_stream() -> None:
    naive = _train_online([])
    mir = _train_online([MIR(mem_size=200, subsample=50, mem_batch_size=10)])
    assert mir.average_accuracy > naive.average_accuracy + 0.3
    assert mir.forgetting < naive.forgetting - 0.3


def _choices_in_second_experience(candidates: str) -> list[tuple[list[int], list[int], list[int]]]:
    """Per step of experience 1: the batch's classes, the retrieved samples' classes and indices."""
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=8))
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    # Every candidate is retrieved (mem_batch_size == subsample == mem_size): what MIR may draw shows.
    mir = MIR(mem_size=40, subsample=40, mem_batch_size=40, seed=0, candidates=candidates)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[mir]).fit(module, datamodule=bench.train_stream[0])
    targets = bench.train_stream[1].dataset.base_targets
    steps: list[tuple[list[int], list[int], list[int]]] = []

    class _Record(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            mir.last_choice = None
            steps.append((batch[1].unique().tolist(), [], []))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if mir.last_choice is not None:
                chosen = mir.last_choice.tolist()
                steps[-1] = (steps[-1][0], targets[mir.last_choice].unique().tolist(), chosen)

    L.Trainer(**quiet_trainer_kwargs(), callbacks=[mir, _Record()]).fit(
        module, datamodule=bench.train_stream[1]
    )
    return steps


def test_mir_candidates_exclude_the_current_experience_or_the_batch_classes() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    first, second = (set(e.classes_in_this_experience) for e in bench.train_stream[:2])
    # "earlier" (the default): the memory as experience 1 began, experience 0's samples alone.
    earlier = _choices_in_second_experience("earlier")
    assert all(set(classes) <= first and len(chosen) == 40 for _, classes, chosen in earlier)
    assert len({tuple(sorted(chosen)) for _, _, chosen in earlier}) == 1  # the memory stays as it began
    # "all": the live reservoir, so experience 1's own samples come back once they enter it.
    live = _choices_in_second_experience("all")
    assert any(set(classes) & second for _, classes, _ in live)
    # "other_classes" (Avalanche's): never a class of the step's batch.
    other = _choices_in_second_experience("other_classes")
    assert all(not set(classes) & set(batch) for batch, classes, _ in other)
    assert any(len(chosen) < 40 for _, _, chosen in other)  # experience 1's entered, then were left out
    allowed = r"\('earlier', 'all', 'other_classes'\)"
    with pytest.raises(ValueError, match=rf"candidates must be one of {allowed}, got 'x'"):
        MIR(candidates="x")
