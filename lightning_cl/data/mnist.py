"""The MNIST benchmarks (SplitMNIST, PermutedMNIST, RotatedMNIST), held as one ``uint8`` tensor per split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision import datasets
from torchvision.transforms import v2

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.dataset_not_found import check_dataset_files
from lightning_cl.data.domain_incremental import permuted, rotated
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import ClassIncrementalBenchmark
from lightning_cl.data.tensor_dataset import TensorClassificationDataset
from lightning_cl.data.transforms import normalize

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "PermutedMNIST",
    "RotatedMNIST",
    "SplitMNIST",
    "idx_tensors",
    "mnist_tensors",
]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def mnist_batch_transform() -> v2.Transform:
    """``uint8`` batches ``(B, 1, 28, 28)`` to normalised ``float32`` (Avalanche's MNIST normalisation)."""
    return normalize(MNIST_MEAN, MNIST_STD)


def idx_tensors(
    dataset_class: type[datasets.MNIST],
    root: str | Path,
    train: bool,
    download: bool = False,
    transform: v2.Transform | None = None,
) -> TensorClassificationDataset:
    """One split of an MNIST-format dataset (IDX files) as ``uint8`` ``(N, 1, 28, 28)``.

    Args:
        dataset_class: ``torchvision.datasets.MNIST``, ``FashionMNIST`` or ``KMNIST``; the files
            lie in ``root/<class name>/raw``.
        root: the data folder.
        train: the training split (else the test split).
        download: download the files if absent.
        transform: batched transform applied when batches are read.

    Returns:
        The split as a :class:`TensorClassificationDataset`.

    Raises:
        DatasetNotFoundError: if the files are absent and ``download`` is false; it names the path
            searched and the layout expected (``<root>/MNIST/raw/...``).
    """
    if not download:
        name = dataset_class.__name__
        files = (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
        check_dataset_files(name, root, [f"{name}/raw/{f}" for f in files])
    ds = dataset_class(root=str(root), train=train, download=download)
    return TensorClassificationDataset(ds.data.unsqueeze(1), ds.targets, transform=transform)


def mnist_tensors(root: str | Path, train: bool, download: bool = False) -> TensorClassificationDataset:
    """One MNIST split loaded by torchvision and kept as a ``uint8`` tensor ``(N, 1, 28, 28)``.

    Normalisation runs on whole batches when they are read.

    Raises:
        DatasetNotFoundError: if the files are absent and ``download`` is false.
    """
    return idx_tensors(datasets.MNIST, root, train, download, mnist_batch_transform())


class _SplitIDX(ClassIncrementalBenchmark):
    """An MNIST-format dataset (torchvision class, IDX files) split by class, normalised per batch."""

    dataset_class: type[datasets.MNIST] = datasets.MNIST
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 5,
        *,
        download: bool = False,
        loader: LoaderSettings = LoaderSettings(batch_size=128),
        **kwargs: Any,
    ):
        norm = normalize(self.mean, self.std)
        train, test = (idx_tensors(self.dataset_class, root, t, download, norm) for t in (True, False))
        super().__init__(train, test, n_experiences, loader=loader, **kwargs)


class SplitMNIST(_SplitIDX):
    """MNIST split by class into ``n_experiences`` experiences (Avalanche's ``SplitMNIST``).

    Loads through :class:`torchvision.datasets.MNIST` (``root`` holds ``MNIST/raw``; pass
    ``download=True`` to fetch it). Normalisation is Avalanche's (mean 0.1307, std 0.3081), no
    augmentation.

    Args:
        root: folder holding ``MNIST/raw`` (torchvision's layout).
        n_experiences: number of experiences; must divide 10 unless ``per_exp_classes`` is given.
        download: download the files if absent.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 128).
        **kwargs: ``seed`` (``None``: classes 0..9 in order), ``class_order``, ``task_labels``,
            ``per_exp_classes``, ``class_ids_from_zero_in_each_exp``: see
            :class:`~lightning_cl.data.ClassIncrementalBenchmark`.

    Raises:
        ValueError: for an impossible split (see :func:`~lightning_cl.data.class_incremental`).
        DatasetNotFoundError: if the files are absent and ``download`` is false (names the path
            searched and the layout ``<root>/MNIST/raw/...``).

    Example:
        >>> bench = SplitMNIST("data", n_experiences=5)  # doctest: +SKIP
        >>> [e.classes_in_this_experience for e in bench.train_stream][:2]  # doctest: +SKIP
        [[0, 1], [2, 3]]
    """

    dataset_class = datasets.MNIST
    mean, std = MNIST_MEAN, MNIST_STD


def _raw_mnist(
    root: str | Path, download: bool
) -> tuple[TensorClassificationDataset, TensorClassificationDataset]:
    return (
        idx_tensors(datasets.MNIST, root, True, download),
        idx_tensors(datasets.MNIST, root, False, download),
    )


class _TransformedMNIST(Benchmark):
    """MNIST under one transform of the raw pixels per experience (domain-incremental)."""

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 10,
        *,
        seed: int | None = 0,
        task_labels: bool = False,
        download: bool = False,
        loader: LoaderSettings = LoaderSettings(batch_size=128),
    ):
        train, test = _raw_mnist(root, download)
        self._scenario(
            train,
            test,
            n_experiences,
            seed=seed,
            transform=mnist_batch_transform(),
            task_labels=task_labels,
            loader=loader,
            name=type(self).__name__,
            out=self,
        )

    def _scenario(self, train: Any, test: Any, n_experiences: int, **kwargs: Any) -> None:
        raise NotImplementedError


class PermutedMNIST(_TransformedMNIST):
    """MNIST under ``n_experiences`` seeded random pixel permutations (Avalanche's ``PermutedMNIST``).

    Domain-incremental: every experience holds all 10 classes, 60,000 train and 10,000 test
    images, permuted its own way; the permutation is applied to the raw pixels, then Avalanche's
    MNIST normalisation. Experience ``i`` has task label ``i`` with ``task_labels=True``.

    Args:
        root: folder holding ``MNIST/raw``.
        n_experiences: number of permutations.
        seed: the permutations' seed (``None``: torch's global generator).
        task_labels: give experience ``i`` task label ``i``.
        download: download the files if absent.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 128).

    Raises:
        ValueError: for ``n_experiences < 1``.
        DatasetNotFoundError: if the files are absent and ``download`` is false (names the path
            searched and the layout ``<root>/MNIST/raw/...``).

    Example:
        >>> bench = PermutedMNIST("data", n_experiences=3, seed=0)  # doctest: +SKIP
        >>> bench.scenario, len(bench.train_stream[2])  # doctest: +SKIP
        ('domain_incremental', 60000)
    """

    def _scenario(self, train: Any, test: Any, n_experiences: int, **kwargs: Any) -> None:
        permuted(train, test, n_experiences, **kwargs)


class RotatedMNIST(_TransformedMNIST):
    """MNIST rotated by a fixed angle per experience (Avalanche's ``RotatedMNIST``).

    Angles are ``rotations_list`` or, without it, whole degrees drawn uniformly from
    [-180, 180] with ``seed``. Rotation (nearest neighbour, black fill) acts on the raw pixels,
    then Avalanche's MNIST normalisation.

    Args:
        root: folder holding ``MNIST/raw``.
        n_experiences: number of rotations.
        rotations_list: the angles in degrees, one per experience.
        **kwargs: ``seed`` (of the random angles), ``task_labels``, ``download``, ``loader``: as
            :class:`PermutedMNIST`'s.

    Raises:
        ValueError: for angles outside [-180, 180] or not one per experience.
        DatasetNotFoundError: if the files are absent and ``download`` is false (names the path
            searched and the layout ``<root>/MNIST/raw/...``).

    Example:
        >>> bench = RotatedMNIST("data", n_experiences=2, rotations_list=[0, 90])  # doctest: +SKIP
        >>> len(bench.test_stream)  # doctest: +SKIP
        2
    """

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 10,
        *,
        rotations_list: Sequence[float] | None = None,
        **kwargs: Any,
    ):
        self._angles = rotations_list
        super().__init__(root, n_experiences, **kwargs)

    def _scenario(self, train: Any, test: Any, n_experiences: int, **kwargs: Any) -> None:
        rotated(train, test, n_experiences, angles=self._angles, **kwargs)
