"""ER-ACE: the incoming data's cross-entropy over its own classes, plain cross-entropy on the memory."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_cl.data import LoaderSettings, SplitDigits, split_online
from lightning_cl.methods import ERACE, ERAML, SCR, CoPE, masked_cross_entropy
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average, stream_trainer_kwargs


def test_the_incoming_loss_is_a_softmax_over_the_batchs_classes_only() -> None:
    # Classes 1 and 3 are in the batch; 0 (an old class) and 2 (not seen yet) are left out.
    logits = torch.tensor(
        [[5.0, 1.0, 7.0, 0.0], [-2.0, 0.5, 9.0, 2.0], [3.0, 2.0, 1.0, -1.0]], requires_grad=True
    )
    y = torch.tensor([1, 3, 3])
    loss = masked_cross_entropy(logits, y)
    by_hand = -torch.stack(
        [torch.log_softmax(logits[i, [1, 3]], 0)[int(j)] for i, j in enumerate([0, 1, 1])]
    ).mean()
    assert float(loss.detach()) == pytest.approx(float(by_hand.detach()), abs=1e-6)
    loss.backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad[:, [0, 2]], torch.zeros(3, 2))  # absent classes get no gradient
    assert (logits.grad[:, [1, 3]] != 0).all()


def test_the_task_loss_masks_the_current_rows_and_not_the_memory() -> None:
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([2, 3, 2, 0, 1, 4])
    parts = {"current": slice(0, 3), "replay": slice(3, 6)}
    expected = masked_cross_entropy(logits[:3], y[:3]) + F.cross_entropy(logits[3:], y[3:])
    loss = ERACE().task_loss(None, (torch.zeros(6, 1), y, torch.zeros(6)), logits, parts)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    averaged = ERACE(average_terms=True).task_loss(
        None, (torch.zeros(6, 1), y, torch.zeros(6)), logits, parts
    )
    assert float(averaged) == pytest.approx(float(expected) / 2, abs=1e-6)
    # Without memory rows (the first experience): the masked term alone.
    first = ERACE().task_loss(
        None, (torch.zeros(3, 1), y[:3], torch.zeros(3)), logits[:3], {"current": slice(0, 3)}
    )
    assert float(first) == pytest.approx(float(masked_cross_entropy(logits[:3], y[:3])), abs=1e-6)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="mem_size must be an int >= 1, got 0: ERACE"):
        ERACE(mem_size=0)
    with pytest.raises(ValueError, match="policy must be one of"):
        ERACE(policy="fifo")
    with pytest.raises(ValueError, match="seed must be an int or None"):
        ERACE(seed="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="average_terms must be True or False, got 'no'"):
        ERACE(average_terms="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mem_batch_size must be a positive int or None, got 2\.5"):
        ERACE(mem_batch_size=2.5)  # type: ignore[arg-type]


def test_state_round_trips() -> None:
    ace = ERACE(mem_size=30, seed=0)
    bench = SplitDigits(n_experiences=5, seed=1)
    fit_stream(
        digits_module(),
        bench,
        callbacks=[ace],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(),
        max_experiences=1,
    )
    other = ERACE(mem_size=30, seed=0)
    other.load_state_dict(ace.state_dict())
    assert len(other.buffer) == 30 and torch.equal(other.buffer.indices, ace.buffer.indices)


@pytest.mark.slow
def test_er_ace_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    ours = split_digits_average([ERACE(mem_size=200, seed=0)])
    assert naive < 0.25
    assert ours > naive + 0.4, (naive, ours)


def test_the_running_experiences_classes_are_learnt_and_the_memory_changes_only_at_its_end() -> None:
    # A memory of older samples alone gives the new classes no cross-entropy against the old
    # ones: ER-ACE then predicted none of experience 1's test samples after training on it.
    L.seed_everything(1)
    ace = ERACE(mem_size=100, seed=0)
    seen: list[torch.Tensor] = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seen.append(ace.buffer.indices.clone())

    results = fit_stream(
        digits_module(),
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[ace, Watch()],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=2),
        max_experiences=2,
    )
    row = results.accuracy_matrix[1]
    assert row[1] > 0.5 and row[0] > 0.5, row
    assert len(seen[0]) == 0 and len(seen[2]) == 100  # during experience 0, during experience 1
    assert torch.equal(seen[2], seen[3])  # one update per experience, when it ends


class _MemorySizes(L.Callback):
    """The memory's size after every training step (runs after the method's own hook)."""

    def __init__(self, method: Any) -> None:
        self.method, self.sizes = method, []

    def on_train_batch_end(self, *args: Any) -> None:
        self.sizes.append(len(self.method.replay.buffer))


@pytest.mark.parametrize("make", [ERACE, ERAML, SCR, CoPE], ids=["ERACE", "ERAML", "SCR", "CoPE"])
def test_on_online_streams_the_memory_is_updated_after_every_step(make: Any) -> None:
    # The papers update their memories per incoming batch; it was updated at experience end only.
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=10))
    online = split_online(bench.train_stream[:2], 50, seed=0)  # boundaries hidden
    runs = {}
    for setting in (None, False):
        L.seed_everything(0)
        method, module, sizes = make(mem_size=30, seed=0, online=setting), digits_module(), []
        for mini in list(online)[:2]:
            probe = _MemorySizes(method)
            L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[method, probe]).fit(
                module, datamodule=mini
            )
            sizes.append(probe.sizes)
        runs[setting] = (sizes, method.replay.buffer.seen)
    # Default on an online stream: per step, 10 samples a step into a memory of 30 (CoPE's is
    # class-balanced: a class over its half of 30 keeps only 15).
    first = runs[None][0][0]
    assert first[0] == 10 and first[1] > first[0] and 28 <= first[-1] <= 30, runs[None][0]
    # End-of-experience updates (the option): nothing inside the first fit.
    assert runs[False][0][0] == [0, 0, 0, 0, 0] and 28 <= runs[False][0][1][0] <= 30
    assert runs[None][1] == runs[False][1] == 100


def test_on_a_stream_of_whole_experiences_the_default_updates_at_the_end() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    ace = ERACE(mem_size=30, seed=0)
    probe = _MemorySizes(ace)
    L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[ace, probe]).fit(
        digits_module(), datamodule=bench.train_stream[0]
    )
    assert set(probe.sizes) == {0} and len(ace.buffer) == 30
    with pytest.raises(ValueError, match="online must be None, True or False, got 'yes'"):
        ERACE(online="yes")  # type: ignore[arg-type]
