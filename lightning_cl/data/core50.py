"""CORe50 (NI, NC, NIC): the official batch file lists over the image folders, decoded by loader workers."""

from __future__ import annotations

from pathlib import Path

from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.dataset_not_found import check_dataset_files
from lightning_cl.data.from_datasets import paths_benchmark
from lightning_cl.data.image_files import read_filelist
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.transforms import BatchRandomHorizontalFlip, normalize

__all__ = ["CORE50_SCENARIOS", "IMAGENET_MEAN", "IMAGENET_STD", "CORe50"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# scenario -> (number of training batches, file-list folder, scenario kind)
CORE50_SCENARIOS: dict[str, tuple[int, str, str]] = {
    "ni": (8, "batches_filelists/NI_inc", "new_instances"),
    "nc": (9, "batches_filelists/NC_inc", "class_incremental"),
    "nic": (79, "batches_filelists/NIC_inc", "new_instances_and_classes"),
    "nicv2_79": (79, "NIC_v2_79", "new_instances_and_classes"),
    "nicv2_196": (196, "NIC_v2_196", "new_instances_and_classes"),
    "nicv2_391": (391, "NIC_v2_391", "new_instances_and_classes"),
}


class CORe50(Benchmark):
    """CORe50's continual scenarios (Lomonaco and Maltoni, 2017), as Avalanche's ``CORe50``.

    Reads the dataset's own file lists: ``root/<list folder>/run<run>/train_batch_XX_filelist.txt``
    (one per experience) and ``test_filelist.txt`` (the test stream: one experience with the
    whole test set, Avalanche's ``complete_test_set_only``), with images under
    ``root/core50_128x128`` (or ``core50_32x32`` with ``mini=True``). List folders are those of
    the official archive: ``batches_filelists/NI_inc``, ``NC_inc``, ``NIC_inc`` (``_cat`` suffix
    for category labels) and ``NIC_v2_79`` / ``196`` / ``391``. Avalanche's defaults:
    ImageNet normalisation, random horizontal flip on training batches, object-level labels (50).

    Args:
        root: folder holding the image folder and the file lists.
        scenario: one of ``"ni"`` (8 experiences), ``"nc"`` (9), ``"nic"`` (79), ``"nicv2_79"``,
            ``"nicv2_196"``, ``"nicv2_391"``.
        run: which of the 10 official orderings (0-9).
        object_lvl: 50 object classes (else the 10 categories).
        mini: the 32x32 images instead of 128x128.
        augment: flip the training batches.
        loader: the loader settings (:class:`~lightning_cl.data.LoaderSettings`; batches of 128,
            4 workers decoding images).

    Raises:
        ValueError: for an unknown scenario or a run outside 0-9.
        DatasetNotFoundError: if a file list or the image folder is missing (there is no download:
            get core50_128x128.zip and batches_filelists.zip from the CORe50 site).

    Example:
        >>> CORe50("data/core50", scenario="ni").n_experiences  # doctest: +SKIP
        8
    """

    def __init__(
        self,
        root: str | Path = "data/core50",
        scenario: str = "nicv2_391",
        run: int = 0,
        object_lvl: bool = True,
        mini: bool = False,
        augment: bool = True,
        loader: LoaderSettings = LoaderSettings(batch_size=128, num_workers=4),
    ):
        if scenario not in CORE50_SCENARIOS:
            raise ValueError(f"scenario must be one of {sorted(CORE50_SCENARIOS)}, got {scenario!r}")
        if not isinstance(run, int) or not 0 <= run <= 9:
            raise ValueError(f"run must be an int in 0..9, got {run!r}")
        n_batches, lists, kind = CORE50_SCENARIOS[scenario]
        lists_dir = f"{lists}{'' if object_lvl else '_cat'}/run{run}"
        images_dir = "core50_32x32" if mini else "core50_128x128"
        names = [*(f"train_batch_{i:02d}_filelist.txt" for i in range(n_batches)), "test_filelist.txt"]
        check_dataset_files(
            "CORe50",
            root,
            [*(f"{lists_dir}/{name}" for name in names), images_dir],
            download=f"there is no download: unpack {images_dir}.zip and batches_filelists.zip into root",
        )
        folder = Path(root) / lists_dir
        files = [folder / name for name in names[:-1]]
        paths_benchmark(
            [read_filelist(f) for f in files],
            [read_filelist(folder / "test_filelist.txt")],
            root=Path(root) / images_dir,
            transform=normalize(IMAGENET_MEAN, IMAGENET_STD),
            scenario=kind,
            train_transform=BatchRandomHorizontalFlip() if augment else None,
            loader=loader,
            name=f"CORe50-{scenario.upper()}",
            out=self,
        )
        n_classes = 50 if object_lvl else 10
        for stream in (self.train_stream, self.test_stream):
            for exp in stream:
                exp.n_classes = n_classes
        self.n_classes = n_classes
        if kind != "class_incremental":
            self.class_order = sorted(self.class_order)
