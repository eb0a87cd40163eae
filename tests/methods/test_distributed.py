from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from lightning_cl.methods.distributed import all_reduce_tensors, rank_shard
from tests.conftest import quiet_trainer_kwargs


class _TwoRanks:
    """A strategy stand-in that adds a second rank holding ``offset`` plus the same values."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.calls: list[torch.Tensor] = []

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        self.calls.append(tensor)
        other = tensor + self.offset
        return tensor + other if reduce_op == "sum" else (tensor + other) / 2


def test_a_single_process_gets_its_tensors_back() -> None:
    tensors = {
        "b.weight": torch.arange(6.0).view(2, 3),
        "a.bias": torch.tensor([1.5, -2.0]),
        "n": torch.tensor(4),
    }
    trainer = L.Trainer(**quiet_trainer_kwargs())
    for owner in (trainer, SingleDeviceStrategy(torch.device("cpu"))):
        out = all_reduce_tensors(owner, tensors)
        assert list(out) == list(tensors)  # the caller's order
        for name, value in tensors.items():
            assert out[name].shape == value.shape and out[name].dtype == value.dtype
            assert torch.equal(out[name], value)
            assert out[name].data_ptr() != value.data_ptr()  # new tensors, the inputs untouched
    assert all_reduce_tensors(trainer, {}) == {}


def test_one_collective_call_reduces_every_tensor() -> None:
    strategy = _TwoRanks(offset=1.0)
    tensors = {"w": torch.ones(2, 2), "count": torch.tensor(3.0)}
    out = all_reduce_tensors(strategy, tensors, op="sum")
    assert len(strategy.calls) == 1 and strategy.calls[0].shape == (5,)
    assert out["w"].tolist() == [[3.0, 3.0], [3.0, 3.0]] and float(out["count"]) == 7.0
    mean = all_reduce_tensors(_TwoRanks(offset=2.0), tensors, op="mean")
    assert mean["w"].tolist() == [[2.0, 2.0], [2.0, 2.0]] and float(mean["count"]) == 4.0


def test_the_flat_order_does_not_depend_on_the_dict_order() -> None:
    first, second = _TwoRanks(0.0), _TwoRanks(0.0)
    all_reduce_tensors(first, {"a": torch.tensor([1.0]), "b": torch.tensor([2.0, 3.0])})
    all_reduce_tensors(second, {"b": torch.tensor([2.0, 3.0]), "a": torch.tensor([1.0])})
    assert torch.equal(first.calls[0], second.calls[0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"op must be one of \('sum', 'mean'\), got 'max'"):
        all_reduce_tensors(SingleDeviceStrategy(torch.device("cpu")), {}, op="max")
    with pytest.raises(ValueError, match="must be a lightning Trainer or Strategy, got dict"):
        all_reduce_tensors({}, {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="n must be an int >= 0, got -1"):
        rank_shard(L.Trainer(**quiet_trainer_kwargs()), -1)


def test_rank_shard_on_one_process_is_every_position() -> None:
    assert rank_shard(L.Trainer(**quiet_trainer_kwargs()), 5).tolist() == [0, 1, 2, 3, 4]
