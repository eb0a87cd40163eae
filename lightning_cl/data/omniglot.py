"""SplitOmniglot: the Omniglot characters split by class, held as one ``uint8`` tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import datasets

from lightning_cl.data.dataset_not_found import check_dataset_files
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import ClassIncrementalBenchmark
from lightning_cl.data.tensor_dataset import TensorClassificationDataset
from lightning_cl.data.transforms import normalize

__all__ = ["OMNIGLOT_MEAN", "OMNIGLOT_STD", "SplitOmniglot", "omniglot_tensors"]

OMNIGLOT_MEAN, OMNIGLOT_STD = (0.9221,), (0.2681,)


def omniglot_tensors(
    root: str | Path, background: bool = True, download: bool = False
) -> tuple[Tensor, Tensor, list[str]]:
    """All images of one Omniglot set, from torchvision's layout, as ``uint8`` ``(N, 1, 105, 105)``.

    Reads ``root/omniglot-py/images_background/<alphabet>/<character>/*.png`` (or
    ``images_evaluation``); every character is a class, numbered in sorted
    ``alphabet/character`` order. ``download=True`` fetches the archive through
    :class:`torchvision.datasets.Omniglot`.

    Args:
        root: the data folder.
        background: the background set (964 characters) rather than the evaluation set (659).
        download: download the archive if absent.

    Returns:
        ``(images, labels, class names)``.

    Raises:
        DatasetNotFoundError: if the folder is missing (names the path and the layout).
        RuntimeError: if the folder holds no images.
    """
    if download:
        datasets.Omniglot(root=str(root), background=background, download=True)
    part = "images_background" if background else "images_evaluation"
    check_dataset_files("Omniglot", root, [f"omniglot-py/{part}"])
    folder = Path(root) / "omniglot-py" / part
    characters = sorted(p for p in folder.glob("*/*") if p.is_dir())
    images, labels = [], []
    for label, character in enumerate(characters):
        for file in sorted(character.glob("*.png")):
            with Image.open(file) as img:
                images.append(np.asarray(img.convert("L"), dtype=np.uint8))
            labels.append(label)
    if not images:
        raise RuntimeError(f"no Omniglot images under {folder}; pass download=True to fetch them")
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    return x, torch.tensor(labels), [f"{c.parent.name}/{c.name}" for c in characters]


def _per_class_split(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


class SplitOmniglot(ClassIncrementalBenchmark):
    """Omniglot characters split by class (Avalanche's ``SplitOmniglot``, with a usable test set).

    Normalisation is Avalanche's (mean 0.9221, std 0.2681), no augmentation; images are
    105x105 grey-scale. Avalanche trains on the background set and tests on the evaluation
    set, whose 659 characters are other classes than the 964 it trains on, so its test stream
    never holds a trained class. Here every character of the chosen set is a class and its
    drawings are split once (seeded, per character) into train and test: 20 drawings give 16
    train and 4 test.

    Args:
        root: folder holding ``omniglot-py``.
        n_experiences: number of experiences; must divide the number of characters (964 for
            the background set: 1, 2, 4, 241, 482, 964) unless ``per_exp_classes`` is given.
        background: use the background set (else the evaluation set).
        test_fraction: fraction of each character's drawings held out for testing.
        download: download the archive if absent.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 128).
        **kwargs: ``seed``, ``class_order``, ``task_labels``, ``per_exp_classes``,
            ``class_ids_from_zero_in_each_exp``: see :class:`~lightning_cl.data.ClassIncrementalBenchmark`.

    Raises:
        ValueError: for an impossible split or ``test_fraction`` outside (0, 1).
        DatasetNotFoundError: if the files are absent and ``download`` is false.

    Example:
        >>> SplitOmniglot("data", n_experiences=4).n_classes  # doctest: +SKIP
        964
    """

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 4,
        *,
        background: bool = True,
        test_fraction: float = 0.2,
        download: bool = False,
        loader: LoaderSettings = LoaderSettings(batch_size=128),
        **kwargs: Any,
    ):
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be a fraction in (0, 1), got {test_fraction!r}")
        images, labels, self.class_names = omniglot_tensors(root, background, download)
        train_idx, test_idx = _per_class_split(labels, test_fraction, 0)
        norm = normalize(OMNIGLOT_MEAN, OMNIGLOT_STD)
        train = TensorClassificationDataset(images[train_idx], labels[train_idx], norm)
        test = TensorClassificationDataset(images[test_idx], labels[test_idx], norm)
        super().__init__(train, test, n_experiences, loader=loader, **kwargs)
