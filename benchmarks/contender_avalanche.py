"""Contender 4: Avalanche 0.6 on the same workload, run from its own virtual environment.

``SplitMNIST`` with lightning_cl's class order (``fixed_class_order``), Avalanche's ``SimpleMLP``
(784-512-10, dropout 0.5), SGD (lr 0.01, momentum 0.9), ``train_mb_size=eval_mb_size=128``,
one epoch per experience, evaluation on the whole test stream after each experience. Methods:
``Naive``; ``Naive`` with ``ReplayPlugin(mem_size=500)`` (experience-balanced buffer, 128 memory
samples per step, as lightning_cl); ``EWC(mode="separate")`` with the ``ewc_lambda`` that gives the
same penalty strength (Avalanche omits the paper's 1/2 and squares minibatch gradients; see
``common.avalanche_ewc_lambda``). The evaluator holds only per-experience accuracy and no logger,
so logging does not dominate.

The full real data goes through Avalanche's own ``SplitMNIST(dataset_root=...)``; a fraction of
it, or synthetic data, through ``nc_benchmark`` over a dataset that reads samples as Avalanche's
MNIST does (one ``float`` image per ``__getitem__``, then ``Normalize``).

Run: ``benchmarks/.venv-avalanche/bin/python benchmarks/contender_avalanche.py --method naive``.
"""

from __future__ import annotations

import argparse
import time

_START = time.perf_counter()

import warnings  # noqa: E402
from importlib.metadata import version  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from common import (  # noqa: E402
    BATCH_SIZE,
    LR,
    MEAN,
    MEM_SIZE,
    MOMENTUM,
    N_EXPERIENCES,
    SEED,
    STD,
    RunRecord,
    Stopwatch,
    add_common_arguments,
    avalanche_ewc_lambda,
    average_of_last_row,
    default_data_root,
    has_mnist,
    load_mnist,
    parse_class_order,
    single_thread,
    torch_versions,
    write_record,
)
from torch import Tensor  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402


class _PerSampleImages(Dataset):
    """MNIST-shaped ``uint8`` tensors read one sample at a time, as Avalanche's ``TensorMNIST`` does."""

    def __init__(self, images: Tensor, targets: Tensor, transform: Any):
        self.data = images.squeeze(1)
        self.targets = targets.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.data[index].float().unsqueeze(0) / 255.0), self.targets[index]


def benchmark(data_root: str | None, fraction: float, class_order: list[int]) -> tuple[Any, str]:
    """Avalanche's ``SplitMNIST`` on the full real data, else ``nc_benchmark`` on the loaded tensors."""
    from avalanche.benchmarks.classic import SplitMNIST

    if fraction >= 1.0 and has_mnist(data_root):
        bench = SplitMNIST(
            n_experiences=N_EXPERIENCES, seed=SEED, fixed_class_order=class_order, dataset_root=data_root
        )
        return bench, "real"
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from torchvision.transforms import Normalize

    data = load_mnist(data_root, fraction)
    normalize = Normalize((MEAN,), (STD,))
    bench = nc_benchmark(
        train_dataset=_PerSampleImages(data.train_x, data.train_y, normalize),
        test_dataset=_PerSampleImages(data.test_x, data.test_y, normalize),
        n_experiences=N_EXPERIENCES,
        task_labels=False,
        seed=SEED,
        fixed_class_order=class_order,
    )
    return bench, data.source


def strategy_for(method: str, model: torch.nn.Module) -> Any:
    """The Avalanche strategy of ``method`` with a minimal evaluator (experience accuracy, no logger)."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.supervised import EWC, Naive

    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    common: dict[str, Any] = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=BATCH_SIZE,
        train_epochs=1,
        eval_mb_size=BATCH_SIZE,
        device="cpu",
        evaluator=evaluator,
    )
    if method == "replay":
        return Naive(plugins=[ReplayPlugin(mem_size=MEM_SIZE)], **common)
    if method == "ewc":
        return EWC(ewc_lambda=avalanche_ewc_lambda(), mode="separate", **common)
    return Naive(**common)


def run(method: str, data_root: str | None, fraction: float, class_order: list[int]) -> RunRecord:
    """Train and evaluate the stream with Avalanche; return what was measured."""
    single_thread()
    warnings.filterwarnings("ignore")
    torch.manual_seed(SEED)
    from avalanche.models import SimpleMLP

    bench, source = benchmark(data_root, fraction, class_order)
    model = SimpleMLP(num_classes=10, input_size=784, hidden_size=512, hidden_layers=1, drop_rate=0.5)
    strategy = strategy_for(method, model)
    setup_s = time.perf_counter() - _START

    clock = Stopwatch()
    matrix: list[list[float]] = []
    n = len(bench.test_stream)
    start = time.perf_counter()
    for experience in bench.train_stream:
        with clock.phase("train"):
            strategy.train(experience)
        with clock.phase("eval"):
            metrics = strategy.eval(bench.test_stream)
        matrix.append(
            [float(metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"]) for j in range(n)]
        )
    total = time.perf_counter() - start
    return RunRecord(
        contender="avalanche",
        method=method,
        total_s=total,
        train_s=clock["train"],
        eval_s=clock["eval"],
        setup_s=setup_s,
        stream_samples=sum(len(e.dataset) for e in bench.train_stream),
        average_accuracy=average_of_last_row(matrix),
        accuracy_matrix=matrix,
        data_source=source,
        versions={**torch_versions(), "avalanche": version("avalanche-lib")},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    args = parser.parse_args()
    root = args.data or default_data_root()
    record = run(args.method, str(root) if root else None, args.fraction, parse_class_order(args.class_order))
    write_record(record, args.json)


if __name__ == "__main__":
    main()
