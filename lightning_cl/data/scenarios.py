"""Scenario generators: split any dataset that exposes ``targets`` into a stream of experiences."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_cl.data.benchmark import Benchmark, build_benchmark
from lightning_cl.data.dataset_view import DatasetView, targets_of
from lightning_cl.data.experience import Experience
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.relabeled import RelabeledDataset
from lightning_cl.data.stream import Stream
from lightning_cl.data.transforms import BatchTransform

__all__ = [
    "ClassIncrementalBenchmark",
    "class_incremental",
    "resolve_class_order",
    "split_classes",
    "stream_from_indices",
    "task_incremental",
]


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

    Returns:
        The class order.

    Example:
        >>> resolve_class_order([0, 1, 2], seed=None)
        [0, 1, 2]
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


def split_classes(
    order: list[int],
    n_experiences: int,
    per_exp_classes: Sequence[int] | Mapping[int, int] | None = None,
) -> list[list[int]]:
    """Cut a class order into the class groups of the experiences.

    Args:
        order: the classes, in stream order.
        n_experiences: number of experiences.
        per_exp_classes: ``None`` (equal groups; the number of experiences must divide the
            classes), a sequence of ``n_experiences`` group sizes, or Avalanche's mapping
            ``{experience: n_classes}`` whose other experiences share the remaining classes equally.

    Returns:
        One list of classes per experience.

    Raises:
        ValueError: for a non-positive number of experiences, more experiences than classes,
            sizes that do not add up to the classes or leave an experience empty.

    Example:
        >>> split_classes(list(range(10)), 4, {0: 4})
        [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    """
    if not isinstance(n_experiences, int) or isinstance(n_experiences, bool) or n_experiences < 1:
        raise ValueError(f"n_experiences must be a positive int, got {n_experiences!r}")
    n = len(order)
    if n_experiences > n:
        raise ValueError(f"n_experiences={n_experiences} is more than the {n} classes; allowed: 1..{n}")
    if per_exp_classes is None:
        if n % n_experiences:
            divisors = [d for d in range(1, n + 1) if n % d == 0]
            raise ValueError(
                f"n_experiences={n_experiences} cannot split {n} classes evenly; allowed values: {divisors} "
                "(or pass per_exp_classes)"
            )
        sizes = [n // n_experiences] * n_experiences
    elif isinstance(per_exp_classes, Mapping):
        fixed = {int(k): int(v) for k, v in per_exp_classes.items()}
        bad = {k: v for k, v in fixed.items() if not 0 <= k < n_experiences or v < 1}
        if bad:
            raise ValueError(
                f"per_exp_classes maps experience -> classes; experiences must lie in 0..{n_experiences - 1} "
                f"and counts be >= 1, got {bad}"
            )
        rest, free = n - sum(fixed.values()), n_experiences - len(fixed)
        if (free == 0 and rest != 0) or (free > 0 and (rest < free or rest % free)):
            raise ValueError(
                f"per_exp_classes={fixed} leaves {rest} classes for {free} other experiences; "
                "they must split "
                "evenly, at least one class each"
            )
        sizes = [fixed.get(i, rest // free if free else 0) for i in range(n_experiences)]
    else:
        sizes = [int(k) for k in per_exp_classes]
        if len(sizes) != n_experiences or sum(sizes) != n or min(sizes) < 1:
            raise ValueError(
                f"per_exp_classes={sizes} must give {n_experiences} counts >= 1 "
                f"that add up to the {n} classes"
            )
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


def stream_from_indices(
    name: str,
    dataset: Any,
    index_groups: Sequence[Tensor],
    *,
    n_classes: int,
    task_labels: Sequence[int] | None = None,
    classes: Sequence[Sequence[int]] | None = None,
    targets: Tensor | None = None,
    **experience_kwargs: Any,
) -> Stream:
    """A stream whose experience ``i`` is the view of ``dataset`` at ``index_groups[i]``.

    Args:
        name: the stream's name.
        dataset: the one base dataset of every experience.
        index_groups: the indices of each experience.
        n_classes: number of classes of the benchmark.
        task_labels: one task label per experience (default: all 0).
        classes: the classes of each experience (default: those present in its targets).
        targets: the labels of ``dataset`` if already known.
        experience_kwargs: further arguments of :class:`Experience` (``loader_settings``,
            ``train_transform``, ...).

    Returns:
        The :class:`Stream`.

    Raises:
        ValueError: for an empty experience, or task labels not one per experience.
    """
    targets = targets_of(dataset) if targets is None else targets
    if task_labels is not None and len(task_labels) != len(index_groups):
        raise ValueError(f"got {len(task_labels)} task labels for {len(index_groups)} experiences")
    experiences = []
    for i, indices in enumerate(index_groups):
        if len(indices) == 0:
            raise ValueError(f"{name} experience {i} has no samples; every experience needs at least one")
        view = DatasetView(dataset, indices, int(task_labels[i]) if task_labels else 0, base_targets=targets)
        present = classes[i] if classes is not None else torch.unique(targets[view.indices]).tolist()
        experiences.append(
            Experience(
                view,
                index=i,
                classes_in_this_experience=present,
                n_classes=n_classes,
                stream_name=name,
                **experience_kwargs,
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
    per_exp_classes: Sequence[int] | Mapping[int, int] | None = None,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    train_transform: BatchTransform | None = None,
    loader: LoaderSettings = LoaderSettings(),
    name: str = "benchmark",
    out: Benchmark | None = None,
) -> Benchmark:
    """Split a dataset by class into ``n_experiences`` experiences.

    Samples are assigned by their ``targets`` (one vectorised comparison per experience); no
    sample is read. Class ``c`` of the test set lands in the test experience that holds ``c``
    in the train stream.

    Args:
        train_dataset: map-style dataset of ``(x, y)`` with ``targets``.
        test_dataset: the same for evaluation.
        n_experiences: number of experiences; must divide the number of classes unless
            ``per_exp_classes`` sets the group sizes.
        class_order: fixed order of the classes (see :func:`resolve_class_order`).
        seed: seed of the class shuffle when no ``class_order`` is given.
        task_labels: give experience ``i`` task label ``i`` (task-incremental); otherwise every
            experience has task label 0 (class-incremental).
        per_exp_classes: classes per experience, as a list of counts or Avalanche's mapping
            ``{experience: count}`` (see :func:`split_classes`).
        class_ids_from_zero_in_each_exp: relabel the classes of every experience ``0..k-1`` (in
            class-order position); usual with task labels and multi-head models.
        class_ids_from_zero_from_first_exp: relabel the classes ``0..n-1`` in class order.
        train_transform: batched augmentation of the training batches.
        loader: the loader settings of every experience (:class:`LoaderSettings`).
        name: the benchmark's name.
        out: a benchmark to initialise instead of a new one (see :func:`build_benchmark`).

    Returns:
        The :class:`Benchmark`. Its ``class_order`` lists the original class ids;
        ``classes_in_this_experience`` lists the ids the model sees (relabelled when asked).

    Raises:
        ValueError: for a number of experiences that does not divide the classes, a class order
            that misses or repeats classes, a test set with classes the train set lacks, both
            relabelling options, or data without ``targets``.

    Example:
        >>> import torch
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.randn(60, 3), torch.arange(60) % 6)
        >>> bench = class_incremental(ds, ds, n_experiences=3, class_order=[5, 4, 3, 2, 1, 0])
        >>> [e.classes_in_this_experience for e in bench.train_stream]
        [[4, 5], [2, 3], [0, 1]]
    """
    if class_ids_from_zero_in_each_exp and class_ids_from_zero_from_first_exp:
        raise ValueError(
            "class_ids_from_zero_in_each_exp and class_ids_from_zero_from_first_exp exclude each other"
        )
    train_targets = targets_of(train_dataset)
    test_targets = targets_of(test_dataset)
    classes = torch.unique(train_targets).tolist()
    extra = sorted(set(torch.unique(test_targets).tolist()) - set(classes))
    if extra:
        raise ValueError(f"the test set has classes {extra} that the train set lacks")
    order = resolve_class_order(classes, class_order, seed)
    groups = split_classes(order, n_experiences, per_exp_classes)
    n_classes = max(classes) + 1
    seen = groups
    if class_ids_from_zero_in_each_exp or class_ids_from_zero_from_first_exp:
        mapping = torch.zeros(n_classes, dtype=torch.long)
        for _g, group in enumerate(groups):
            for position, c in enumerate(group):
                mapping[c] = position if class_ids_from_zero_in_each_exp else order.index(c)
        seen = [mapping[torch.tensor(g)].tolist() for g in groups]
        n_classes = max(len(g) for g in groups) if class_ids_from_zero_in_each_exp else len(order)
        train_dataset, test_dataset = (
            RelabeledDataset(train_dataset, mapping),
            RelabeledDataset(test_dataset, mapping),
        )
    kwargs = dict(
        n_classes=n_classes,
        task_labels=list(range(len(groups))) if task_labels else None,
        classes=seen,
        loader_settings=loader,
    )
    train = stream_from_indices(
        "train", train_dataset, _by_class(train_targets, groups), train_transform=train_transform, **kwargs
    )
    test = stream_from_indices("test", test_dataset, _by_class(test_targets, groups), **kwargs)
    scenario = "task_incremental" if task_labels else "class_incremental"
    return build_benchmark(
        out, train, test, n_classes=n_classes, class_order=order, scenario=scenario, name=name
    )


class ClassIncrementalBenchmark(Benchmark):
    """A dataset's train and test splits divided by class, with the arguments of every ``Split*`` benchmark.

    :class:`~lightning_cl.data.SplitMNIST`, :class:`~lightning_cl.data.SplitCIFAR10`,
    :class:`~lightning_cl.data.SplitOmniglot` and the other ``Split*`` benchmarks load their two
    splits and pass them here; their own signatures list only their dataset's arguments
    (``root``, ``download``, ``augment``, their default number of experiences and loader
    settings) and forward the rest as ``**kwargs``, which ``LightningCLI`` follows to this
    signature (``lightning-cl fit --print_config`` lists them all). Any dataset with
    ``targets`` can be used the same way, directly or by subclassing.

    Args:
        train_dataset: map-style dataset of ``(x, y)`` with ``targets``.
        test_dataset: the same for evaluation.
        n_experiences: number of experiences; must divide the number of classes unless
            ``per_exp_classes`` sets the group sizes.
        seed: class-order shuffle seed (``None``: classes in sorted order).
        class_order: a fixed class order instead of a shuffle (not with ``seed``).
        task_labels: give experience ``i`` task label ``i`` (task-incremental) instead of 0.
        per_exp_classes: classes per experience, a list of counts or Avalanche's mapping
            ``{experience: count}``.
        class_ids_from_zero_in_each_exp: relabel each experience's classes ``0..k-1``.
        loader: the loader settings of every experience (:class:`LoaderSettings`).
        train_transform: batched augmentation of the training batches.

    Raises:
        ValueError: for an impossible split (see :func:`class_incremental`).

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.randn(60, 3), torch.arange(60) % 6)
        >>> bench = ClassIncrementalBenchmark(ds, ds, n_experiences=3, seed=0)
        >>> bench.n_experiences, bench.n_classes
        (3, 6)
    """

    #: Arguments that a subclass passes itself (its constructor loads the data).
    given_by_subclass: tuple[str, ...] = ("train_dataset", "test_dataset")

    def __init__(
        self,
        train_dataset: Any,
        test_dataset: Any,
        n_experiences: int = 5,
        seed: int | None = None,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        per_exp_classes: Sequence[int] | Mapping[int, int] | None = None,
        class_ids_from_zero_in_each_exp: bool = False,
        loader: LoaderSettings = LoaderSettings(),
        train_transform: BatchTransform | None = None,
    ):
        class_incremental(
            train_dataset,
            test_dataset,
            n_experiences,
            class_order=class_order,
            seed=seed,
            task_labels=task_labels,
            per_exp_classes=per_exp_classes,
            class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
            train_transform=train_transform,
            loader=loader,
            name=type(self).__name__,
            out=self,
        )


def _by_class(targets: Tensor, groups: list[list[int]]) -> list[Tensor]:
    return [torch.isin(targets, torch.tensor(g)).nonzero().flatten() for g in groups]


def task_incremental(train_dataset: Any, test_dataset: Any, n_experiences: int, **kwargs: Any) -> Benchmark:
    """:func:`class_incremental` with task label ``i`` on experience ``i``.

    Class ids keep their original values unless ``class_ids_from_zero_in_each_exp=True``; pair the
    model with a :class:`~lightning_cl.models.MultiHeadClassifier` to route each task to its own head.

    Args:
        train_dataset: map-style dataset of ``(x, y)`` with ``targets``.
        test_dataset: the same for evaluation.
        n_experiences: number of experiences (tasks).
        kwargs: further arguments of :func:`class_incremental`.

    Returns:
        The :class:`Benchmark`, scenario ``"task_incremental"``.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.zeros(8, 2), torch.arange(8) % 4)
        >>> [e.task_label for e in task_incremental(ds, ds, 2).train_stream]
        [0, 1]
    """
    return class_incremental(train_dataset, test_dataset, n_experiences, task_labels=True, **kwargs)
