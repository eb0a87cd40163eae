"""Scaling: a PermutedMNIST-like stream of many experiences with Replay; time and memory per experience.

Experience ``i`` is MNIST with one fixed random pixel permutation (seeded by ``i``), all ten
classes, task label 0. The permutations are applied on whole batches when they are read, so the
data costs one copy of MNIST whatever the number of experiences, and any growth of the
process's memory comes from the training loop itself. All experiences are index views of one
base dataset (what lightning_cl's replay buffer needs).

The loop is the README's plain loop (a new ``L.Trainer`` per experience) with
``Replay(mem_size=500)``; after each experience the whole test stream is evaluated (or a
fraction of it, ``--test-fraction``). Per experience the record holds the fit and test times,
the resident memory after it and the peak resident memory during it (Linux ``clear_refs``).

Run: ``python benchmarks/scaling.py --experiences 20 --data ../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from common import (
    BATCH_SIZE,
    LR,
    MEAN,
    MEM_SIZE,
    MOMENTUM,
    SEED,
    STD,
    current_rss_mb,
    default_data_root,
    load_mnist,
    peak_rss_mb,
    reset_peak_rss,
    single_thread,
)
from torch import Tensor
from torch.optim import SGD

from lightning_cl import MLP, Benchmark, ContinualModule, Experience, Replay, Stream
from lightning_cl.data import LoaderSettings
from lightning_cl.data.dataset_view import DatasetView


class PermutedImages(torch.utils.data.Dataset):
    """``n_permutations`` pixel-permuted copies of MNIST-shaped ``uint8`` images, stored once.

    Sample ``k * N + i`` is image ``i`` under permutation ``k``. Batches are read through
    ``__getitems__`` (one gather for the images, one for the pixels, then normalisation).
    """

    def __init__(self, images: Tensor, targets: Tensor, permutations: Tensor):
        self.images = images.reshape(len(images), -1)
        self.base_targets = targets.long()
        self.permutations = permutations
        self.targets = self.base_targets.repeat(len(permutations))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: Tensor | list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        n = len(self.images)
        pixels = self.permutations[idx // n]
        x = self.images[idx % n].gather(1, pixels).float().div_(255.0).sub_(MEAN).div_(STD)
        return x.view(-1, 1, 28, 28), self.targets[idx]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


def permuted_benchmark(
    data_root: str | None, n_experiences: int, fraction: float, test_fraction: float
) -> Benchmark:
    """The stream: ``n_experiences`` permutations of MNIST as experiences of one base dataset each split."""
    train = load_mnist(data_root, fraction)
    test = load_mnist(data_root, fraction * test_fraction)
    perms = torch.stack(
        [torch.randperm(784, generator=torch.Generator().manual_seed(SEED + k)) for k in range(n_experiences)]
    )

    def stream(name: str, images: Tensor, targets: Tensor) -> Stream:
        base = PermutedImages(images, targets, perms)
        n = len(targets)
        experiences = [
            Experience(
                DatasetView(base, torch.arange(k * n, (k + 1) * n), 0, base_targets=base.targets),
                index=k,
                classes_in_this_experience=list(range(10)),
                n_classes=10,
                stream_name=name,
                loader_settings=LoaderSettings(batch_size=BATCH_SIZE),
            )
            for k in range(n_experiences)
        ]
        return Stream(name, experiences)

    return Benchmark(
        stream("train", train.train_x, train.train_y),
        stream("test", test.test_x, test.test_y),
        n_classes=10,
        class_order=list(range(10)),
        scenario="class_incremental",
        name="PermutedMNIST-like",
    )


def run(data_root: str | None, n_experiences: int, fraction: float, test_fraction: float) -> dict[str, Any]:
    """Train the stream with Replay and record time and memory per experience."""
    single_thread()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(SEED, verbose=False)
    bench = permuted_benchmark(data_root, n_experiences, fraction, test_fraction)
    module = ContinualModule(MLP(), optimizer=partial(SGD, lr=LR, momentum=MOMENTUM))
    replay = Replay(mem_size=MEM_SIZE)
    rows = []
    for experience in bench.train_stream:
        reset_peak_rss()
        start = time.perf_counter()
        trainer = L.Trainer(
            max_epochs=1,
            callbacks=[replay],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            accelerator="cpu",
        )
        trainer.fit(module, datamodule=experience)
        fitted = time.perf_counter()
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
        tested = time.perf_counter()
        rows.append(
            {
                "experience": experience.index,
                "train_s": fitted - start,
                "eval_s": tested - fitted,
                "rss_mb": current_rss_mb(),
                "peak_rss_mb": peak_rss_mb(),
                "stream_accuracy": module.results.stream_accuracy[-1],
            }
        )
    return {
        "experiences": n_experiences,
        "train_samples_per_experience": len(bench.train_stream[0]),
        "test_samples": sum(len(e) for e in bench.test_stream),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiences", type=int, default=20)
    parser.add_argument("--data", default=None)
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of MNIST per experience")
    parser.add_argument("--test-fraction", type=float, default=1.0, help="further fraction of the test split")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = args.data or default_data_root()
    record = run(str(root) if root else None, args.experiences, args.fraction, args.test_fraction)
    text = json.dumps(record)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
