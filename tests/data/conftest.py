"""Fixtures: small files in each dataset's own on-disk format, and the real MNIST when available."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA_ENV = "LIGHTNING_CL_DATA"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding the real ``MNIST/raw`` (skips without ``LIGHTNING_CL_DATA``)."""
    root = os.environ.get(DATA_ENV)
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not available: set {DATA_ENV} to the folder holding MNIST/raw")
    return Path(root)


def write_idx(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> None:
    """MNIST-format IDX files (as torchvision expects them in ``<Dataset>/raw``), 10 balanced classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with open(folder / f"{prefix}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">iiii", 0x0803, n, 28, 28) + images.tobytes())
        with open(folder / f"{prefix}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">ii", 0x0801, n) + labels.tobytes())


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with small FashionMNIST, KMNIST and MNIST IDX files."""
    root = tmp_path_factory.mktemp("idx")
    for name in ("FashionMNIST", "KMNIST", "MNIST"):
        write_idx(root / name / "raw")
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pickled CIFAR-10 and CIFAR-100 batches in the official archives' layout (small)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)

    def dump(path: Path, n: int, n_classes: int, key: str) -> None:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        entry = {"data": data, key: list(np.arange(n) % n_classes)}
        with open(path, "wb") as f:
            pickle.dump(entry, f)

    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        dump(c10 / f"data_batch_{i}", 10, 10, "labels")
    dump(c10 / "test_batch", 20, 10, "labels")
    c100 = root / "cifar-100-python"
    c100.mkdir()
    dump(c100 / "train", 200, 100, "fine_labels")
    dump(c100 / "test", 100, 100, "fine_labels")
    return root


def _png(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 255 - value)).save(path)


@pytest.fixture(scope="session")
def tiny_imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-imagenet-200`` with 4 classes, 3 train and 2 val JPEGs each (64x64)."""
    root = tmp_path_factory.mktemp("tiny")
    folder = root / "tiny-imagenet-200"
    wnids = [f"n0{i}" for i in range(4)]
    folder.mkdir()
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        for k in range(3):
            _png(folder / "train" / w / "images" / f"{w}_{k}.JPEG", (64, 64), 40 * c + k)
        for k in range(2):
            name = f"val_{c}_{k}.JPEG"
            _png(folder / "val" / "images" / name, (64, 64), 40 * c)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``CUB_200_2011`` with 4 classes, 2 train and 1 test images each, of different sizes."""
    root = tmp_path_factory.mktemp("cub")
    folder = root / "CUB_200_2011"
    images, labels, split, boxes = [], [], [], []
    i = 0
    for c in range(4):
        for k in range(3):
            i += 1
            rel = f"{c + 1:03d}.Bird_{c}/img_{k}.jpg"
            _png(folder / "images" / rel, (50 + 10 * k, 40 + 5 * c), 50 * c)
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c + 1}")
            split.append(f"{i} {1 if k < 2 else 0}")
            boxes.append(f"{i} 2.0 3.0 30.0 20.0")
    for name, rows in (
        ("images", images),
        ("image_class_labels", labels),
        ("train_test_split", split),
        ("bounding_boxes", boxes),
    ):
        (folder / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``omniglot-py/images_background`` with 2 alphabets x 2 characters x 5 drawings (105x105)."""
    root = tmp_path_factory.mktemp("omniglot")
    for a in range(2):
        for ch in range(2):
            for k in range(5):
                path = root / "omniglot-py" / "images_background" / f"Alpha{a}" / f"character{ch + 1:02d}"
                _png(path / f"{k}.png", (105, 105), 255 if k % 2 else 0, mode="L")
    return root


@pytest.fixture(scope="session")
def core50_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CORe50's image folders and NI/NC/NIC file lists, shrunk: 10 objects, 11 sessions, 1 frame each."""
    root = tmp_path_factory.mktemp("core50")
    images = root / "core50_128x128"
    for s in range(1, 12):
        for o in range(1, 11):
            _png(images / f"s{s}" / f"o{o}" / f"C_{s:02d}_{o:02d}_000.png", (16, 16), 20 * o)

    def entry(s: int, o: int, cat: bool) -> str:
        return f"s{s}/o{o}/C_{s:02d}_{o:02d}_000.png {(o - 1) // 5 if cat else o - 1}"

    train_sessions, test_sessions = [1, 2, 4, 5, 6, 8, 9, 11], [3, 7, 10]
    for cat in (False, True):
        suffix = "_cat" if cat else ""
        lists = {
            f"batches_filelists/NI_inc{suffix}": [[(s, o) for o in range(1, 11)] for s in train_sessions],
            f"batches_filelists/NC_inc{suffix}": [[(s, o) for s in train_sessions for o in (1, 2)]]
            + [[(s, o) for s in train_sessions] for o in range(3, 11)],
            f"batches_filelists/NIC_inc{suffix}": [[(s, o)] for s in train_sessions for o in range(1, 11)][
                :79
            ],
        }
        for folder, batches in lists.items():
            run = root / folder / "run0"
            run.mkdir(parents=True)
            for b, batch in enumerate(batches):
                (run / f"train_batch_{b:02d}_filelist.txt").write_text(
                    "\n".join(entry(s, o, cat) for s, o in batch) + "\n"
                )
            (run / "test_filelist.txt").write_text(
                "\n".join(entry(s, o, cat) for s in test_sessions for o in range(1, 11)) + "\n"
            )
    return root


@pytest.fixture
def make_view():
    """Factory of a view over ``n`` samples whose input and target are both the sample's position."""
    import torch

    from lightning_cl.data import DatasetView, TensorClassificationDataset

    def make(n: int = 10, task_labels: int = 0):
        ds = TensorClassificationDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))
        return DatasetView(ds, range(n), task_labels)

    return make


@pytest.fixture
def make_experience():
    """Factory of experience 2 over 10 samples ``(1, 1, 2)`` of classes 0 and 1, task label 3."""
    import torch

    from lightning_cl.data import DatasetView, Experience, LoaderSettings, TensorClassificationDataset

    def make(train_transform=None, **settings):
        ds = TensorClassificationDataset(torch.arange(20.0).reshape(10, 1, 1, 2), torch.arange(10) % 2)
        return Experience(
            DatasetView(ds, range(10), 3),
            index=2,
            classes_in_this_experience=[1, 0],
            n_classes=2,
            loader_settings=LoaderSettings(**settings),
            train_transform=train_transform,
        )

    return make


def ids(loader) -> list[int]:
    """The targets of every batch of one pass over ``loader``, in order."""
    return [int(v) for batch in loader for v in batch[1]]


@pytest.fixture
def batch_ids():
    """:func:`ids` as a fixture: the targets of one pass over a loader."""
    return ids


@pytest.fixture
def fit_digits_stream():
    """Run ``fit_stream`` on SplitDigits with the tests' digits model, quietly on CPU: a factory
    ``(benchmark, train_stream, max_epochs) -> ContinualResults``."""
    import lightning as L

    from lightning_cl.training import fit_stream
    from tests.conftest import digits_module, stream_trainer_kwargs

    def run(benchmark, train_stream=None, max_epochs: int = 3):
        L.seed_everything(1)
        return fit_stream(
            digits_module(),
            benchmark,
            train_stream=train_stream,
            logger=False,
            trainer_kwargs=stream_trainer_kwargs(max_epochs=max_epochs),
        )

    return run
