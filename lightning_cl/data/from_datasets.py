"""Benchmarks from explicit parts: a list of datasets, of tensors, or of image files (one experience each)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_cl.data.benchmark import Benchmark, build_benchmark
from lightning_cl.data.concat_dataset import ConcatClassificationDataset
from lightning_cl.data.image_files import ImageFilesDataset, read_filelist
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import stream_from_indices
from lightning_cl.data.tensor_dataset import TensorClassificationDataset
from lightning_cl.data.transforms import BatchTransform

__all__ = ["dataset_benchmark", "filelist_benchmark", "paths_benchmark", "tensors_benchmark"]


def _parts_benchmark(
    train: Any,
    train_parts: list[Tensor],
    test: Any,
    test_parts: list[Tensor],
    *,
    task_labels: bool = False,
    scenario: str | None = None,
    train_transform: BatchTransform | None = None,
    loader: LoaderSettings = LoaderSettings(),
    name: str = "benchmark",
    out: Benchmark | None = None,
) -> Benchmark:
    targets = torch.cat([train.targets, test.targets])
    n_classes = int(targets.max()) + 1 if len(targets) else 0
    kwargs: dict[str, Any] = dict(
        n_classes=n_classes,
        task_labels=list(range(len(train_parts))) if task_labels else None,
        loader_settings=loader,
    )
    train_stream = stream_from_indices(
        "train", train, train_parts, targets=train.targets, train_transform=train_transform, **kwargs
    )
    test_stream = stream_from_indices("test", test, test_parts, targets=test.targets, **kwargs)
    groups = [e.classes_in_this_experience for e in train_stream]
    order = [c for g in groups for c in g]
    disjoint = len(order) == len(set(order))
    if scenario is None:
        scenario = (
            ("task_incremental" if task_labels else "class_incremental") if disjoint else "domain_incremental"
        )
    order = list(dict.fromkeys(order))
    return build_benchmark(
        out, train_stream, test_stream, n_classes=n_classes, class_order=order, scenario=scenario, name=name
    )


def _check_pairs(train: Sequence[Any], test: Sequence[Any], what: str) -> None:
    if len(train) == 0:
        raise ValueError(f"give at least one train {what}")
    if len(test) not in (1, len(train)):
        raise ValueError(
            f"got {len(train)} train {what}s and {len(test)} test {what}s; give one test {what} per train "
            f"{what}, or one for the whole stream"
        )


def dataset_benchmark(
    train_datasets: Sequence[Any],
    test_datasets: Sequence[Any],
    *,
    task_labels: bool = False,
    scenario: str | None = None,
    train_transform: BatchTransform | None = None,
    loader: LoaderSettings = LoaderSettings(),
    name: str = "benchmark",
    out: Benchmark | None = None,
) -> Benchmark:
    """One experience per dataset: experience ``i`` trains on ``train_datasets[i]``.

    The datasets of each split are joined once into a :class:`ConcatClassificationDataset`, so
    every experience (and a replay buffer) indexes one base dataset. Inputs must share one shape.

    Args:
        train_datasets: map-style datasets of ``(x, y)`` with ``targets``.
        test_datasets: one per train dataset, or one for the whole stream.
        task_labels: give experience ``i`` task label ``i``.
        scenario: the scenario kind (default: class- or task-incremental when the experiences'
            classes are disjoint, else domain-incremental).
        train_transform: batched augmentation of the training batches.
        loader: the loader settings of every experience (:class:`LoaderSettings`).
        name: the benchmark's name.
        out: a benchmark to initialise instead of a new one (see :func:`build_benchmark`).

    Returns:
        The :class:`Benchmark`.

    Raises:
        ValueError: for no datasets, test datasets not matching the train ones, or data without ``targets``.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> a = TensorClassificationDataset(torch.zeros(4, 2), [0, 1, 0, 1])
        >>> b = TensorClassificationDataset(torch.ones(4, 2), [2, 3, 2, 3])
        >>> bench = dataset_benchmark([a, b], [a, b])
        >>> bench.scenario, [e.classes_in_this_experience for e in bench.train_stream]
        ('class_incremental', [[0, 1], [2, 3]])
    """
    _check_pairs(train_datasets, test_datasets, "dataset")
    train, test = ConcatClassificationDataset(train_datasets), ConcatClassificationDataset(test_datasets)
    return _parts_benchmark(
        train,
        train.ranges(),
        test,
        test.ranges(),
        task_labels=task_labels,
        scenario=scenario,
        train_transform=train_transform,
        loader=loader,
        name=name,
        out=out,
    )


def tensors_benchmark(
    train_tensors: Sequence[tuple[Tensor, Tensor]],
    test_tensors: Sequence[tuple[Tensor, Tensor]],
    *,
    transform: BatchTransform | None = None,
    **kwargs: Any,
) -> Benchmark:
    """One experience per ``(inputs, targets)`` pair, held as one tensor per split.

    Args:
        train_tensors: ``(x, y)`` per experience; the inputs must share their trailing shape.
        test_tensors: one pair per experience, or one for the whole stream.
        transform: batched transform applied when batches are read (normalisation).
        kwargs: further arguments of :func:`dataset_benchmark`.

    Returns:
        The :class:`Benchmark`.

    Raises:
        ValueError: for no tensors, mismatched lengths, or non-integer targets.

    Example:
        >>> parts = [(torch.zeros(3, 2), torch.tensor([0, 1, 0])), (torch.ones(2, 2), torch.tensor([2, 3]))]
        >>> [len(e) for e in tensors_benchmark(parts, parts).train_stream]
        [3, 2]
    """
    _check_pairs(train_tensors, test_tensors, "tensor pair")

    def join(pairs: Sequence[tuple[Tensor, Tensor]]) -> tuple[TensorClassificationDataset, list[Tensor]]:
        for i, (x, y) in enumerate(pairs):
            if len(x) != len(y):
                raise ValueError(f"tensor pair {i}: {len(x)} inputs but {len(y)} targets")
        ds = TensorClassificationDataset(
            torch.cat([x for x, _ in pairs]), torch.cat([torch.as_tensor(y) for _, y in pairs]), transform
        )
        bounds = [0, *torch.tensor([len(y) for _, y in pairs]).cumsum(0).tolist()]
        return ds, [torch.arange(a, b) for a, b in itertools.pairwise(bounds)]

    train, train_parts = join(train_tensors)
    test, test_parts = join(test_tensors)
    return _parts_benchmark(train, train_parts, test, test_parts, **kwargs)


def paths_benchmark(
    train_lists: Sequence[Sequence[tuple[str | Path, int]]],
    test_lists: Sequence[Sequence[tuple[str | Path, int]]],
    *,
    root: str | Path | None = None,
    size: tuple[int, int] | None = None,
    mode: str = "RGB",
    transform: BatchTransform | None = None,
    loader: LoaderSettings = LoaderSettings(num_workers=2),
    **kwargs: Any,
) -> Benchmark:
    """One experience per list of ``(image path, label)`` pairs; images are decoded by loader workers.

    Args:
        train_lists: the files of each training experience.
        test_lists: one list per experience, or one for the whole stream.
        root: folder the paths are relative to.
        size: resize every image to ``(height, width)``.
        mode: PIL mode, ``"RGB"`` or ``"L"``.
        transform: batched transform of each ``uint8`` batch (normalisation).
        loader: the loader settings (default: 2 workers, each decoding whole batches).
        kwargs: further arguments of :func:`dataset_benchmark`.

    Returns:
        The :class:`Benchmark`.

    Raises:
        ValueError: for no lists, or test lists not matching the train lists.
    """
    _check_pairs(train_lists, test_lists, "file list")

    def join(lists: Sequence[Sequence[tuple[str | Path, int]]]) -> tuple[ImageFilesDataset, list[Tensor]]:
        pairs = [p for part in lists for p in part]
        ds = ImageFilesDataset(
            [p for p, _ in pairs],
            [int(y) for _, y in pairs],
            root=root,
            size=size,
            mode=mode,
            transform=transform,
        )
        bounds = [0, *torch.tensor([len(part) for part in lists]).cumsum(0).tolist()]
        return ds, [torch.arange(a, b) for a, b in itertools.pairwise(bounds)]

    train, train_parts = join(train_lists)
    test, test_parts = join(test_lists)
    return _parts_benchmark(train, train_parts, test, test_parts, loader=loader, **kwargs)


def filelist_benchmark(
    root: str | Path,
    train_filelists: Sequence[str | Path],
    test_filelists: Sequence[str | Path],
    **kwargs: Any,
) -> Benchmark:
    """One experience per Caffe-style file list (``path label`` lines), as Avalanche's filelist generator.

    Args:
        root: folder the listed paths are relative to.
        train_filelists: one text file per training experience.
        test_filelists: one per experience, or one for the whole stream.
        kwargs: further arguments of :func:`paths_benchmark`.

    Returns:
        The :class:`Benchmark`.

    Raises:
        ValueError: for a malformed line, or lists that do not match.
    """
    return paths_benchmark(
        [read_filelist(f) for f in train_filelists],
        [read_filelist(f) for f in test_filelists],
        root=root,
        **kwargs,
    )
