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
machine) and of medians.

``--stream METHOD``: the suite's whole stream instead (5 experiences, the test stream after
each), for Naive, Replay or EWC, through the contenders' own ``run`` functions
(``contender_lightning_cl`` with the README's loop, ``contender_plain_lightning`` unlogged and
logged), alternating in this one process; train and eval are the sums over the stream, as in the
suite, so a method's cost on top of plain Lightning is measured without the suite's
process-to-process spread. ``--profile`` prints, for lightning_cl, the functions of lightning_cl
and torchmetrics by cumulative time (``cProfile``), the remainder being Lightning's and torch's.

``--eval-parts``: the evaluation taken apart, one trained model, every variant in turn per
round: plain Lightning unlogged and logged, each also with its loaders served by a
``LightningDataModule`` (Lightning then looks up the batch-transfer hooks on the datamodule and
the module at every batch), lightning_cl as it is, lightning_cl on a copy of the
benchmark holding the test images already normalised as ``float32`` (no per-batch ``uint8``
conversion), and both of those again with ``LightningModule.log`` replaced by a no-op (what
Lightning's logging costs inside lightning_cl's evaluation). The difference that remains between
lightning_cl without logging on float images and unlogged plain Lightning is lightning_cl's own
evaluation work (the default loss and accuracy, task labels, the metric objects).

``--attribute METHOD ...``: each contender's whole stream of those methods under ``cProfile``
(one profiler per contender and phase, the contenders alternating), each function's own time and
calls summed by the package that defines it; lightning_cl against plain Lightning by package
(``benchmarks/overhead_attribution.md``).

``--clock cpu`` times the CPU time of the process (``time.process_time``) instead of wall time:
on a machine whose other cores are busy, most of the spread between rounds is time spent
waiting for a core, which CPU time leaves out (the contenders run on one thread).

Run: ``python benchmarks/overhead.py --rounds 10 --out benchmarks/overhead.md``, or
``python benchmarks/overhead.py --stream ewc --rounds 5``, or
``python benchmarks/overhead.py --eval-parts --rounds 20``.
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
from typing import Any

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
    has_mnist,
    load_mnist,
    now,
    parse_class_order,
    single_thread,
    split_by_class,
    use_clock,
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
            start = now()
            L.Trainer(logger=False, **CL_KWARGS).fit(module, datamodule=self.bench.train_stream[0])
            return now() - start
        plain = PlainModule(mlp(), log=contender.endswith("logged"))
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.generator)]
        loader = Gathers(self.train_x, self.train_y, list(order.split(BATCH_SIZE)))
        start = now()
        L.Trainer(**PLAIN_KWARGS).fit(plain, train_dataloaders=loader)
        return now() - start

    def eval(self, contender: str) -> float:
        """Seconds of one ``trainer.test`` of the whole test stream."""
        if contender == "lightning_cl":
            start = now()
            L.Trainer(logger=False, **CL_KWARGS).test(
                self.module, datamodule=self.bench.test_stream, verbose=False
            )
            return now() - start
        plain = self.plain[contender.endswith("logged")]
        plain.correct, plain.seen, plain.loss_sum = {}, {}, {}
        start = now()
        L.Trainer(**PLAIN_KWARGS).test(plain, dataloaders=self.test_loaders, verbose=False)
        return now() - start


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
            for c in rotation(r):
                times[phase][c].append(run(c))
    return times


def rotation(r: int) -> tuple[str, ...]:
    """The contenders in round ``r``'s order: :data:`CONTENDERS` rotated by ``r``."""
    k = r % len(CONTENDERS)
    return CONTENDERS[k:] + CONTENDERS[:k]


def run_stream(contender: str, method: str, data_root: str | None, fraction: float) -> Any:
    """One whole stream of ``method`` through ``contender``'s own ``run``: its ``RunRecord``."""
    import contender_lightning_cl
    import contender_plain_lightning

    order = parse_class_order(None)
    if contender == "lightning_cl":
        return contender_lightning_cl.run("loop", method, data_root, fraction, order)
    log = contender.endswith("logged")
    return contender_plain_lightning.run(method, data_root, fraction, order, log=log)


def measure_stream(
    method: str, data_root: str | None, fraction: float, rounds: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float], str]:
    """Whole-stream train and eval seconds per round, ``{phase: {contender: [...]}}``, for ``method``.

    Also returns each contender's average accuracy (the same work: the contenders' streams are
    seeded alike) and the data source. The contenders' order rotates per round; one warm-up round.
    """

    def run(contender: str) -> tuple[float, float, float, str]:
        rec = run_stream(contender, method, data_root, fraction)
        return rec.train_s, rec.eval_s, rec.average_accuracy, rec.data_source

    times: dict[str, dict[str, list[float]]] = {p: {c: [] for c in CONTENDERS} for p in ("train", "eval")}
    accuracy: dict[str, float] = {}
    source = ""
    for c in CONTENDERS:  # warm-up, not counted
        run(c)
    for r in range(rounds):
        for c in rotation(r):
            train_s, eval_s, accuracy[c], source = run(c)
            times["train"][c].append(train_s)
            times["eval"][c].append(eval_s)
    return times, accuracy, source


EVAL_PARTS = (
    "plain_lightning",
    "plain_lightning, datamodule",
    "plain_lightning-logged",
    "plain_lightning-logged, datamodule",
    "lightning_cl",
    "lightning_cl, float images",
    "lightning_cl, no self.log",
    "lightning_cl, float images, no self.log",
)


def float_benchmark(work: Workload, data_root: str | None, fraction: float) -> Any:
    """The workload's split with every image normalised to ``float32`` up front (no transform)."""
    from lightning_cl.data import LoaderSettings, TensorClassificationDataset
    from lightning_cl.data.scenarios import class_incremental

    data = load_mnist(data_root, fraction)
    train = TensorClassificationDataset(
        ((data.train_x.float() / 255.0 - MEAN) / STD).contiguous(), data.train_y
    )
    test = TensorClassificationDataset(((data.test_x.float() / 255.0 - MEAN) / STD).contiguous(), data.test_y)
    return class_incremental(
        train,
        test,
        N_EXPERIENCES,
        class_order=parse_class_order(None),
        loader=LoaderSettings(batch_size=BATCH_SIZE),
        name="SplitMNIST",
    )


def measure_eval_parts(
    work: Workload, data_root: str | None, fraction: float, rounds: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of one ``trainer.test`` per variant of :data:`EVAL_PARTS`, and each one's stream accuracy.

    The variants without ``self.log`` patch ``LightningModule.log`` to a no-op for the one call
    and restore it; their accuracy is read from the module's own results instead.
    """
    floats = float_benchmark(work, data_root, fraction)
    real_log = L.LightningModule.log

    class Loaders(L.LightningDataModule):
        """The plain contender's 5 test loaders served by a datamodule, as lightning_cl's stream is."""

        def test_dataloader(self) -> Any:
            return work.test_loaders

    def plain_datamodule(logged: bool) -> float:
        plain = work.plain[logged]
        plain.correct, plain.seen, plain.loss_sum = {}, {}, {}
        start = now()
        L.Trainer(**PLAIN_KWARGS).test(plain, datamodule=Loaders(), verbose=False)
        return now() - start

    def no_log(self: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        return None

    def ours(bench: Any, log: bool) -> float:
        L.LightningModule.log = real_log if log else no_log  # type: ignore[method-assign]
        try:
            start = now()
            L.Trainer(logger=False, **CL_KWARGS).test(
                work.module, datamodule=bench.test_stream, verbose=False
            )
            return now() - start
        finally:
            L.LightningModule.log = real_log  # type: ignore[method-assign]

    runs: dict[str, Callable[[], float]] = {
        "plain_lightning": lambda: work.eval("plain_lightning"),
        "plain_lightning, datamodule": lambda: plain_datamodule(False),
        "plain_lightning-logged": lambda: work.eval("plain_lightning-logged"),
        "plain_lightning-logged, datamodule": lambda: plain_datamodule(True),
        "lightning_cl": lambda: ours(work.bench, True),
        "lightning_cl, float images": lambda: ours(floats, True),
        "lightning_cl, no self.log": lambda: ours(work.bench, False),
        "lightning_cl, float images, no self.log": lambda: ours(floats, False),
    }
    accuracy: dict[str, float] = {}
    for name, run in runs.items():  # warm-up, and the accuracy each variant measures
        run()
        if name.startswith("plain"):
            plain = work.plain[name.startswith("plain_lightning-logged")]
            per_experience = [plain.correct[j] / plain.seen[j] for j in sorted(plain.seen)]
        else:  # the row this evaluation recorded (the model was trained on experience 0)
            per_experience = [float(v) for v in work.module.results.accuracy_matrix[0]]
        accuracy[name] = sum(per_experience) / len(per_experience)
    times: dict[str, list[float]] = {n: [] for n in EVAL_PARTS}
    for r in range(rounds):
        order = EVAL_PARTS[r % len(EVAL_PARTS) :] + EVAL_PARTS[: r % len(EVAL_PARTS)]
        for name in order:
            times[name].append(runs[name]())
    return times, accuracy


_CLOCK = ["wall"]  # the clock of this run (``--clock``), named in the reports


def _clock_option() -> str:
    return "" if _CLOCK[0] == "wall" else f" --clock {_CLOCK[0]}"


def _clock_words() -> str:
    return "wall-clock times" if _CLOCK[0] == "wall" else "CPU times of the process (`time.process_time`)"


def report_eval_parts(
    times: dict[str, list[float]], rounds: int, source: str, accuracy: dict[str, float]
) -> str:
    """The markdown table of :func:`measure_eval_parts`: per variant, minimum, median, ratios to plain."""
    base = times["plain_lightning"]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# lightning_cl's evaluation taken apart, one process",
        "",
        f"Generated by `python benchmarks/overhead.py --eval-parts --rounds {rounds}{_clock_option()}` on "
        f"{stamp}; data: {source} MNIST; one torch thread; {_clock_words()}; one `trainer.test` of "
        "the 5 SplitMNIST test experiences with one trained model (Trainer construction included); "
        "ratios of minima, medians in brackets.",
        "",
        "Same work: mean accuracy over the 5 test experiences "
        + ", ".join(f"{n} {a:.6f}" for n, a in accuracy.items())
        + ".",
        "",
        "| variant | min (ms) | median (ms) | / plain Lightning | min - plain Lightning's min (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in times.items():
        lines.append(
            f"| {name} | {1000 * min(t):.1f} | {1000 * statistics.median(t):.1f} | "
            f"{min(t) / min(base):.3f}x ({statistics.median(t) / statistics.median(base):.3f}x) | "
            f"{1000 * (min(t) - min(base)):+.1f} |"
        )
    return "\n".join(lines) + "\n"


def report(
    times: dict[str, dict[str, list[float]]],
    rounds: int,
    source: str,
    accuracies: tuple[float, float] | None = None,
    stream: str | None = None,
    stream_accuracy: dict[str, float] | None = None,
) -> str:
    """The markdown table: minima, medians and the ratios against plain Lightning."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if stream is None:
        assert accuracies is not None
        lines = [
            "# lightning_cl against plain Lightning, one process",
            "",
            f"Generated by `python benchmarks/overhead.py --rounds {rounds}{_clock_option()}` on {stamp}; "
            f"data: {source} MNIST; one torch thread; {_clock_words()}; train = `trainer.fit` of the "
            "first SplitMNIST experience (a fresh "
            "model), eval = `trainer.test` of the 5 test experiences; ratios of minima, medians in brackets.",
            "",
            f"Same work: the trained model's stream accuracy is {accuracies[0]:.6f} by lightning_cl and "
            f"{accuracies[1]:.6f} by the plain module.",
        ]
    else:
        assert stream_accuracy is not None
        same = ", ".join(f"{c} {a:.4f}" for c, a in stream_accuracy.items())
        lines = [
            f"# lightning_cl against plain Lightning, one process: the whole stream, {stream}",
            "",
            f"Generated by `python benchmarks/overhead.py --stream {stream} --rounds {rounds}"
            f"{_clock_option()}` on {stamp}; data: {source} MNIST; one torch thread; {_clock_words()}; "
            "the suite's workload (SplitMNIST, 5 experiences, "
            "the test stream after each); train and eval summed over the stream; ratios of minima, "
            "medians in brackets.",
            "",
            f"Same work: average accuracy {same}.",
        ]
    lines += [
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


OWNERS = (
    "lightning_cl",
    "torchmetrics",
    "Lightning",
    "torch (Python)",
    "torch kernels",
    "contender",
    "Python",
)
"""Where :func:`attribute` puts a function's own time: by the file it is defined in; a built-in
that is no torch kernel (``isinstance``, ``dict.get``, ...) goes to the owners of its callers."""

_TORCH_BUILTIN = ("torch", "Tensor")


def _owner(filename: str, name: str) -> str | None:
    """The owner of a profiled function, or ``None`` for a built-in that goes to its callers."""
    path = filename.replace("\\", "/")
    if filename == "~":
        return "torch kernels" if any(t in name for t in _TORCH_BUILTIN) else None
    if "/lightning_cl/" in path:
        return "lightning_cl"
    if "/torchmetrics/" in path:
        return "torchmetrics"
    if "/lightning/" in path or "/lightning_utilities/" in path or "/lightning_fabric/" in path:
        return "Lightning"
    if "/torch/" in path or "/torchvision/" in path:
        return "torch (Python)"
    if "/benchmarks/" in path:
        return "contender"
    return "Python"


def attribute_stats(stats: pstats.Stats, calls: bool = False) -> dict[str, float]:
    """Own time (seconds, as profiled), or with ``calls`` the number of calls, summed by :data:`OWNERS`.

    A built-in that is no torch kernel is split among its callers' owners in proportion to the
    own time each caller spent calling it (its calls: in proportion to the calls from each; one
    level up; a built-in called only by built-ins goes to "Python").
    """
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals = dict.fromkeys(OWNERS, 0.0)
    for (filename, _, name), (_, ncalls, tottime, _, callers) in table.items():
        owner = _owner(filename, name)
        amount = float(ncalls) if calls else tottime
        if owner is not None:
            totals[owner] += amount
            continue
        shares: dict[str, float] = {}
        for (cfile, _, cname), caller_stats in callers.items():
            to = _owner(cfile, cname) or "Python"
            shares[to] = shares.get(to, 0.0) + float(caller_stats[0] if calls else caller_stats[2])
        weight = sum(shares.values())
        if weight <= 0:
            totals["Python"] += amount
            continue
        for o, w in shares.items():
            totals[o] += amount * w / weight
    return totals


def attribute(
    methods: list[str], data_root: str | None, fraction: float, rounds: int
) -> dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]]:
    """``{method: {phase: {contender: {"time"|"calls": {owner: per stream}}}}}``, profiled.

    Each contender's own ``run`` (the suite's whole stream) under ``cProfile``, one profiler per
    contender and phase, switched on by the contender's :class:`~common.Stopwatch`; after one
    unprofiled warm-up each, ``rounds`` rounds with the contenders alternating (the order
    rotating), so a slow spell of the machine falls on all of them. Own time (seconds) and calls
    (function calls, which the machine's speed does not change) summed by owner
    (:func:`attribute_stats`), divided by ``rounds``. Profiling slows Python code more than torch
    kernels, so lightning_cl's and Lightning's shares of the time are upper bounds of their
    unprofiled shares.
    """
    import common

    out: dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]] = {}
    for method in methods:
        profilers = {c: {"train": cProfile.Profile(), "eval": cProfile.Profile()} for c in CONTENDERS}
        for c in CONTENDERS:  # warm-up, not profiled
            run_stream(c, method, data_root, fraction)
        for r in range(rounds):
            for c in rotation(r):
                common.PHASE_WATCHERS.update(profilers[c])
                try:
                    run_stream(c, method, data_root, fraction)
                finally:
                    common.PHASE_WATCHERS.clear()
        out[method] = {"train": {}, "eval": {}}
        for c in CONTENDERS:
            for phase, prof in profilers[c].items():
                stats = pstats.Stats(prof)
                out[method][phase][c] = {
                    "time": {o: t / rounds for o, t in attribute_stats(stats).items()},
                    "calls": {o: n / rounds for o, n in attribute_stats(stats, calls=True).items()},
                }
    return out


def report_attribution(
    found: dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]], rounds: int, source: str
) -> str:
    """The markdown tables of :func:`attribute`: own time and calls by owner, lightning_cl minus plain."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    methods = " ".join(found)
    lines = [
        "# Where the time goes: lightning_cl and plain Lightning under cProfile",
        "",
        f"Generated by `python benchmarks/overhead.py --attribute {methods} --rounds {rounds}` on {stamp}; "
        f"data: {source} MNIST; one torch thread; the suite's whole stream (SplitMNIST, 5 experiences, "
        "the test stream after each) through each contender's own `run`, the contenders alternating; "
        "per stream, each function's own time (profiled seconds) and calls (thousands), by the "
        "package that defines it (torch kernels: torch's C functions and tensor methods; other "
        "built-ins go to their callers' packages). Profiling slows Python more than kernels: the "
        "Python shares of the time are upper bounds; the calls do not depend on the machine's speed. "
        "The last column is lightning_cl minus plain Lightning, unlogged (logged): a positive number "
        "is work lightning_cl adds.",
        "",
    ]
    for method, phases in found.items():
        for phase, by in phases.items():
            ours, plain, logged = (by[c] for c in CONTENDERS)
            lines += [
                f"## {method}, {phase}",
                "",
                "| owner | lightning_cl: s, k calls | plain Lightning | plain, logged "
                "| lightning_cl - plain: s, k calls |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
            for owner in [*OWNERS, "total"]:

                def pick(d: dict[str, dict[str, float]], kind: str, o: str = owner) -> float:
                    return sum(d[kind].values()) if o == "total" else d[kind][o]

                t = [pick(d, "time") for d in (ours, plain, logged)]
                n = [pick(d, "calls") / 1000 for d in (ours, plain, logged)]
                lines.append(
                    f"| {owner} | {t[0]:.3f}, {n[0]:.1f} | {t[1]:.3f}, {n[1]:.1f} | {t[2]:.3f}, {n[2]:.1f} | "
                    f"{t[0] - t[1]:+.3f} ({t[0] - t[2]:+.3f}), {n[0] - n[1]:+.1f} ({n[0] - n[2]:+.1f}) |"
                )
            own = ours["time"]["lightning_cl"] + ours["time"]["torchmetrics"]
            total = sum(ours["time"].values())
            lines += [
                "",
                f"lightning_cl's and torchmetrics' own code: {own:.3f} s, "
                f"{100 * own / max(1e-12, total):.1f}% of lightning_cl's profiled {phase}; Lightning's own "
                f"code: {ours['time']['Lightning']:.3f} s and {ours['calls']['Lightning'] / 1000:.1f}k "
                f"calls against plain Lightning's {plain['time']['Lightning']:.3f} s and "
                f"{plain['calls']['Lightning'] / 1000:.1f}k ({logged['time']['Lightning']:.3f} s and "
                f"{logged['calls']['Lightning'] / 1000:.1f}k logged).",
                "",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure (or profile) and print the table; ``--out`` also writes it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the three contenders (default 10)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of each MNIST split")
    parser.add_argument("--data", default=None, help="folder holding MNIST/raw (default: $LIGHTNING_CL_DATA)")
    parser.add_argument("--out", default=None, help="markdown report to write")
    parser.add_argument("--profile", action="store_true", help="profile lightning_cl instead of timing")
    parser.add_argument(
        "--eval-parts",
        action="store_true",
        help="take the evaluation apart: float images, Lightning's self.log replaced by a no-op",
    )
    parser.add_argument(
        "--stream",
        choices=("naive", "replay", "ewc"),
        default=None,
        help="time the suite's whole stream with this method instead of one fit and one test",
    )
    parser.add_argument(
        "--attribute",
        nargs="+",
        choices=("naive", "replay", "ewc"),
        default=None,
        metavar="METHOD",
        help="profile the whole stream of these methods (naive, replay, ewc) for every contender and "
        "sum each phase's own time by package (lightning_cl, torchmetrics, Lightning, torch, ...)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what is timed: wall time (default) or the process's CPU time, which leaves out the "
        "waits for a core that make most of the spread on a shared machine",
    )
    args = parser.parse_args(argv)
    use_clock(args.clock)
    _CLOCK[0] = args.clock
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if sum([args.stream is not None, args.profile, args.eval_parts, args.attribute is not None]) > 1:
        parser.error("--profile, --stream, --eval-parts and --attribute are separate runs; give one of them")
    single_thread()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(1, verbose=False)
    root = args.data if args.data is not None else default_data_root()
    if args.attribute is not None:
        found = attribute(
            list(dict.fromkeys(args.attribute)),
            None if root is None else str(root),
            args.fraction,
            args.rounds,
        )
        source = "real" if has_mnist(root) else "synthetic"
        text = report_attribution(found, args.rounds, source)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return 0
    if args.stream is not None:
        times, accuracy, source = measure_stream(
            args.stream, None if root is None else str(root), args.fraction, args.rounds
        )
        text = report(times, args.rounds, source, stream=args.stream, stream_accuracy=accuracy)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return 0
    work = Workload(None if root is None else str(root), args.fraction)
    if args.eval_parts:
        times_parts, accuracy = measure_eval_parts(
            work, None if root is None else str(root), args.fraction, args.rounds
        )
        text = report_eval_parts(times_parts, args.rounds, work.source, accuracy)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return 0
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
