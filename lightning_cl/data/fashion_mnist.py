"""SplitFMNIST and SplitKMNIST: MNIST-format datasets split by class, held in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torchvision import datasets

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.mnist import idx_tensors
from lightning_cl.data.scenarios import class_incremental
from lightning_cl.data.transforms import normalize

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "KMNIST_MEAN", "KMNIST_STD", "SplitFMNIST", "SplitKMNIST"]

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
KMNIST_MEAN, KMNIST_STD = (0.1918,), (0.3483,)


class _SplitIDX(Benchmark):
    dataset_class: type[datasets.MNIST] = datasets.MNIST
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 5,
        seed: int | None = None,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        per_exp_classes: Sequence[int] | Mapping[int, int] | None = None,
        class_ids_from_zero_in_each_exp: bool = False,
    ):
        splits = [
            idx_tensors(self.dataset_class, root, train, download, normalize(self.mean, self.std))
            for train in (True, False)
        ]
        self._adopt(
            class_incremental(
                splits[0],
                splits[1],
                n_experiences,
                class_order=class_order,
                seed=seed,
                task_labels=task_labels,
                per_exp_classes=per_exp_classes,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                batch_size=batch_size,
                eval_batch_size=eval_batch_size,
                num_workers=num_workers,
                name=type(self).__name__,
            )
        )


class SplitFMNIST(_SplitIDX):
    """Fashion-MNIST split by class (Avalanche's ``SplitFMNIST``).

    Loads through :class:`torchvision.datasets.FashionMNIST` (``root/FashionMNIST/raw``);
    normalisation is Avalanche's (mean 0.2860, std 0.3530), no augmentation. 60,000 train and
    10,000 test images of 10 classes, held as ``uint8`` tensors.

    Args:
        root: the data folder.
        n_experiences: number of experiences; must divide 10 unless ``per_exp_classes`` is given.
        seed: class-order shuffle seed (``None``: classes in order).
        class_order: a fixed class order.
        task_labels: task-incremental instead of class-incremental.
        download: download the files if absent.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: data loader workers.
        per_exp_classes: classes per experience.
        class_ids_from_zero_in_each_exp: relabel each experience's classes from zero.

    Raises:
        ValueError: for an impossible split.
        RuntimeError: if the files are absent and ``download`` is false.

    Example:
        >>> SplitFMNIST("data", n_experiences=5).n_classes  # doctest: +SKIP
        10
    """

    dataset_class = datasets.FashionMNIST
    mean, std = FMNIST_MEAN, FMNIST_STD


class SplitKMNIST(_SplitIDX):
    """Kuzushiji-MNIST split by class.

    Avalanche has no KMNIST benchmark; this one follows SplitMNIST's protocol, with KMNIST's own
    training-set statistics for normalisation (mean 0.1918, std 0.3483). Loads through
    :class:`torchvision.datasets.KMNIST` (``root/KMNIST/raw``).

    Args:
        root: the data folder.
        n_experiences: number of experiences; must divide 10 unless ``per_exp_classes`` is given.
        seed: class-order shuffle seed (``None``: classes in order).
        class_order: a fixed class order.
        task_labels: task-incremental instead of class-incremental.
        download: download the files if absent.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: data loader workers.
        per_exp_classes: classes per experience.
        class_ids_from_zero_in_each_exp: relabel each experience's classes from zero.

    Raises:
        ValueError: for an impossible split.
        RuntimeError: if the files are absent and ``download`` is false.

    Example:
        >>> SplitKMNIST("data", n_experiences=2).n_experiences  # doctest: +SKIP
        2
    """

    dataset_class = datasets.KMNIST
    mean, std = KMNIST_MEAN, KMNIST_STD
