"""Data: experiences, streams, benchmarks and the scenario generators that build them."""

from lightning_cl.data.benchmark import SCENARIOS, Benchmark
from lightning_cl.data.dataset_view import DatasetView, targets_of
from lightning_cl.data.digits import SplitDigits, load_digits
from lightning_cl.data.experience import Experience, make_loader
from lightning_cl.data.mnist import SplitMNIST
from lightning_cl.data.scenarios import class_incremental, resolve_class_order, task_incremental
from lightning_cl.data.stream import Stream
from lightning_cl.data.tensor_dataset import TensorClassificationDataset

__all__ = [
    "SCENARIOS",
    "Benchmark",
    "DatasetView",
    "Experience",
    "SplitDigits",
    "SplitMNIST",
    "Stream",
    "TensorClassificationDataset",
    "class_incremental",
    "load_digits",
    "make_loader",
    "resolve_class_order",
    "targets_of",
    "task_incremental",
]
