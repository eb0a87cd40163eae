"""A missing dataset names the path searched, the layout expected and how to get the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_cl.data import (
    CORe50,
    DatasetNotFoundError,
    PermutedMNIST,
    RotatedMNIST,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitCIFAR110,
    SplitCUB200,
    SplitFMNIST,
    SplitKMNIST,
    SplitMNIST,
    SplitOmniglot,
    SplitTinyImageNet,
)


@pytest.mark.parametrize(
    ("make", "layout"),
    [
        (SplitMNIST, "<root>/MNIST/raw/train-images-idx3-ubyte"),
        (PermutedMNIST, "<root>/MNIST/raw/train-images-idx3-ubyte"),
        (RotatedMNIST, "<root>/MNIST/raw/train-images-idx3-ubyte"),
        (SplitFMNIST, "<root>/FashionMNIST/raw/train-images-idx3-ubyte"),
        (SplitKMNIST, "<root>/KMNIST/raw/train-images-idx3-ubyte"),
        (SplitCIFAR10, "<root>/cifar-10-batches-py/data_batch_1"),
        (SplitCIFAR100, "<root>/cifar-100-python/train"),
        (SplitCIFAR110, "<root>/cifar-10-batches-py/data_batch_1"),
        (SplitOmniglot, "<root>/omniglot-py/images_background"),
    ],
)
def test_downloadable_datasets_name_path_layout_and_download(tmp_path: Path, make, layout: str) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        make(tmp_path / "data")
    message = str(caught.value)
    missing = layout.replace("<root>", str(tmp_path / "data"))
    assert f"{missing} does not exist" in message
    assert f"Expected layout: {layout}" in message and f"root={str(tmp_path / 'data')!r}" in message
    assert "pass download=True" in message
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, RuntimeError)


@pytest.mark.parametrize(
    ("make", "layout", "how"),
    [
        (SplitTinyImageNet, "<root>/tiny-imagenet-200/wnids.txt", "tiny-imagenet-200.zip"),
        (SplitCUB200, "<root>/CUB_200_2011/images.txt", "CUB_200_2011.tgz"),
        (CORe50, "<root>/batches_filelists/NI_inc/run0/train_batch_00_filelist.txt", "batches_filelists.zip"),
    ],
)
def test_datasets_without_download_say_where_to_get_them(tmp_path: Path, make, layout: str, how: str) -> None:
    kwargs = {"scenario": "ni"} if make is CORe50 else {}
    with pytest.raises(
        DatasetNotFoundError, match=rf"Expected layout: {re.escape(layout)}.*no download.*{how}"
    ):
        make(tmp_path, **kwargs)


@pytest.mark.parametrize("inside", ["MNIST", "MNIST/raw"])
def test_root_one_level_too_deep_names_the_right_root(idx_root: Path, inside: str) -> None:
    with pytest.raises(
        DatasetNotFoundError,
        match=rf"inside the dataset's folder 'MNIST': pass root={re.escape(repr(str(idx_root)))}",
    ):
        SplitMNIST(idx_root / inside)
    with pytest.raises(DatasetNotFoundError, match=r"inside the dataset's folder 'FashionMNIST'"):
        SplitFMNIST(idx_root / "FashionMNIST")


def test_root_inside_a_folder_without_the_files_says_so(tmp_path: Path) -> None:
    (tmp_path / "MNIST").mkdir()
    with pytest.raises(DatasetNotFoundError, match="pass the folder that holds it; pass download=True"):
        SplitMNIST(tmp_path / "MNIST")


def test_real_mnist_root_one_level_too_deep(mnist_root: Path) -> None:
    expected = re.escape(repr(str(mnist_root.resolve())))
    with pytest.raises(DatasetNotFoundError, match=rf"pass root={expected}$"):
        SplitMNIST(mnist_root / "MNIST")
