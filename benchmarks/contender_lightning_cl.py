"""Contenders 2 and 3: lightning_cl through the plain Lightning loop and through ``fit_stream``.

``--runner loop``: the README's loop, a new ``L.Trainer`` per experience (no logger, progress
bar, model summary or checkpointing; CPU), ``trainer.fit`` on the experience, ``trainer.test`` on
the whole test stream. ``--runner fit_stream``: the same through :func:`lightning_cl.fit_stream`
with ``logger=False`` and the loop's Trainer settings (no progress bar, no per-experience
checkpoints); its train and eval times come from
a callback that brackets each fit and test between the ``setup`` and ``teardown`` hooks.

Run: ``python benchmarks/contender_lightning_cl.py --runner loop --method ewc --data ../shared/data``.
"""

from __future__ import annotations

import argparse
import time

_START = time.perf_counter()

import logging  # noqa: E402
import warnings  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    BATCH_SIZE,
    EWC_LAMBDA,
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
    default_data_root,
    has_mnist,
    load_mnist,
    now,
    parse_class_order,
    single_thread,
    torch_versions,
    write_record,
)
from torch.optim import SGD  # noqa: E402

import lightning_cl  # noqa: E402
from lightning_cl import EWC, MLP, Benchmark, ContinualModule, Replay, SplitMNIST, fit_stream  # noqa: E402
from lightning_cl.data import LoaderSettings, TensorClassificationDataset  # noqa: E402
from lightning_cl.data.scenarios import class_incremental  # noqa: E402

TRAINER_KWARGS: dict[str, Any] = dict(
    max_epochs=1,
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,
    accelerator="cpu",
)


class StageTimer(L.Callback):
    """Adds the time from ``setup`` to ``teardown`` of every fit and test to a :class:`Stopwatch`
    (on its clock, :func:`common.now`)."""

    def __init__(self, clock: Stopwatch):
        self.clock = clock
        self._started: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._started[stage] = now()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.clock.add("train" if stage == "fit" else "eval", now() - self._started.pop(stage))


def batch_transform() -> Any:
    """``uint8`` to normalised ``float32`` on whole batches, as ``SplitMNIST`` does."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize((MEAN,), (STD,))])


def benchmark(data_root: str | None, fraction: float, class_order: list[int]) -> tuple[Benchmark, str]:
    """``SplitMNIST`` on the full real data; otherwise the same split built by ``class_incremental``."""
    if fraction >= 1.0 and has_mnist(data_root):
        bench = SplitMNIST(
            root=str(data_root),
            n_experiences=N_EXPERIENCES,
            seed=SEED,
            loader=LoaderSettings(batch_size=BATCH_SIZE),
        )
        if bench.class_order != class_order:
            raise ValueError(f"SplitMNIST's class order {bench.class_order} differs from {class_order}")
        return bench, "real"
    data = load_mnist(data_root, fraction)
    train = TensorClassificationDataset(data.train_x, data.train_y, transform=batch_transform())
    test = TensorClassificationDataset(data.test_x, data.test_y, transform=batch_transform())
    bench = class_incremental(
        train,
        test,
        N_EXPERIENCES,
        class_order=class_order,
        loader=LoaderSettings(batch_size=BATCH_SIZE),
        name="SplitMNIST",
    )
    return bench, data.source


def callbacks_for(method: str) -> list[L.Callback]:
    """The CL callbacks of ``method``."""
    if method == "replay":
        return [Replay(mem_size=MEM_SIZE)]
    if method == "ewc":
        return [EWC(ewc_lambda=EWC_LAMBDA)]
    return []


def run(
    runner: str, method: str, data_root: str | None, fraction: float, class_order: list[int]
) -> RunRecord:
    """Train and evaluate the stream with lightning_cl; return what was measured."""
    single_thread()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(SEED, verbose=False)
    bench, source = benchmark(data_root, fraction, class_order)
    module = ContinualModule(MLP(), optimizer=partial(SGD, lr=LR, momentum=MOMENTUM))
    callbacks = callbacks_for(method)
    setup_s = time.perf_counter() - _START

    clock = Stopwatch()
    start = time.perf_counter()
    if runner == "loop":
        for experience in bench.train_stream:
            with clock.phase("train"):
                trainer = L.Trainer(callbacks=callbacks, logger=False, **TRAINER_KWARGS)
                trainer.fit(module, datamodule=experience)
            with clock.phase("eval"):
                trainer.test(module, datamodule=bench.test_stream, verbose=False)
    else:
        # The loop's settings, checkpoints included: fit_stream saves one per experience by default,
        # which neither the loop nor the hand-written contender does.
        fit_stream(
            module,
            bench,
            callbacks=[StageTimer(clock), *callbacks],
            trainer_kwargs=TRAINER_KWARGS,
            logger=False,
        )
    total = time.perf_counter() - start
    results = module.results
    return RunRecord(
        contender=f"lightning_cl-{runner}",
        method=method,
        total_s=total,
        train_s=clock["train"],
        eval_s=clock["eval"],
        setup_s=setup_s,
        stream_samples=sum(len(e) for e in bench.train_stream),
        average_accuracy=results.average_accuracy,
        accuracy_matrix=results.accuracy_matrix,
        data_source=source,
        versions={**torch_versions(), "lightning": L.__version__, "lightning_cl": lightning_cl.__version__},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner", choices=("loop", "fit_stream"), default="loop")
    add_common_arguments(parser)
    args = parser.parse_args()
    root = args.data or default_data_root()
    record = run(
        args.runner,
        args.method,
        str(root) if root else None,
        args.fraction,
        parse_class_order(args.class_order),
    )
    write_record(record, args.json)


if __name__ == "__main__":
    main()
