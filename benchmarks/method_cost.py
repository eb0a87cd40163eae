"""What each CL method costs in training time, against fine-tuning, on the same stream.

PermutedMNIST (real files, 5 permutations, 1 epoch each, MLP 784-512-10, SGD lr 0.01 momentum
0.9, batches of 128; the ``configs/permuted_mnist_*.yaml`` settings), trained with ``fit_stream``
once per method and round, the methods in an order that rotates between rounds, one torch thread.
Training time is measured from ``on_fit_start`` to ``on_fit_end`` of every experience (the
methods' end-of-experience work, such as EWC's Fisher or MAS's importances, included);
evaluation is the same for all and left out. The report gives the median training seconds,
the ratio to fine-tuning, and the average accuracy and forgetting of the last round.

Run: ``python benchmarks/method_cost.py --root /path/holding/MNIST [--rounds 3]``; it writes
``benchmarks/method_cost.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_cl.data import Benchmark, LoaderSettings, PermutedMNIST, SubsampledBenchmark
from lightning_cl.methods import (
    AGEM,
    AR1,
    DER,
    ERACE,
    ERAML,
    EWC,
    GEM,
    LFL,
    MAS,
    MER,
    MIR,
    PNN,
    RAR,
    SCR,
    SI,
    BiC,
    CoPE,
    CWRStar,
    ExpertGate,
    FromScratch,
    GDumb,
    GenerativeReplay,
    GSSGreedy,
    HerdingSelection,
    ICaRL,
    LaMAML,
    LwF,
    PackNet,
    Replay,
    RWalk,
    StreamingLDA,
)
from lightning_cl.models import MLP, ContinualModule, ExpertGateNetwork, ProgressiveNetwork
from lightning_cl.training import fit_stream

METHODS: dict[str, Callable[[], list[L.Callback]]] = {
    "none (fine-tuning)": lambda: [],
    "Replay(mem_size=500)": lambda: [Replay(mem_size=500)],
    "Replay(500, online reservoir)": lambda: [Replay(mem_size=500, policy="reservoir", online=True)],
    "Replay(500, class_balanced, herding)": lambda: [
        Replay(mem_size=500, policy="class_balanced", selection=HerdingSelection())
    ],
    "MIR(500, subsample=50, mem_batch_size=10)": lambda: [MIR(mem_size=500, subsample=50, mem_batch_size=10)],
    "GSSGreedy(500, n_reference=10)": lambda: [GSSGreedy(mem_size=500, n_reference=10, mem_batch_size=10)],
    "DER(500, alpha=0.1, beta=0.5) (DER++)": lambda: [DER(mem_size=500, alpha=0.1, beta=0.5)],
    "EWC(ewc_lambda=100)": lambda: [EWC(ewc_lambda=100.0)],
    "LwF(alpha=1.0)": lambda: [LwF(alpha=1.0)],
    "SI(si_lambda=0.1)": lambda: [SI(si_lambda=0.1)],
    "MAS(lambda_reg=0.1)": lambda: [MAS(lambda_reg=0.1)],
    "AGEM(250, sample_size=256)": lambda: [AGEM(patterns_per_experience=250, sample_size=256)],
    "GEM(256, memory_strength=0.5)": lambda: [GEM(patterns_per_experience=256, memory_strength=0.5)],
    "RWalk(ewc_lambda=10)": lambda: [RWalk(ewc_lambda=10.0, ewc_alpha=0.9, delta_t=10)],
    "LFL(lambda_e=1.0)": lambda: [LFL(lambda_e=1.0)],
    "FromScratch()": lambda: [FromScratch()],
    "CWRStar()": lambda: [CWRStar()],
    "AR1(mem_size=1500)": lambda: [AR1(latent_layer="features.1", mem_size=1500)],
    "PNN() (task labels)": lambda: [PNN()],
    "PackNet(0.5, post_prune_epochs=0) (task labels)": lambda: [PackNet(0.5, post_prune_epochs=0)],
    "StreamingLDA()": lambda: [StreamingLDA()],
    "ExpertGate() (task labels)": lambda: [ExpertGate()],
    "GDumb(mem_size=500)": lambda: [GDumb(mem_size=500)],
    "ERACE(mem_size=500)": lambda: [ERACE(mem_size=500)],
    "ERAML(mem_size=500)": lambda: [ERAML(mem_size=500)],
    "Replay(500) + RAR(steps=5)": lambda: [
        Replay(mem_size=500),
        RAR(epsilon=0.3, step_size=0.075, steps=5),
    ],
    "ICaRL(mem_size=500)": lambda: [ICaRL(mem_size=500)],
    "BiC(mem_size=500)": lambda: [BiC(mem_size=500)],
    "SCR(mem_size=500)": lambda: [SCR(mem_size=500)],
    "GenerativeReplay(generator_epochs=20)": lambda: [GenerativeReplay(generator_epochs=20)],
    "CoPE(mem_size=500)": lambda: [CoPE(mem_size=500)],
    "MER(500, n_batches=2, inner_batch_size=16)": lambda: [
        MER(mem_size=500, mem_batch_size=32, n_batches=2, inner_batch_size=16, beta=0.5)
    ],
    "LaMAML(500, n_glances=2)": lambda: [LaMAML(mem_size=500, mem_batch_size=32, n_glances=2)],
}
# Methods that need task labels (experience i has task label i) and a model of their own.
TASK_INCREMENTAL = {
    "PNN() (task labels)",
    "PackNet(0.5, post_prune_epochs=0) (task labels)",
    "ExpertGate() (task labels)",
}
MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "PNN() (task labels)": lambda: ProgressiveNetwork(input_size=784, hidden_size=512, hidden_layers=2),
    "PackNet(0.5, post_prune_epochs=0) (task labels)": lambda: MLP(
        input_size=784, hidden_size=512, drop_rate=0.0, head="multihead"
    ),
    "ExpertGate() (task labels)": lambda: ExpertGateNetwork(input_size=784, hidden_size=512, code_size=100),
}
if importlib.util.find_spec("timm") is not None:  # L2P prompts a timm ViT: measured where timm is installed
    from lightning_cl.methods import L2P
    from lightning_cl.models import PromptedViT

    # A small random ViT for 28x28 digits (16 patches of 7x7, width 64, 2 blocks), not the paper's ViT-B/16.
    METHODS["L2P() (small random ViT)"] = lambda: [L2P()]
    MODELS["L2P() (small random ViT)"] = lambda: PromptedViT(
        "vit_tiny_patch16_224",
        pretrained=False,
        vit_kwargs=dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=2, num_heads=2),
    )


class FitClock(L.Callback):
    """Sums the wall time of every fit (training and the methods' end-of-experience work)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._start


def run(
    root: str,
    make: Callable[[], list[L.Callback]],
    model: Callable[[], torch.nn.Module] | None = None,
    task_labels: bool = False,
    samples_per_experience: int | None = None,
) -> tuple[float, Any]:
    L.seed_everything(1, verbose=False)
    bench: Benchmark = PermutedMNIST(
        root, n_experiences=5, seed=1, task_labels=task_labels, loader=LoaderSettings(batch_size=128)
    )
    if samples_per_experience is not None:
        bench = SubsampledBenchmark(bench, samples_per_experience=samples_per_experience, seed=1)
    module = ContinualModule(
        model() if model else MLP(num_classes=10, input_size=784, hidden_size=512, drop_rate=0.0),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9),
    )
    clock = FitClock()
    # The clock goes last: its on_fit_end runs after the methods' end-of-experience work.
    results = fit_stream(
        module,
        bench,
        callbacks=[*make(), clock],
        logger=False,
        trainer_kwargs=dict(
            max_epochs=1, accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False
        ),
    )
    return clock.seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("LIGHTNING_CL_DATA", "data"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("method_cost.md")))
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only the methods whose name starts with one of these"
    )
    parser.add_argument(
        "--samples-per-experience",
        type=int,
        default=None,
        help="train on this many random samples of each experience (all 60,000 by default; the test "
        "stream stays whole): a shorter run whose ratios keep the per-step costs, while fixed "
        "per-experience costs weigh more",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    names = list(METHODS)
    if args.only:  # fine-tuning, the reference, always runs
        names = [names[0]] + [n for n in names[1:] if any(n.startswith(o) for o in args.only)]
    times: dict[str, list[float]] = {n: [] for n in names}
    last: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            try:
                seconds, results = run(
                    args.root,
                    METHODS[name],
                    MODELS.get(name),
                    name in TASK_INCREMENTAL,
                    args.samples_per_experience,
                )
            except Exception as error:  # reported in the table; the other methods go on
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                print(f"round {r}: {name}: FAILED {failed[name]}", flush=True)
                continue
            times[name].append(seconds)
            last[name] = results
            print(f"round {r}: {name}: {seconds:.1f} s, avg acc {results.average_accuracy:.3f}", flush=True)
    if names[0] in failed:
        raise SystemExit(f"the reference {names[0]} failed ({failed[names[0]]}): no ratio to report")
    base = statistics.median(times[names[0]])
    rows = [
        f"| `{n}` | {statistics.median(times[n]):.1f} | {statistics.median(times[n]) / base:.2f}x "
        f"| {last[n].average_accuracy:.3f} | {last[n].forgetting:.3f} |"
        if n not in failed
        else f"| `{n}` | failed | - | - | - |"
        for n in names
    ]
    notes = "".join(f"\n- `{n}` failed: {message}" for n, message in failed.items())
    samples = (
        "all 60,000 training samples"
        if args.samples_per_experience is None
        else f"{args.samples_per_experience:,} random training samples"
    )
    text = (
        "# What each method costs: training time against fine-tuning\n\n"
        f"PermutedMNIST (real files, 5 permutations, {samples} each, 1 epoch), MLP 784-512-10, SGD lr 0.01 "
        "momentum 0.9,\nbatches of 128, seed 1, one torch thread, CPU; "
        f"{args.rounds} rounds in rotating order, median training seconds\n"
        "(fit start to fit end of every experience, end-of-experience work included, evaluation "
        "left out).\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. "
        "Written by `benchmarks/method_cost.py`.\n\n"
        "| method | training (s) | vs fine-tuning | average accuracy | forgetting |\n"
        "| --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + "\n"
        + (f"\nFailed runs:{notes}\n" if notes else "")
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
