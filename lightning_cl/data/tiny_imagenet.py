"""SplitTinyImageNet: the Tiny ImageNet files, decoded by loader workers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_cl.data.dataset_not_found import check_dataset_files
from lightning_cl.data.image_files import ImageFilesDataset
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import ClassIncrementalBenchmark
from lightning_cl.data.transforms import BatchRandomHorizontalFlip, normalize

__all__ = ["TINY_IMAGENET_MEAN", "TINY_IMAGENET_STD", "SplitTinyImageNet", "tiny_imagenet_datasets"]

# Avalanche normalises Tiny ImageNet (and CUB-200) with CIFAR-10's statistics; kept for fidelity.
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def tiny_imagenet_datasets(root: str | Path) -> tuple[ImageFilesDataset, ImageFilesDataset]:
    """Train and test (the official validation set) of Tiny ImageNet, from its on-disk layout.

    ``root/tiny-imagenet-200/wnids.txt`` numbers the classes (line order);
    training images are ``train/<wnid>/images/*.JPEG``, test images ``val/images/*.JPEG`` with
    their classes in ``val/val_annotations.txt``.

    Args:
        root: the folder holding ``tiny-imagenet-200``.

    Returns:
        ``(train, test)`` datasets of 64x64 RGB images, normalised when read.

    Raises:
        DatasetNotFoundError: if the folder or its index files are missing.
    """
    check_dataset_files(
        "Tiny ImageNet",
        root,
        [
            "tiny-imagenet-200/wnids.txt",
            "tiny-imagenet-200/train",
            "tiny-imagenet-200/val/val_annotations.txt",
        ],
        download="there is no download: unpack http://cs231n.stanford.edu/tiny-imagenet-200.zip into root",
    )
    folder = Path(root) / "tiny-imagenet-200"
    wnids_file = folder / "wnids.txt"
    wnids = list(dict.fromkeys(line.strip() for line in wnids_file.read_text().splitlines() if line.strip()))
    label = {w: i for i, w in enumerate(wnids)}
    train_paths, train_targets = [], []
    for w in wnids:
        files = sorted((folder / "train" / w / "images").glob("*.JPEG"))
        train_paths += [str(p) for p in files]
        train_targets += [label[w]] * len(files)
    test_paths, test_targets = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in label:
            test_paths.append(str(folder / "val" / "images" / fields[0]))
            test_targets.append(label[fields[1]])
    norm = normalize(TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
    return (
        ImageFilesDataset(train_paths, train_targets, size=(64, 64), transform=norm),
        ImageFilesDataset(test_paths, test_targets, size=(64, 64), transform=norm),
    )


class SplitTinyImageNet(ClassIncrementalBenchmark):
    """Tiny ImageNet (200 classes, 100,000 train / 10,000 test images) split by class.

    Avalanche's ``SplitTinyImageNet`` defaults: 10 experiences, class order shuffled with
    ``seed=0``, normalisation with CIFAR-10's statistics (as Avalanche), random horizontal flip
    on the training batches. Images are decoded from disk by the loader workers, a batch at a
    time; every experience builds its loaders once.

    Args:
        root: folder holding ``tiny-imagenet-200``.
        n_experiences: number of experiences.
        seed: class-order shuffle seed (Avalanche's default 0; ``None``: in order).
        class_order: a fixed class order.
        augment: flip the training batches.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 128,
            4 workers decoding images).
        **kwargs: ``task_labels``, ``per_exp_classes``, ``class_ids_from_zero_in_each_exp``: see
            :class:`~lightning_cl.data.ClassIncrementalBenchmark`.

    Raises:
        ValueError: for an impossible split.
        DatasetNotFoundError: if the files are missing (there is no download: get the archive from
            http://cs231n.stanford.edu/tiny-imagenet-200.zip).

    Example:
        >>> SplitTinyImageNet("data").n_experiences  # doctest: +SKIP
        10
    """

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 10,
        *,
        seed: int | None = 0,
        class_order: Sequence[int] | None = None,
        augment: bool = True,
        loader: LoaderSettings = LoaderSettings(batch_size=128, num_workers=4),
        **kwargs: Any,
    ):
        train, test = tiny_imagenet_datasets(root)
        flip = BatchRandomHorizontalFlip() if augment else None
        super().__init__(
            train,
            test,
            n_experiences,
            seed=None if class_order is not None else seed,
            class_order=class_order,
            loader=loader,
            train_transform=flip,
            **kwargs,
        )
