"""lightning_cl's own cost on top of plain Lightning, measured in one process.

The suite (``run.py``) times whole streams, each contender in a fresh process; on a shared
machine its runs spread by more than the few per cent this is about. Here the same process
alternates the contenders round after round on the same tensors and the same model:

- **train**: ``trainer.fit`` on the first SplitMNIST experience (a fresh model and ``Trainer``
  each time): lightning_cl's ``ContinualModule`` on the experience's ``LightningDataModule``
  against ``contender_plain_lightning.PlainModule`` on a Python iterable of index gathers of
  the normalised tensors, unlogged and logging as many values (``--log``);
- **eval**: ``trainer.test`` of the whole test stream (5 experiences) with one trained
  model, lightning_cl's stream datamodule against the plain module on 5 loaders.

Times include ``Trainer`` construction. Ratios are of minima (the better estimate on a shared
machine) and of medians. ``--profile`` prints, for lightning_cl, the functions of lightning_cl
and torchmetrics by cumulative time (``cProfile``), the remainder being Lightning's and torch's.

Run: ``python benchmarks/overhead.py --rounds 10 --out benchmarks/overhead.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning as L
import torch
from common import (
    BATCH_SIZE,
    LR,
    MEAN,
    MOMENTUM,
    N_EXPERIENCES,
    STD,
    default_data_root,
    load_mnist,
    parse_class_order,
    single_thread,
    split_by_class,
)
from contender_handwritten import mlp
from contender_lightning_cl import TRAINER_KWARGS as CL_KWARGS
from contender_lightning_cl import benchmark
from contender_plain_lightning import TRAINER_KWARGS as PLAIN_KWARGS
from contender_plain_lightning import Gathers, PlainModule
from torch.optim import SGD

from lightning_cl import MLP, ContinualModule

HERE = Path(__file__).resolve().parent
CONTENDERS = ("lightning_cl", "plain_lightning", "plain_lightning-logged")


class Workload:
    """The tensors, loaders and models the contenders share."""

    def __init__(self, data_root: str | None, fraction: float):
        class_order = parse_class_order(None)
        self.bench, self.source = benchmark(data_root, fraction, class_order)
        data = load_mnist(data_root, fraction)
        self.train_x = ((data.train_x.float() / 255.0 - MEAN) / STD).contiguous()
        self.train_y = data.train_y
        test_x = ((data.test_x.float() / 255.0 - MEAN) / STD).contiguous()
        self.train_idx = split_by_class(data.train_y, class_order, N_EXPERIENCES)[0]
        self.test_loaders = [
            Gathers(test_x, data.test_y, list(idx.split(BATCH_SIZE)))
            for idx in split_by_class(data.test_y, class_order, N_EXPERIENCES)
        ]
        self.generator = torch.Generator().manual_seed(1)
        # One trained model for every evaluation (the weights do not change the work).
        self.module = ContinualModule(MLP(), optimizer=partial(SGD, lr=LR, momentum=MOMENTUM))
        L.Trainer(logger=False, **CL_KWARGS).fit(self.module, datamodule=self.bench.train_stream[0])
        self.plain = {log: PlainModule(self.module.model, log=log) for log in (False, True)}

    def train(self, contender: str) -> float:
        """Seconds of one ``trainer.fit`` on the first experience."""
        if contender == "lightning_cl":
            module = ContinualModule(MLP(), optimizer=partial(SGD, lr=LR, momentum=MOMENTUM))
            start = time.perf_counter()
            L.Trainer(logger=False, **CL_KWARGS).fit(module, datamodule=self.bench.train_stream[0])
            return time.perf_counter() - start
        plain = PlainModule(mlp(), log=contender.endswith("logged"))
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.generator)]
        loader = Gathers(self.train_x, self.train_y, list(order.split(BATCH_SIZE)))
        start = time.perf_counter()
        L.Trainer(**PLAIN_KWARGS).fit(plain, train_dataloaders=loader)
        return time.perf_counter() - start

    def eval(self, contender: str) -> float:
        """Seconds of one ``trainer.test`` of the whole test stream."""
        if contender == "lightning_cl":
            start = time.perf_counter()
            L.Trainer(logger=False, **CL_KWARGS).test(
                self.module, datamodule=self.bench.test_stream, verbose=False
            )
            return time.perf_counter() - start
        plain = self.plain[contender.endswith("logged")]
        plain.correct, plain.seen, plain.loss_sum = {}, {}, {}
        start = time.perf_counter()
        L.Trainer(**PLAIN_KWARGS).test(plain, dataloaders=self.test_loaders, verbose=False)
        return time.perf_counter() - start


def same_work(work: Workload) -> tuple[float, float]:
    """The stream accuracy of the trained model as lightning_cl and the plain module measure it."""
    trainer = L.Trainer(logger=False, **CL_KWARGS)
    trainer.test(work.module, datamodule=work.bench.test_stream, verbose=False)
    ours = float(trainer.callback_metrics["test/acc/stream"])
    work.eval("plain_lightning")
    plain = work.plain[False]
    return ours, sum(plain.correct.values()) / sum(plain.seen.values())


def measure(work: Workload, rounds: int) -> dict[str, dict[str, list[float]]]:
    """``{phase: {contender: seconds per round}}``; the contenders' order rotates per round."""
    times: dict[str, dict[str, list[float]]] = {p: {c: [] for c in CONTENDERS} for p in ("train", "eval")}
    for phase in ("train", "eval"):
        run: Callable[[str], float] = getattr(work, phase)
        for c in CONTENDERS:  # warm-up, not counted
            run(c)
        for r in range(rounds):
            for c in CONTENDERS[r % 3 :] + CONTENDERS[: r % 3]:
                times[phase][c].append(run(c))
    return times


def report(
    times: dict[str, dict[str, list[float]]], rounds: int, source: str, accuracies: tuple[float, float]
) -> str:
    """The markdown table: minima, medians and the ratios against plain Lightning."""
    lines = [
        "# lightning_cl against plain Lightning, one process",
        "",
        f"Generated by `python benchmarks/overhead.py --rounds {rounds}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; data: {source} MNIST; one torch thread; "
        "train = `trainer.fit` of the first SplitMNIST experience (a fresh model), eval = `trainer.test` "
        "of the 5 test experiences; ratios of minima, medians in brackets.",
        "",
        f"Same work: the trained model's stream accuracy is {accuracies[0]:.6f} by lightning_cl and "
        f"{accuracies[1]:.6f} by the plain module.",
        "",
        "| phase | contender | min (s) | median (s) | / plain Lightning | / plain Lightning, logged |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for phase, by in times.items():
        base, logged = by["plain_lightning"], by["plain_lightning-logged"]
        for c, t in by.items():
            lines.append(
                f"| {phase} | {c} | {min(t):.3f} | {statistics.median(t):.3f} | "
                f"{min(t) / min(base):.3f}x ({statistics.median(t) / statistics.median(base):.3f}x) | "
                f"{min(t) / min(logged):.3f}x ({statistics.median(t) / statistics.median(logged):.3f}x) |"
            )
    return "\n".join(lines) + "\n"


def profile(work: Workload, rounds: int) -> str:
    """cProfile of lightning_cl's train and eval: lightning_cl's and torchmetrics' functions."""
    out = io.StringIO()
    for phase in ("train", "eval"):
        run: Callable[[str], float] = getattr(work, phase)
        run("lightning_cl")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(rounds):
            run("lightning_cl")
        prof.disable()
        out.write(f"\n## {phase}, {rounds} run(s)\n")
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("cumulative").print_stats(r"lightning_cl/|torchmetrics/", 30)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Measure (or profile) and print the table; ``--out`` also writes it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the three contenders (default 10)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of each MNIST split")
    parser.add_argument("--data", default=None, help="folder holding MNIST/raw (default: $LIGHTNING_CL_DATA)")
    parser.add_argument("--out", default=None, help="markdown report to write")
    parser.add_argument("--profile", action="store_true", help="profile lightning_cl instead of timing")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    single_thread()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(1, verbose=False)
    root = args.data if args.data is not None else default_data_root()
    work = Workload(None if root is None else str(root), args.fraction)
    if args.profile:
        print(profile(work, args.rounds))
        return 0
    text = report(measure(work, args.rounds), args.rounds, work.source, same_work(work))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
