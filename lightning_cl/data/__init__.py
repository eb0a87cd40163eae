"""Data: experiences, streams, benchmarks and the scenario generators that build them."""

from lightning_cl.data.batch import Batch
from lightning_cl.data.batch_loader import BatchLoader
from lightning_cl.data.benchmark import AVALANCHE_NAMES, SCENARIOS, Benchmark, build_benchmark
from lightning_cl.data.cifar import SplitCIFAR10, SplitCIFAR100, SplitCIFAR110, cifar_tensors
from lightning_cl.data.concat_dataset import ConcatClassificationDataset
from lightning_cl.data.core50 import CORe50
from lightning_cl.data.cub200 import SplitCUB200
from lightning_cl.data.cumulative import cumulative, joint
from lightning_cl.data.dataset_not_found import DatasetNotFoundError
from lightning_cl.data.dataset_view import DatasetView, gather, targets_of
from lightning_cl.data.digits import SplitDigits, load_digits
from lightning_cl.data.domain_dataset import DomainDataset
from lightning_cl.data.domain_incremental import domain_incremental, permuted, rotated
from lightning_cl.data.experience import Experience, make_loader
from lightning_cl.data.fashion_mnist import SplitFMNIST, SplitKMNIST
from lightning_cl.data.from_datasets import (
    dataset_benchmark,
    filelist_benchmark,
    paths_benchmark,
    tensors_benchmark,
)
from lightning_cl.data.image_files import ImageFilesDataset, read_filelist
from lightning_cl.data.loader_settings import LoaderSettings
from lightning_cl.data.mnist import PermutedMNIST, RotatedMNIST, SplitMNIST
from lightning_cl.data.new_instances import new_instances, split_instances
from lightning_cl.data.omniglot import SplitOmniglot
from lightning_cl.data.online import OnlineOrigin, split_online
from lightning_cl.data.relabeled import RelabeledDataset
from lightning_cl.data.scenarios import (
    ClassIncrementalBenchmark,
    class_incremental,
    resolve_class_order,
    split_classes,
    stream_from_indices,
    task_incremental,
)
from lightning_cl.data.stream import Stream
from lightning_cl.data.subsampled import SubsampledBenchmark, subsample_train
from lightning_cl.data.tensor_dataset import TensorClassificationDataset
from lightning_cl.data.tiny_imagenet import SplitTinyImageNet
from lightning_cl.data.train_data_source import TrainDataSource
from lightning_cl.data.validation import benchmark_with_validation_stream, split_validation

__all__ = [
    "AVALANCHE_NAMES",
    "SCENARIOS",
    "Batch",
    "BatchLoader",
    "Benchmark",
    "CORe50",
    "ClassIncrementalBenchmark",
    "ConcatClassificationDataset",
    "DatasetNotFoundError",
    "DatasetView",
    "DomainDataset",
    "Experience",
    "ImageFilesDataset",
    "LoaderSettings",
    "OnlineOrigin",
    "PermutedMNIST",
    "RelabeledDataset",
    "RotatedMNIST",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitCIFAR110",
    "SplitCUB200",
    "SplitDigits",
    "SplitFMNIST",
    "SplitKMNIST",
    "SplitMNIST",
    "SplitOmniglot",
    "SplitTinyImageNet",
    "Stream",
    "SubsampledBenchmark",
    "TensorClassificationDataset",
    "TrainDataSource",
    "benchmark_with_validation_stream",
    "build_benchmark",
    "cifar_tensors",
    "class_incremental",
    "cumulative",
    "dataset_benchmark",
    "domain_incremental",
    "filelist_benchmark",
    "gather",
    "joint",
    "load_digits",
    "make_loader",
    "new_instances",
    "paths_benchmark",
    "permuted",
    "read_filelist",
    "resolve_class_order",
    "rotated",
    "split_classes",
    "split_instances",
    "split_online",
    "split_validation",
    "stream_from_indices",
    "subsample_train",
    "targets_of",
    "task_incremental",
    "tensors_benchmark",
]
