"""Evaluates one model on a digits stream with accuracy, loss and F1, in one process or under DDP.

    python ddp_metrics_script.py --out OUT.json [--devices 2 --strategy ddp]

The model is trained first with plain PyTorch, the same on every rank (same seed, same data),
so a DDP run and a single-process run evaluate identical weights; the test experiences have even
sizes, so the sharded loaders of 2 processes read every sample once (no padding). Each rank
writes every logged value and the results' matrices to OUT (OUT.rank<r>.json under DDP), and the
``sync_dist`` advice Lightning printed, if any, for the library's keys.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lightning_cl.data import LoaderSettings, load_digits, tensors_benchmark
from lightning_cl.models import MLP, ContinualModule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    x, y = load_digits()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    parts = []
    for classes in ([0, 1, 2], [3, 4, 5], [6, 7, 8, 9]):
        idx = torch.nonzero(torch.isin(y, torch.tensor(classes))).flatten()
        parts.append(idx)
    train = [(x[i[: len(i) // 2]], y[i[: len(i) // 2]]) for i in parts]
    # Even test sizes (and odd batch counts per rank): every sample is read once by one rank.
    test = [
        (x[i[len(i) // 2 :]][: 2 * (len(i) // 4) - 6], y[i[len(i) // 2 :]][: 2 * (len(i) // 4) - 6])
        for i in parts
    ]
    bench = tensors_benchmark(train, test, loader=LoaderSettings(batch_size=25))

    L.seed_everything(1)
    model = MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    px, py = torch.cat([train[0][0], train[1][0]]), torch.cat([train[0][1], train[1][1]])
    for _ in range(30):  # experiences 0 and 1 together, full batch: identical on every rank
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(px), py).backward()
        optimizer.step()
    module = ContinualModule(
        model,
        metrics={
            "f1": MulticlassF1Score(num_classes=10, average="macro"),
            "top2": MulticlassAccuracy(num_classes=10, top_k=2),
        },
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    # The filters in force are kept (lightning_cl's own among them): what passes them is recorded.
    with warnings.catch_warnings(record=True) as caught:
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    advice = [str(w.message) for w in caught if "sync_dist" in str(w.message)]
    values = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rank = trainer.global_rank
    report = {
        "values": values,
        "results": module.results.to_dict(),
        "sizes": [len(e) for e in bench.test_stream],
        "sync_dist_advice": advice,
    }
    out = Path(args.out)
    if args.devices > 1:
        out = out.with_suffix(f".rank{rank}.json")
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
