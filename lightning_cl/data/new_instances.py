"""New-instances scenario: the same classes in every experience, the instances split among them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.dataset_view import targets_of
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import stream_from_indices
from lightning_cl.data.transforms import BatchTransform

__all__ = ["new_instances", "split_instances"]


def split_instances(
    targets: Tensor, n_experiences: int, *, balance_experiences: bool = False, seed: int | None = 0
) -> list[Tensor]:
    """Split sample indices into ``n_experiences`` disjoint groups that cover every sample once.

    Args:
        targets: the labels of the samples.
        n_experiences: number of groups.
        balance_experiences: split every class evenly among the groups (each group then holds
            about ``1 / n_experiences`` of every class); otherwise a random split into groups of
            (nearly) equal size.
        seed: the shuffle seed (``None``: torch's global generator).

    Returns:
        One tensor of indices per group.

    Raises:
        ValueError: for a non-positive ``n_experiences``, or more groups than samples.

    Example:
        >>> groups = split_instances(torch.tensor([0, 0, 1, 1]), 2, balance_experiences=True)
        >>> [sorted(torch.tensor([0, 0, 1, 1])[g].tolist()) for g in groups]
        [[0, 1], [0, 1]]
    """
    if not isinstance(n_experiences, int) or isinstance(n_experiences, bool) or n_experiences < 1:
        raise ValueError(f"n_experiences must be a positive int, got {n_experiences!r}")
    if n_experiences > len(targets):
        raise ValueError(
            f"n_experiences={n_experiences} is more than the {len(targets)} samples; "
            f"allowed: 1..{len(targets)}"
        )
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    if not balance_experiences:
        perm = torch.randperm(len(targets), generator=g)
        return [part.sort().values for part in torch.tensor_split(perm, n_experiences)]
    parts: list[list[Tensor]] = [[] for _ in range(n_experiences)]
    offset = 0
    for c in torch.unique(targets).tolist():
        idx = (targets == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        # Rotate which groups get the remainder, so small classes do not always fill group 0.
        chunks = torch.tensor_split(idx, n_experiences)
        for k, chunk in enumerate(chunks):
            parts[(k + offset) % n_experiences].append(chunk)
        offset += len(idx) % n_experiences
    return [torch.cat(p).sort().values for p in parts]


def new_instances(
    train_dataset: Any,
    test_dataset: Any,
    n_experiences: int,
    *,
    balance_experiences: bool = False,
    seed: int | None = 0,
    task_labels: bool = False,
    train_transform: BatchTransform | None = None,
    loader: LoaderSettings = LoaderSettings(),
    name: str = "benchmark",
) -> Benchmark:
    """New instances (NI): every experience draws new samples of the same classes.

    The training samples are split once into ``n_experiences`` disjoint experiences (see
    :func:`split_instances`); the test stream is one experience holding the whole test set, as in
    Avalanche's ``ni_benchmark``.

    Args:
        train_dataset: map-style dataset of ``(x, y)`` with ``targets``.
        test_dataset: the same for evaluation.
        n_experiences: number of experiences.
        balance_experiences: split each class evenly among the experiences.
        seed: the split's seed (``None``: torch's global generator).
        task_labels: give experience ``i`` task label ``i``.
        train_transform: batched augmentation of the training batches.
        loader: the loader settings of every experience (:class:`LoaderSettings`).
        name: the benchmark's name.

    Returns:
        The :class:`Benchmark`, scenario ``"new_instances"``.

    Raises:
        ValueError: for more experiences than samples, or data without ``targets``.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.zeros(40, 2), torch.arange(40) % 4)
        >>> bench = new_instances(ds, ds, 4, balance_experiences=True)
        >>> [len(e) for e in bench.train_stream], bench.train_stream[0].classes_in_this_experience
        ([10, 10, 10, 10], [0, 1, 2, 3])
    """
    train_targets, test_targets = targets_of(train_dataset), targets_of(test_dataset)
    groups = split_instances(train_targets, n_experiences, balance_experiences=balance_experiences, seed=seed)
    classes = sorted(torch.unique(train_targets).tolist())
    n_classes = max(classes + torch.unique(test_targets).tolist()) + 1
    train = stream_from_indices(
        "train",
        train_dataset,
        groups,
        n_classes=n_classes,
        task_labels=list(range(n_experiences)) if task_labels else None,
        targets=train_targets,
        train_transform=train_transform,
        loader_settings=loader,
    )
    test = stream_from_indices(
        "test",
        test_dataset,
        [torch.arange(len(test_targets))],
        n_classes=n_classes,
        targets=test_targets,
        loader_settings=loader,
    )
    return Benchmark(
        train, test, n_classes=n_classes, class_order=classes, scenario="new_instances", name=name
    )
