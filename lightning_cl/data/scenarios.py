"""Scenario generators: split any dataset that exposes ``targets`` into a stream of experiences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.dataset_view import DatasetView, targets_of
from lightning_cl.data.experience import Experience
from lightning_cl.data.stream import Stream

__all__ = ["class_incremental", "resolve_class_order", "task_incremental"]


def resolve_class_order(
    classes: Sequence[int], class_order: Sequence[int] | None = None, seed: int | None = None
) -> list[int]:
    """The order in which classes enter the stream.

    Args:
        classes: the classes present in the data.
        class_order: a fixed order; must contain every class exactly once.
        seed: with no ``class_order``, shuffle the classes with this seed; with neither, keep the
            classes sorted (a deterministic default, unlike Avalanche's random shuffle).

    Raises:
        ValueError: if ``class_order`` misses, repeats or invents classes, or both it and
            ``seed`` are given.
    """
    present = sorted(int(c) for c in classes)
    if class_order is not None:
        if seed is not None:
            raise ValueError("pass either class_order or seed, not both")
        order = [int(c) for c in class_order]
        repeated = sorted({c for c in order if order.count(c) > 1})
        missing = sorted(set(present) - set(order))
        unknown = sorted(set(order) - set(present))
        if repeated or missing or unknown:
            raise ValueError(
                f"class_order must list each of the classes {present} exactly once; "
                f"repeated: {repeated}, missing: {missing}, not in the data: {unknown}"
            )
        return order
    if seed is None:
        return present
    perm = torch.randperm(len(present), generator=torch.Generator().manual_seed(int(seed)))
    return [present[i] for i in perm.tolist()]


def _split_classes(order: list[int], n_experiences: int) -> list[list[int]]:
    if not isinstance(n_experiences, int) or n_experiences < 1:
        raise ValueError(f"n_experiences must be a positive int, got {n_experiences!r}")
    n = len(order)
    if n_experiences > n or n % n_experiences:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"n_experiences={n_experiences} cannot split {n} classes evenly; allowed values: {divisors}"
        )
    k = n // n_experiences
    return [order[i * k : (i + 1) * k] for i in range(n_experiences)]


def _stream(
    name: str,
    dataset: Any,
    targets: Tensor,
    class_groups: list[list[int]],
    task_labels: bool,
    n_classes: int,
    loader_kwargs: dict[str, Any],
) -> Stream:
    experiences = []
    for i, group in enumerate(class_groups):
        indices = torch.isin(targets, torch.tensor(group)).nonzero().flatten()
        if len(indices) == 0:
            raise ValueError(f"{name} experience {i} (classes {group}) has no samples")
        view = DatasetView(dataset, indices, i if task_labels else 0, base_targets=targets)
        experiences.append(
            Experience(
                view,
                index=i,
                classes_in_this_experience=group,
                n_classes=n_classes,
                stream_name=name,
                **loader_kwargs,
            )
        )
    return Stream(name, experiences)


def class_incremental(
    train_dataset: Any,
    test_dataset: Any,
    n_experiences: int,
    *,
    class_order: Sequence[int] | None = None,
    seed: int | None = None,
    task_labels: bool = False,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    name: str = "benchmark",
) -> Benchmark:
    """Split a dataset by class into ``n_experiences`` experiences of equally many classes.

    Samples are assigned by their ``targets`` (one vectorised comparison per experience); no
    sample is read. Class ``c`` of the test set lands in the test experience that holds ``c``
    in the train stream.

    Args:
        train_dataset: map-style dataset of ``(x, y)`` with ``targets``.
        test_dataset: the same for evaluation.
        n_experiences: number of experiences; must divide the number of classes.
        class_order: fixed order of the classes (see :func:`resolve_class_order`).
        seed: seed of the class shuffle when no ``class_order`` is given.
        task_labels: give experience ``i`` task label ``i`` (task-incremental); otherwise every
            experience has task label 0 (class-incremental).
        batch_size: training batch size of every experience.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: data loader workers.
        pin_memory: pin batches in page-locked memory.
        name: the benchmark's name.

    Returns:
        The :class:`Benchmark`.

    Raises:
        ValueError: for a number of experiences that does not divide the classes, a class order
            that misses or repeats classes, a test set with classes the train set lacks, or data
            without ``targets``.

    Example:
        >>> import torch
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.randn(60, 3), torch.arange(60) % 6)
        >>> bench = class_incremental(ds, ds, n_experiences=3, class_order=[5, 4, 3, 2, 1, 0])
        >>> [e.classes_in_this_experience for e in bench.train_stream]
        [[4, 5], [2, 3], [0, 1]]
    """
    train_targets = targets_of(train_dataset)
    test_targets = targets_of(test_dataset)
    classes = torch.unique(train_targets).tolist()
    extra = sorted(set(torch.unique(test_targets).tolist()) - set(classes))
    if extra:
        raise ValueError(f"the test set has classes {extra} that the train set lacks")
    order = resolve_class_order(classes, class_order, seed)
    groups = _split_classes(order, n_experiences)
    n_classes = max(classes) + 1
    loader_kwargs = dict(
        batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, pin_memory=pin_memory
    )
    train = _stream("train", train_dataset, train_targets, groups, task_labels, n_classes, loader_kwargs)
    test = _stream("test", test_dataset, test_targets, groups, task_labels, n_classes, loader_kwargs)
    scenario = "task_incremental" if task_labels else "class_incremental"
    return Benchmark(train, test, n_classes=n_classes, class_order=order, scenario=scenario, name=name)


def task_incremental(train_dataset: Any, test_dataset: Any, n_experiences: int, **kwargs: Any) -> Benchmark:
    """:func:`class_incremental` with task label ``i`` on experience ``i``.

    Class ids keep their original values; pair the model with a
    :class:`~lightning_cl.models.MultiHeadClassifier` to route each task to its own head.
    """
    return class_incremental(train_dataset, test_dataset, n_experiences, task_labels=True, **kwargs)
