"""Data-path cost: one epoch over every experience through lightning_cl's loaders vs slicing tensors by hand.

On the real MNIST files, for SplitMNIST (5 experiences) and PermutedMNIST (10 permutations), one
training epoch over every experience (shuffled batches of 128, normalised float32, permuted for
PermutedMNIST) is read in two ways:

- ``lightning_cl``: ``for exp in bench.train_stream: for x, y, t in exp.train_dataloader(): ...``,
  the loaders a ``Trainer`` gets (a ``BatchLoader`` over the experience's index view);
- ``by hand``: the raw ``uint8`` tensors indexed with a shuffled index per batch, converted,
  normalised (and permuted) with plain tensor operations, no ``DataLoader``.

One torch thread; the two ways alternate, repeated; the table reports the median seconds per
epoch, the median of the per-pair ratios and the ratio of the best runs.
Run: ``python benchmarks/data_path.py --root /path/holding/MNIST``; it writes ``benchmarks/data_path.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_cl.data import Benchmark, LoaderSettings, PermutedMNIST, SplitMNIST
from lightning_cl.data.domain_dataset import DomainDataset
from lightning_cl.data.mnist import MNIST_MEAN, MNIST_STD
from lightning_cl.data.transforms import PixelPermutation

BATCH = 128


def through_loaders(bench: Benchmark) -> Callable[[], int]:
    def run() -> int:
        seen = 0
        for exp in bench.train_stream:
            for x, _y, _t in exp.train_dataloader():
                seen += len(x)
        return seen

    return run


def by_hand(bench: Benchmark) -> Callable[[], int]:
    """The same epoch from the raw tensors: per experience its indices, permutations, normalisation."""
    parts = []
    for exp in bench.train_stream:
        view = exp.dataset
        base = view.base
        perm = None
        indices = view.indices
        if isinstance(base, DomainDataset):
            domain = int(indices[0]) // base.base_length
            transform = base.domains[domain]
            assert isinstance(transform, PixelPermutation)
            perm = transform.permutation
            indices = indices % base.base_length
            base = base.base
        parts.append((base.inputs, base.targets, indices, perm, int(view.task_labels[0])))
    mean, std = MNIST_MEAN[0], MNIST_STD[0]

    def run() -> int:
        seen = 0
        for inputs, targets, indices, perm, task in parts:
            order = indices[torch.randperm(len(indices))]
            for chunk in order.split(BATCH):
                x = inputs.index_select(0, chunk)  # the fast gather (advanced indexing is ~18x slower)
                if perm is not None:
                    flat = x.flatten(-2)
                    x = flat.gather(-1, perm.expand_as(flat)).reshape(x.shape)
                x = x.float().mul_(1 / (255 * std)).sub_(mean / std)
                _y = targets.index_select(0, chunk)
                _t = torch.full((len(chunk),), task)
                seen += len(x)
        return seen

    return run


def measure(a: Callable[[], int], b: Callable[[], int], repeats: int) -> tuple[list[float], list[float], int]:
    ta, tb = [], []
    a(), b()  # warm-up
    n = 0
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            n = fn()
            out.append(time.perf_counter() - start)
    return ta, tb, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("LIGHTNING_CL_DATA", "data"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).with_name("data_path.md")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    benches = {
        "SplitMNIST (5 experiences)": SplitMNIST(
            args.root, n_experiences=5, loader=LoaderSettings(batch_size=BATCH)
        ),
        "PermutedMNIST (10 experiences)": PermutedMNIST(
            args.root, n_experiences=10, seed=0, loader=LoaderSettings(batch_size=BATCH)
        ),
    }
    rows = []
    for name, bench in benches.items():
        ours, hand, n = measure(through_loaders(bench), by_hand(bench), args.repeats)
        mo, mh = statistics.median(ours), statistics.median(hand)
        paired = statistics.median(o / h for o, h in zip(ours, hand))
        best = min(ours) / min(hand)
        rows.append(f"| {name} | {n:,} | {mo:.3f} | {mh:.3f} | {paired:.2f}x | {best:.2f}x |")
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| benchmark | samples per epoch | lightning_cl loaders (s) | by hand (s) "
            "| ratio (median of pairs) | ratio (best of each) |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    text = (
        "# Data path: lightning_cl loaders vs slicing tensors by hand\n\n"
        "One training epoch over every experience (batches of 128, shuffled, normalised; permuted for\n"
        "PermutedMNIST), real MNIST files, 1 torch thread, the two ways alternated, "
        f"{args.repeats} pairs of runs:\nmedian seconds per epoch, the median of the per-pair ratios, and "
        "the ratio of the best runs\n(the least disturbed by other processes). "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. "
        "Written by `benchmarks/data_path.py`.\n\n"
        f"{table}\n"
    )
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
