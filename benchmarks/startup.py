"""Start-up: import and first training batch, lightning_cl versus plain Lightning, in a fresh process.

``--variant lightning_cl``: ``import lightning_cl``, ``SplitMNIST`` (or the same split of the
loaded tensors), ``ContinualModule(MLP())``, one ``L.Trainer`` fit of the first experience
stopped after its first batch. ``--variant lightning``: ``import lightning``, the first
experience's tensors in a ``TensorDataset`` and ``DataLoader`` (batch 128, shuffled), a trivial
``LightningModule`` around the same MLP, the same Trainer settings. Both load MNIST through
torchvision. The clock starts before the first import; the record holds the time after the
imports and after the first training batch.

Run: ``python benchmarks/startup.py --variant lightning_cl --data ../shared/data``.
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

TRAINER_KWARGS: dict[str, Any] = dict(
    max_steps=1,
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,
    accelerator="cpu",
)


def _first_batch_timer(marks: dict[str, float]) -> Any:
    import lightning as L

    class FirstBatch(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            marks.setdefault("first_batch_s", time.perf_counter() - _START)

    return FirstBatch()


def run_lightning_cl(data_root: str | None, fraction: float, marks: dict[str, float]) -> None:
    """lightning_cl's path to the first training batch."""
    import lightning as L

    import lightning_cl  # noqa: F401

    marks["import_s"] = time.perf_counter() - _START
    from common import BATCH_SIZE, N_EXPERIENCES, SEED, class_order_for_seed, has_mnist, load_mnist

    from lightning_cl import MLP, ContinualModule, SplitMNIST
    from lightning_cl.data import LoaderSettings

    if fraction >= 1.0 and has_mnist(data_root):
        bench = SplitMNIST(
            root=str(data_root),
            n_experiences=N_EXPERIENCES,
            seed=SEED,
            loader=LoaderSettings(batch_size=BATCH_SIZE),
        )
    else:
        from contender_lightning_cl import batch_transform

        from lightning_cl.data import TensorClassificationDataset
        from lightning_cl.data.scenarios import class_incremental

        data = load_mnist(data_root, fraction)
        train = TensorClassificationDataset(data.train_x, data.train_y, transform=batch_transform())
        test = TensorClassificationDataset(data.test_x, data.test_y, transform=batch_transform())
        bench = class_incremental(
            train,
            test,
            N_EXPERIENCES,
            class_order=class_order_for_seed(SEED),
            loader=LoaderSettings(batch_size=BATCH_SIZE),
        )
    marks["data_s"] = time.perf_counter() - _START
    module = ContinualModule(MLP())
    trainer = L.Trainer(callbacks=[_first_batch_timer(marks)], **TRAINER_KWARGS)
    trainer.fit(module, datamodule=bench.train_stream[0])


def run_lightning(data_root: str | None, fraction: float, marks: dict[str, float]) -> None:
    """Plain Lightning's path to the first training batch: a trivial module on the same data."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    marks["import_s"] = time.perf_counter() - _START
    from common import BATCH_SIZE, LR, MEAN, MOMENTUM, N_EXPERIENCES, SEED, STD, load_mnist, split_by_class
    from common import class_order_for_seed as order

    data = load_mnist(data_root, fraction)
    first = split_by_class(data.train_y, order(SEED), N_EXPERIENCES)[0]
    x = (data.train_x[first].float() / 255.0 - MEAN) / STD
    loader = DataLoader(TensorDataset(x, data.train_y[first]), batch_size=BATCH_SIZE, shuffle=True)
    marks["data_s"] = time.perf_counter() - _START

    class Trivial(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Sequential(
                torch.nn.Flatten(),
                torch.nn.Linear(784, 512),
                torch.nn.ReLU(),
                torch.nn.Dropout(0.5),
                torch.nn.Linear(512, 10),
            )

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    trainer = L.Trainer(callbacks=[_first_batch_timer(marks)], **TRAINER_KWARGS)
    trainer.fit(Trivial(), train_dataloaders=loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("lightning_cl", "lightning"), required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from common import default_data_root

    root = args.data or default_data_root()
    marks: dict[str, float] = {}
    runner = run_lightning_cl if args.variant == "lightning_cl" else run_lightning
    runner(str(root) if root else None, args.fraction, marks)
    text = json.dumps({"variant": args.variant, **marks})
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
