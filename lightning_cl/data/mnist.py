"""SplitMNIST on torchvision's ``MNIST``, held in memory as one ``uint8`` tensor per split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.scenarios import class_incremental
from lightning_cl.data.tensor_dataset import TensorClassificationDataset

__all__ = ["MNIST_MEAN", "MNIST_STD", "SplitMNIST", "mnist_tensors"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def mnist_batch_transform() -> v2.Transform:
    """``uint8`` batches ``(B, 1, 28, 28)`` to normalised ``float32`` (Avalanche's MNIST normalisation)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MNIST_MEAN, MNIST_STD)])


def mnist_tensors(root: str | Path, train: bool, download: bool = False) -> TensorClassificationDataset:
    """One MNIST split loaded by torchvision and kept as a ``uint8`` tensor ``(N, 1, 28, 28)``.

    Normalisation runs on whole batches when they are read.

    Raises:
        RuntimeError: torchvision's error, if the files are absent and ``download`` is false.
    """
    ds = datasets.MNIST(root=str(root), train=train, download=download)
    return TensorClassificationDataset(ds.data.unsqueeze(1), ds.targets, transform=mnist_batch_transform())


class SplitMNIST(Benchmark):
    """MNIST split by class into ``n_experiences`` experiences (Avalanche's ``SplitMNIST``).

    Loads through :class:`torchvision.datasets.MNIST` (``root`` holds ``MNIST/raw``; pass
    ``download=True`` to fetch it). Normalisation is Avalanche's (mean 0.1307, std 0.3081), no
    augmentation.

    Args:
        root: folder holding ``MNIST/raw`` (torchvision's layout).
        n_experiences: number of experiences; must divide 10.
        seed: class-order shuffle seed (``None``: classes 0..9 in order).
        class_order: a fixed class order instead of a shuffle.
        task_labels: task-incremental instead of class-incremental.
        download: download the files if absent.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: data loader workers.
    """

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
    ):
        train = mnist_tensors(root, train=True, download=download)
        test = mnist_tensors(root, train=False, download=download)
        bench = class_incremental(
            train,
            test,
            n_experiences,
            class_order=class_order,
            seed=seed,
            task_labels=task_labels,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            name="SplitMNIST",
        )
        super().__init__(
            bench.train_stream,
            bench.test_stream,
            n_classes=bench.n_classes,
            class_order=bench.class_order,
            scenario=bench.scenario,
            name=bench.name,
        )
