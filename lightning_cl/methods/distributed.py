"""Reducing a method's state across DDP ranks, so every rank holds (and rank 0 saves) the same."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

__all__ = ["REDUCE_OPS", "all_reduce_tensors", "rank_shard"]

REDUCE_OPS = ("sum", "mean")


def all_reduce_tensors(
    trainer_or_strategy: L.Trainer | Any, tensors: Mapping[str, Tensor], op: str = "sum"
) -> dict[str, Tensor]:
    """All-reduce a dict of tensors across the ranks in one collective call.

    The tensors are flattened into one vector (in the order of their sorted names, so ranks
    agree whatever order they built the dict in), reduced with the strategy's ``reduce``, and
    cut back into tensors of the same names, shapes and dtypes. Every rank must pass the same
    names with the same shapes. On a single device the values come back unchanged. Meant for
    importance sums estimated on each rank's shard (EWC's Fisher, MAS's sensitivities): a
    method divides by the all-reduced count afterwards.

    Args:
        trainer_or_strategy: a ``Trainer``, or its ``strategy``.
        tensors: the tensors, by name, on one device.
        op: ``"sum"`` or ``"mean"`` (over the ranks).

    Returns:
        A new dict with the reduced tensors, in the order of ``tensors``.

    Raises:
        ValueError: for an unknown ``op``, or an object without a strategy.

    Example:
        >>> from lightning.pytorch.strategies import SingleDeviceStrategy
        >>> sums = {"weight": torch.ones(2, 2), "count": torch.tensor(3.0)}
        >>> all_reduce_tensors(SingleDeviceStrategy("cpu"), sums)["count"]
        tensor(3.)
    """
    if op not in REDUCE_OPS:
        raise ValueError(f"op must be one of {REDUCE_OPS}, got {op!r}")
    strategy: Any = getattr(trainer_or_strategy, "strategy", trainer_or_strategy)
    if not callable(getattr(strategy, "reduce", None)):
        raise ValueError(
            "trainer_or_strategy must be a lightning Trainer or Strategy, "
            f"got {type(trainer_or_strategy).__name__}"
        )
    if not tensors:
        return {}
    names = sorted(tensors)
    dtype = tensors[names[0]].dtype
    for name in names[1:]:
        dtype = torch.promote_types(dtype, tensors[name].dtype)
    if op == "mean" and not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    device = tensors[names[0]].device
    flat = torch.cat([tensors[n].detach().reshape(-1).to(device, dtype) for n in names])
    flat = strategy.reduce(flat, reduce_op=op)
    out, offset = {}, 0
    for name in names:
        value = tensors[name]
        out[name] = flat[offset : offset + value.numel()].view(value.shape).to(value.dtype)
        offset += value.numel()
    return {name: out[name] for name in tensors}


def rank_shard(trainer: L.Trainer, n: int) -> Tensor:
    """This rank's share of ``n`` sample positions: ``rank, rank + world_size, ...``.

    The shards of all ranks cover ``0 .. n-1`` once each; a method that estimates something
    over an experience's data (an importance) computes on its shard and all-reduces the sums
    with :func:`all_reduce_tensors`.

    Args:
        trainer: gives ``global_rank`` and ``world_size``.
        n: how many samples.

    Returns:
        The positions, a ``long`` tensor.

    Raises:
        ValueError: for a negative ``n``.

    Example:
        >>> trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
        >>> rank_shard(trainer, 4)
        tensor([0, 1, 2, 3])
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    return torch.arange(trainer.global_rank, n, trainer.world_size)
