"""Validation streams: hold out part of every training experience."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.stream import Stream

__all__ = ["benchmark_with_validation_stream", "split_validation"]


def split_validation(
    view: DatasetView, validation_size: float, *, class_balanced: bool = True, seed: int | None = 0
) -> tuple[Tensor, Tensor]:
    """Positions (within ``view``) of the training and validation parts of one experience.

    Args:
        view: the experience's data.
        validation_size: fraction held out, in (0, 1).
        class_balanced: hold out ``validation_size`` of every class (rounded per class);
            otherwise of the whole experience, at random.
        seed: the shuffle seed (``None``: torch's global generator).

    Returns:
        ``(train_positions, validation_positions)``, disjoint, covering the view, each sorted.

    Raises:
        ValueError: for a fraction outside (0, 1), a ``class_balanced`` that is not a bool, a
            ``seed`` that is not an int or ``None``, or a split that leaves either part empty.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.zeros(10, 1), torch.arange(10) % 2)
        >>> view = DatasetView(ds, range(10))
        >>> train, valid = split_validation(view, 0.2)
        >>> len(train), len(valid), sorted(view.targets[valid].tolist())
        (8, 2, [0, 1])
    """
    if not isinstance(validation_size, int | float) or not 0.0 < validation_size < 1.0:
        raise ValueError(f"validation_size must be a fraction in (0, 1), got {validation_size!r}")
    if not isinstance(class_balanced, bool):
        raise ValueError(f"class_balanced must be a bool, got {class_balanced!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    targets = view.targets
    if class_balanced:
        held = []
        for c in torch.unique(targets).tolist():
            idx = (targets == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            held.append(idx[: round(len(idx) * validation_size)])
        valid = torch.cat(held) if held else torch.empty(0, dtype=torch.long)
    else:
        perm = torch.randperm(len(targets), generator=g)
        valid = perm[: round(len(targets) * validation_size)]
    mask = torch.zeros(len(targets), dtype=torch.bool)
    mask[valid] = True
    if mask.all() or not mask.any():
        raise ValueError(
            f"validation_size={validation_size} of {len(targets)} samples leaves "
            f"{'no training' if mask.all() else 'no validation'} sample; pick a fraction that keeps both"
        )
    return (~mask).nonzero().flatten(), mask.nonzero().flatten()


def benchmark_with_validation_stream(
    benchmark: Benchmark,
    validation_size: float = 0.1,
    *,
    class_balanced: bool = True,
    seed: int | None = 0,
) -> Benchmark:
    """A copy of ``benchmark`` whose training experiences hold out a validation part.

    Each training experience keeps ``1 - validation_size`` of its samples; the rest forms
    experience ``i`` of the new ``valid_stream``, and also the experience's own ``val_dataset``,
    so ``trainer.fit`` validates on it. The test stream is unchanged.

    Args:
        benchmark: the benchmark to split.
        validation_size: fraction held out of every experience, in (0, 1).
        class_balanced: hold out the fraction of every class (see :func:`split_validation`).
        seed: the split's seed.

    Returns:
        The new :class:`Benchmark`, with ``valid_stream`` set.

    Raises:
        ValueError: for a ``benchmark`` that is not a :class:`Benchmark`, a fraction outside
            (0, 1), a ``class_balanced`` that is not a bool, a ``seed`` that is not an int or
            ``None``, or an experience too small to split.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> bench = benchmark_with_validation_stream(SplitDigits(), 0.25)
        >>> len(bench.valid_stream), len(bench.train_stream[0]) + len(bench.valid_stream[0])
        (5, 288)
    """
    if not isinstance(benchmark, Benchmark):
        raise ValueError(f"benchmark must be a lightning_cl Benchmark, got {type(benchmark).__name__}")
    train, valid = [], []
    for exp in benchmark.train_stream:
        try:
            keep, held = split_validation(
                exp.dataset, validation_size, class_balanced=class_balanced, seed=seed
            )
        except ValueError as err:
            raise ValueError(f"train experience {exp.index}: {err}") from None
        valid_view = exp.dataset.subset(held)
        train.append(exp.replace(dataset=exp.dataset.subset(keep), val_dataset=valid_view))
        valid.append(exp.replace(dataset=valid_view, stream_name="valid", train_transform=None))
    return Benchmark(
        Stream(str(benchmark.train_stream.name), train),
        benchmark.test_stream,
        n_classes=benchmark.n_classes,
        class_order=benchmark.class_order,
        scenario=benchmark.scenario,
        valid_stream=Stream("valid", valid),
        name=benchmark.name,
    )
