"""Domain-incremental scenarios: the same data through a different transform in each experience."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_cl.data.benchmark import Benchmark, build_benchmark
from lightning_cl.data.domain_dataset import DomainDataset
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import stream_from_indices
from lightning_cl.data.transforms import BatchTransform, PixelPermutation, Rotation

__all__ = ["domain_incremental", "permuted", "random_angles", "random_permutations", "rotated"]


def domain_incremental(
    train_dataset: Any,
    test_dataset: Any,
    domains: Sequence[BatchTransform],
    *,
    transform: BatchTransform | None = None,
    task_labels: bool = False,
    train_transform: BatchTransform | None = None,
    loader: LoaderSettings = LoaderSettings(),
    name: str = "benchmark",
    out: Benchmark | None = None,
) -> Benchmark:
    """One experience per domain transform: experience ``i`` is all the data through ``domains[i]``.

    Nothing is copied: both splits are wrapped once in a :class:`DomainDataset`, and experience
    ``i`` views its ``i``-th domain. Train and test experience ``i`` share the transform.

    Args:
        train_dataset: map-style dataset of ``(x, y)`` with ``targets`` (raw inputs).
        test_dataset: the same for evaluation.
        domains: one batched transform per experience (a pixel permutation, a rotation, any
            callable on a batch that keeps its shape).
        transform: batched transform applied after the domain transform (normalisation).
        task_labels: give experience ``i`` task label ``i``.
        train_transform: batched augmentation of the training batches.
        loader: the loader settings of every experience (:class:`LoaderSettings`).
        name: the benchmark's name.
        out: a benchmark to initialise instead of a new one (see :func:`build_benchmark`).

    Returns:
        The :class:`Benchmark`, scenario ``"domain_incremental"``.

    Raises:
        ValueError: if ``domains`` is empty, or the data has no ``targets``.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.ones(6, 1, 2, 2), torch.arange(6) % 3)
        >>> bench = domain_incremental(ds, ds, [lambda x: x, lambda x: 2 * x])
        >>> [float(e.dataset[0][0].max()) for e in bench.train_stream]
        [1.0, 2.0]
    """
    if len(domains) == 0:
        raise ValueError("domains must hold at least one transform (one per experience)")
    train = DomainDataset(train_dataset, domains, transform)
    test = DomainDataset(test_dataset, domains, transform)
    classes = sorted(torch.unique(train.targets).tolist())
    n_classes = max(classes + torch.unique(test.targets).tolist()) + 1
    kwargs: dict[str, Any] = dict(
        n_classes=n_classes,
        task_labels=list(range(len(domains))) if task_labels else None,
        loader_settings=loader,
    )
    n = len(domains)
    train_stream = stream_from_indices(
        "train",
        train,
        [train.domain_indices(d) for d in range(n)],
        targets=train.targets,
        train_transform=train_transform,
        **kwargs,
    )
    test_stream = stream_from_indices(
        "test", test, [test.domain_indices(d) for d in range(n)], targets=test.targets, **kwargs
    )
    return build_benchmark(
        out,
        train_stream,
        test_stream,
        n_classes=n_classes,
        class_order=classes,
        scenario="domain_incremental",
        name=name,
    )


def random_permutations(n_experiences: int, n_pixels: int, seed: int | None = None) -> list[PixelPermutation]:
    """``n_experiences`` seeded random pixel permutations.

    Args:
        n_experiences: number of permutations.
        n_pixels: pixels per image (``H * W``).
        seed: the seed (``None``: torch's global generator).

    Returns:
        The permutations, as batched transforms.

    Raises:
        ValueError: for a non-positive ``n_experiences``.

    Example:
        >>> len(random_permutations(3, 4, seed=0))
        3
    """
    _check_positive(n_experiences)
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return [PixelPermutation(torch.randperm(n_pixels, generator=g)) for _ in range(n_experiences)]


def random_angles(n_experiences: int, seed: int | None = None) -> list[int]:
    """``n_experiences`` seeded whole-degree angles in [-180, 180] (Avalanche's RotatedMNIST draw).

    Args:
        n_experiences: number of angles.
        seed: the seed (``None``: torch's global generator).

    Returns:
        The angles in degrees.

    Example:
        >>> angles = random_angles(4, seed=0)
        >>> len(angles), all(-180 <= a <= 180 for a in angles)
        (4, True)
    """
    _check_positive(n_experiences)
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return torch.randint(-180, 181, (n_experiences,), generator=g).tolist()


def permuted(
    train_dataset: Any, test_dataset: Any, n_experiences: int, *, seed: int | None = None, **kwargs: Any
) -> Benchmark:
    """Permuted scenario: experience ``i`` shows every image with the ``i``-th random pixel permutation.

    Args:
        train_dataset: raw image data ``(N, C, H, W)`` with ``targets``.
        test_dataset: the same for evaluation.
        n_experiences: number of permutations.
        seed: the permutations' seed.
        kwargs: further arguments of :func:`domain_incremental`.

    Returns:
        The :class:`Benchmark`.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.arange(8.0).reshape(2, 1, 2, 2), [0, 1])
        >>> len(permuted(ds, ds, 3, seed=0).train_stream)
        3
    """
    x, _ = train_dataset[0][:2]
    perms = random_permutations(n_experiences, int(x.shape[-1] * x.shape[-2]), seed)
    return domain_incremental(train_dataset, test_dataset, perms, **kwargs)


def rotated(
    train_dataset: Any,
    test_dataset: Any,
    n_experiences: int | None = None,
    *,
    angles: Sequence[float] | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> Benchmark:
    """Rotated scenario: experience ``i`` shows every image rotated by ``angles[i]`` degrees.

    Args:
        train_dataset: raw image data ``(N, C, H, W)`` with ``targets``.
        test_dataset: the same for evaluation.
        n_experiences: number of random angles to draw (with ``seed``) when ``angles`` is not given.
        angles: the rotations in degrees, each in [-180, 180].
        seed: the seed of the random angles.
        kwargs: further arguments of :func:`domain_incremental`.

    Returns:
        The :class:`Benchmark`.

    Raises:
        ValueError: if neither or both of ``n_experiences`` and ``angles`` fit, or an angle lies
            outside [-180, 180].

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> ds = TensorClassificationDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), [0, 1])
        >>> len(rotated(ds, ds, angles=[0, 90]).train_stream)
        2
    """
    if angles is None:
        if n_experiences is None:
            raise ValueError("pass n_experiences (random angles) or angles")
        angles = random_angles(n_experiences, seed)
    elif n_experiences is not None and n_experiences != len(angles):
        raise ValueError(f"n_experiences={n_experiences} but {len(angles)} angles given; they must match")
    bad = [a for a in angles if not -180 <= a <= 180]
    if bad:
        raise ValueError(f"rotation angles must lie in [-180, 180] degrees, got {bad}")
    return domain_incremental(train_dataset, test_dataset, [Rotation(a) for a in angles], **kwargs)


def _check_positive(n_experiences: int) -> None:
    if not isinstance(n_experiences, int) or isinstance(n_experiences, bool) or n_experiences < 1:
        raise ValueError(f"n_experiences must be a positive int, got {n_experiences!r}")
