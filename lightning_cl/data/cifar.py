"""SplitCIFAR10, SplitCIFAR100 and SplitCIFAR110, held as one ``uint8`` tensor per split."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets
from torchvision.transforms import v2

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.concat_dataset import ConcatClassificationDataset
from lightning_cl.data.dataset_not_found import check_dataset_files
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.relabeled import RelabeledDataset
from lightning_cl.data.scenarios import ClassIncrementalBenchmark, class_incremental
from lightning_cl.data.tensor_dataset import TensorClassificationDataset
from lightning_cl.data.transforms import BatchRandomCrop, BatchRandomHorizontalFlip, BatchTransform, normalize

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitCIFAR110",
    "cifar_augmentation",
    "cifar_tensors",
]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
_FILES = {
    (10, True): [f"data_batch_{i}" for i in range(1, 6)],
    (10, False): ["test_batch"],
    (100, True): ["train"],
    (100, False): ["test"],
}


def cifar_tensors(
    root: str | Path,
    n_classes: int,
    train: bool,
    download: bool = False,
    transform: BatchTransform | None = None,
) -> TensorClassificationDataset:
    """One CIFAR split read from its pickled batches, as ``uint8`` ``(N, 3, 32, 32)``.

    The files are those of the official archives, in torchvision's layout
    (``root/cifar-10-batches-py/data_batch_1`` ... or ``root/cifar-100-python/train``);
    ``download=True`` fetches and verifies them through :class:`torchvision.datasets.CIFAR10` /
    ``CIFAR100``. They are read directly (not through torchvision's dataset class, which
    converts every image to PIL on access).

    Args:
        root: the data folder.
        n_classes: 10 or 100.
        train: the training split (else the test split).
        download: download the archive if absent.
        transform: batched transform applied when batches are read.

    Returns:
        The split as a :class:`TensorClassificationDataset` (fine labels for CIFAR-100).

    Raises:
        ValueError: for ``n_classes`` other than 10 or 100.
        DatasetNotFoundError: if the files are absent (names the path searched and the layout).
    """
    if n_classes not in _FOLDERS:
        raise ValueError(f"n_classes must be 10 or 100, got {n_classes!r}")
    if download:
        cls = datasets.CIFAR10 if n_classes == 10 else datasets.CIFAR100
        cls(root=str(root), train=train, download=True)
    folder = Path(root) / _FOLDERS[n_classes]
    check_dataset_files(
        f"CIFAR-{n_classes}", root, [f"{_FOLDERS[n_classes]}/{name}" for name in _FILES[(n_classes, train)]]
    )
    images, labels = [], []
    for name in _FILES[(n_classes, train)]:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += list(entry["labels" if "labels" in entry else "fine_labels"])
    return TensorClassificationDataset(
        torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long), transform
    )


def cifar_augmentation(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Avalanche's CIFAR augmentation, per sample on a normalised batch: ``RandomCrop(32, padding=4)``, flip.

    The crop pads with the normalised value of black (``-mean / std``), which is what padding
    the raw image with zeros and then normalising gives.

    Args:
        mean: the normalisation means.
        std: the normalisation standard deviations.

    Returns:
        The batched augmentation.

    Example:
        >>> aug = cifar_augmentation(CIFAR10_MEAN, CIFAR10_STD)
        >>> tuple(aug(torch.zeros(4, 3, 32, 32)).shape)
        (4, 3, 32, 32)
    """
    fill = [-m / s for m, s in zip(mean, std)]
    return v2.Compose([BatchRandomCrop(32, padding=4, fill=fill), BatchRandomHorizontalFlip(0.5)])


class _SplitCIFAR(ClassIncrementalBenchmark):
    n_source_classes = 10
    mean, std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 5,
        *,
        first_exp_with_half_classes: bool = False,
        augment: bool = True,
        download: bool = False,
        loader: LoaderSettings = LoaderSettings(batch_size=128),
        **kwargs: Any,
    ):
        norm = normalize(self.mean, self.std)
        train = cifar_tensors(root, self.n_source_classes, True, download, norm)
        test = cifar_tensors(root, self.n_source_classes, False, download, norm)
        if first_exp_with_half_classes:
            if kwargs.get("per_exp_classes") is not None:
                raise ValueError("pass first_exp_with_half_classes or per_exp_classes, not both")
            kwargs["per_exp_classes"] = {0: self.n_source_classes // 2}
        augmentation = cifar_augmentation(self.mean, self.std) if augment else None
        super().__init__(train, test, n_experiences, loader=loader, train_transform=augmentation, **kwargs)


class SplitCIFAR10(_SplitCIFAR):
    """CIFAR-10 split by class (Avalanche's ``SplitCIFAR10``).

    Avalanche's defaults: normalisation with mean (0.4914, 0.4822, 0.4465) and std (0.2023,
    0.1994, 0.2010); training batches augmented with ``RandomCrop(32, padding=4)`` and a
    horizontal flip, drawn per sample on whole batches (evaluation batches are not augmented).
    50,000 train and 10,000 test images held as ``uint8`` tensors.

    Args:
        root: folder holding ``cifar-10-batches-py``.
        n_experiences: number of experiences.
        first_exp_with_half_classes: the first experience holds 5 classes, the others share the rest.
        augment: augment the training batches (Avalanche's default); ``False`` only normalises.
        download: download the archive if absent.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 128).
        **kwargs: ``seed``, ``class_order``, ``task_labels``, ``per_exp_classes``,
            ``class_ids_from_zero_in_each_exp``: see :class:`~lightning_cl.data.ClassIncrementalBenchmark`.

    Raises:
        ValueError: for an impossible split.
        DatasetNotFoundError: if the files are absent and ``download`` is false.

    Example:
        >>> SplitCIFAR10("data", n_experiences=5).n_classes  # doctest: +SKIP
        10
    """


class SplitCIFAR100(_SplitCIFAR):
    """CIFAR-100 (fine labels) split by class (Avalanche's ``SplitCIFAR100``).

    Avalanche's defaults: normalisation with mean (0.5071, 0.4865, 0.4409) and std (0.2673,
    0.2564, 0.2762); ``RandomCrop(32, padding=4)`` and a horizontal flip on training batches.
    Arguments and errors are :class:`SplitCIFAR10`'s, with ``root`` holding ``cifar-100-python``,
    10 experiences by default, and 50 classes in the first with ``first_exp_with_half_classes``.

    Example:
        >>> SplitCIFAR100("data").n_experiences  # doctest: +SKIP
        10
    """

    n_source_classes = 100
    mean, std = CIFAR100_MEAN, CIFAR100_STD

    def __init__(self, root: str | Path = "data", n_experiences: int = 10, **kwargs: Any):
        super().__init__(root, n_experiences, **kwargs)


class SplitCIFAR110(Benchmark):
    """CIFAR-10 as the first experience, then CIFAR-100 split into the others (Avalanche's ``SplitCIFAR110``).

    Classes 0-9 are CIFAR-10's, 10-109 are CIFAR-100's fine classes shifted by 10. The first
    experience holds the 10 CIFAR-10 classes; the 100 CIFAR-100 classes are shuffled with
    ``seed`` (or ordered by ``class_order``, given in CIFAR-100 ids) and split evenly among the
    other ``n_experiences - 1`` experiences. Both parts use Avalanche's CIFAR-100 normalisation
    and augmentation, as Avalanche does.

    Args:
        root: folder holding ``cifar-10-batches-py`` and ``cifar-100-python``.
        n_experiences: number of experiences including the CIFAR-10 one; ``n_experiences - 1``
            must divide 100.
        seed: shuffle seed of the CIFAR-100 classes (``None``: in order).
        class_order: order of the CIFAR-100 classes (ids 0..99).
        augment: augment the training batches.
        download: download the archives if absent.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 128).

    Raises:
        ValueError: for ``n_experiences - 1`` not dividing 100, or a bad class order.
        DatasetNotFoundError: if the files are absent and ``download`` is false.

    Example:
        >>> SplitCIFAR110("data", n_experiences=11).n_classes  # doctest: +SKIP
        110
    """

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 11,
        seed: int | None = None,
        class_order: Sequence[int] | None = None,
        augment: bool = True,
        download: bool = False,
        loader: LoaderSettings = LoaderSettings(batch_size=128),
    ):
        if not isinstance(n_experiences, int) or n_experiences < 2:
            raise ValueError(
                f"n_experiences must be an int >= 2 (CIFAR-10, then CIFAR-100), got {n_experiences!r}"
            )
        norm = normalize(CIFAR100_MEAN, CIFAR100_STD)
        splits = []
        for train in (True, False):
            c10 = cifar_tensors(root, 10, train, download, norm)
            c100 = cifar_tensors(root, 100, train, download, norm)
            splits.append(ConcatClassificationDataset([c10, RelabeledDataset(c100, torch.arange(100) + 10)]))
        if class_order is not None:
            order_100 = [int(c) + 10 for c in class_order]
            if sorted(int(c) for c in class_order) != list(range(100)):
                raise ValueError("class_order must list each CIFAR-100 class 0..99 exactly once")
        elif seed is not None:
            order_100 = (
                torch.randperm(100, generator=torch.Generator().manual_seed(int(seed))) + 10
            ).tolist()
        else:
            order_100 = list(range(10, 110))
        class_incremental(
            splits[0],
            splits[1],
            n_experiences,
            class_order=list(range(10)) + order_100,
            per_exp_classes={0: 10},
            train_transform=cifar_augmentation(CIFAR100_MEAN, CIFAR100_STD) if augment else None,
            loader=loader,
            name="SplitCIFAR110",
            out=self,
        )
