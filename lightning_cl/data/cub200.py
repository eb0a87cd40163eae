"""SplitCUB200: Caltech-UCSD Birds-200-2011, cropped to the birds, decoded by loader workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_cl.data.dataset_not_found import check_dataset_files
from lightning_cl.data.image_files import ImageFilesDataset
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.scenarios import ClassIncrementalBenchmark
from lightning_cl.data.transforms import BatchRandomHorizontalFlip, normalize

__all__ = ["CUB200_MEAN", "CUB200_STD", "SplitCUB200", "cub200_datasets"]

# Avalanche normalises CUB-200 with CIFAR-10's statistics; kept for fidelity.
CUB200_MEAN, CUB200_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _table(path: Path) -> dict[int, list[str]]:
    if not path.is_file():
        raise RuntimeError(f"CUB-200-2011 index file {path} is missing")
    rows = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields:
            rows[int(fields[0])] = fields[1:]
    return rows


def cub200_datasets(
    root: str | Path, size: tuple[int, int] = (224, 224)
) -> tuple[ImageFilesDataset, ImageFilesDataset]:
    """Train and test splits of CUB-200-2011 from its own index files.

    Reads ``root/CUB_200_2011/{images,image_class_labels,train_test_split,bounding_boxes}.txt``;
    images are ``CUB_200_2011/images/<path>``. Each image is cropped to its bounding box (as
    Avalanche's ``CUB200`` does) and resized to ``size`` so that a batch can be stacked
    (Avalanche leaves the crops at their own sizes, which cannot be batched as they are).
    Classes are numbered 0..199 (the files count from 1).

    Args:
        root: the folder holding ``CUB_200_2011``.
        size: ``(height, width)`` of the crops.

    Returns:
        ``(train, test)`` datasets, normalised when read.

    Raises:
        DatasetNotFoundError: if an index file is missing.
    """
    check_dataset_files(
        "CUB-200-2011",
        root,
        [
            f"CUB_200_2011/{name}.txt"
            for name in ("images", "image_class_labels", "train_test_split", "bounding_boxes")
        ],
        download="there is no download: unpack CUB_200_2011.tgz into root",
    )
    folder = Path(root) / "CUB_200_2011"
    images = _table(folder / "images.txt")
    labels = _table(folder / "image_class_labels.txt")
    is_train = _table(folder / "train_test_split.txt")
    boxes = _table(folder / "bounding_boxes.txt")
    norm = normalize(CUB200_MEAN, CUB200_STD)
    out = []
    for train in (True, False):
        ids = [i for i in sorted(images) if (is_train[i][0] == "1") == train]
        # bounding_boxes.txt holds x, y, width, height; the dataset wants top, left, height, width.
        box = [tuple(int(float(v)) for v in boxes[i]) for i in ids]
        out.append(
            ImageFilesDataset(
                [images[i][0] for i in ids],
                [int(labels[i][0]) - 1 for i in ids],
                root=folder / "images",
                size=size,
                boxes=[(y, x, h, w) for x, y, w, h in box],
                transform=norm,
            )
        )
    return out[0], out[1]


class SplitCUB200(ClassIncrementalBenchmark):
    """CUB-200-2011 split by class (Avalanche's ``SplitCUB200``).

    Avalanche's defaults: 11 experiences, the first with 100 classes and the other ten with 10
    each, classes in their sorted order (Avalanche's ``shuffle=False``), normalisation with
    CIFAR-10's statistics, random horizontal flip on the training batches. Images are cropped
    to their bounding boxes and resized to ``size``; loader workers decode them a batch at a time.

    Args:
        root: folder holding ``CUB_200_2011``.
        n_experiences: number of experiences.
        classes_first_batch: classes of the first experience (``None``: equal split).
        size: ``(height, width)`` of the images.
        augment: flip the training batches.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 32,
            4 workers decoding images).
        **kwargs: ``seed`` (``None``: in order, Avalanche's default), ``class_order``,
            ``task_labels``, ``class_ids_from_zero_in_each_exp``: see
            :class:`~lightning_cl.data.ClassIncrementalBenchmark`.

    Raises:
        ValueError: for an impossible split.
        DatasetNotFoundError: if the files are missing (CUB has no download: get CUB_200_2011.tgz).

    Example:
        >>> SplitCUB200("data").n_experiences  # doctest: +SKIP
        11
    """

    def __init__(
        self,
        root: str | Path = "data",
        n_experiences: int = 11,
        *,
        classes_first_batch: int | None = 100,
        size: tuple[int, int] = (224, 224),
        augment: bool = True,
        loader: LoaderSettings = LoaderSettings(batch_size=32, num_workers=4),
        **kwargs: Any,
    ):
        if classes_first_batch is not None:
            if kwargs.get("per_exp_classes") is not None:
                raise ValueError("pass classes_first_batch=None with per_exp_classes, not both")
            kwargs["per_exp_classes"] = {0: classes_first_batch}
        train, test = cub200_datasets(root, size)
        flip = BatchRandomHorizontalFlip() if augment else None
        super().__init__(train, test, n_experiences, loader=loader, train_transform=flip, **kwargs)
