"""SplitDigits: the built-in offline benchmark on the UCI handwritten digits (8x8, 10 classes)."""

from __future__ import annotations

import gzip
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import ClassIncrementalBenchmark
from lightning_cl.data.tensor_dataset import TensorClassificationDataset

__all__ = ["SplitDigits", "load_digits"]

_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


def load_digits() -> tuple[Tensor, Tensor]:
    """All 1,797 digits shipped with the package: images ``(N, 1, 8, 8)`` in [0, 1] and labels ``(N,)``.

    The data is the UCI "Optical Recognition of Handwritten Digits" set (Alpaydin and Kaynak,
    CC BY 4.0), in the file distributed by scikit-learn; see ``lightning_cl/data/_assets/README.md``.
    """
    path = resources.files("lightning_cl.data").joinpath("_assets/digits.csv.gz")
    with path.open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :64]).reshape(-1, 1, 8, 8) / 16.0
    labels = torch.from_numpy(table[:, 64].astype(np.int64))
    return images, labels


def _stratified_split(labels: Tensor) -> tuple[Tensor, Tensor]:
    """A fixed split: per class, a seeded 20% goes to test. The same on every machine."""
    g = torch.Generator().manual_seed(_SPLIT_SEED)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(len(idx) * _TEST_FRACTION)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


class SplitDigits(ClassIncrementalBenchmark):
    """Class- or task-incremental stream over the UCI digits, shipped with the package (no download).

    1,797 grey-scale 8x8 images, 10 classes, split once and for all into 1,438 train and 359 test
    images (20% of each class, seeded). Inputs are ``float32`` in [0, 1] with shape ``(1, 8, 8)``.
    Small enough to train a whole stream on a CPU in seconds: the default of the command line
    and of the quick tests.

    Args:
        n_experiences: number of experiences; must divide 10.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 32).
        **kwargs: ``seed`` (``None``: classes 0..9 in order), ``class_order``, ``task_labels``
            (experience ``i`` has task label ``i``), ``per_exp_classes``,
            ``class_ids_from_zero_in_each_exp``: see :class:`~lightning_cl.data.ClassIncrementalBenchmark`.

    Example:
        >>> bench = SplitDigits(n_experiences=5, seed=1)
        >>> bench.n_experiences, bench.n_classes, len(bench.train_stream[0]) > 250
        (5, 10, True)
    """

    def __init__(self, n_experiences: int = 5, *, loader: LoaderSettings = LoaderSettings(), **kwargs: Any):
        images, labels = load_digits()
        train_idx, test_idx = _stratified_split(labels)
        train = TensorClassificationDataset(images[train_idx], labels[train_idx])
        test = TensorClassificationDataset(images[test_idx], labels[test_idx])
        super().__init__(train, test, n_experiences, loader=loader, **kwargs)
