"""Contender: plain Lightning, the floor for anything built on Lightning.

A minimal ``LightningModule`` (one ``training_step``, one ``test_step``, a fresh SGD optimizer
per experience), a new ``L.Trainer`` per experience with the lightning_cl contender's settings
(no logger, progress bar, model summary or checkpointing; CPU), batches from a Python iterable of
index gathers on the normalised tensors, and the test stream as one loader per test experience.
Replay and EWC are the hand-written contender's (same memory, same Fisher), inside the module.
What lightning_cl costs on top of this is lightning_cl's own; what this costs on top of the
hand-written loop is Lightning's.

``--log``: the module also logs, with ``self.log``, as many values as lightning_cl does (per
training epoch: accuracy, loss, step; per test: accuracy and loss of every test experience and
of the stream, the experience, the step), so that the cost of Lightning's logging itself
(about a millisecond per key and call on this machine) is on both sides.

Run: ``python benchmarks/contender_plain_lightning.py --method replay --data ../shared/data``.
"""

from __future__ import annotations

import argparse
import time

_START = time.perf_counter()

import logging  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
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
    average_of_last_row,
    default_data_root,
    load_mnist,
    parse_class_order,
    single_thread,
    split_by_class,
    torch_versions,
    write_record,
)
from contender_handwritten import (  # noqa: E402
    ewc_penalty,
    experience_balanced,
    memory_batches,
    mlp,
    per_sample_fisher,
)
from torch import Tensor, nn  # noqa: E402

TRAINER_KWARGS: dict[str, Any] = dict(
    max_epochs=1,
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,
    logger=False,
    accelerator="cpu",
)


class Gathers:
    """Batches ``(x[i], y[i])`` for each index tensor ``i`` of ``batches``: a plain Python iterable."""

    def __init__(self, x: Tensor, y: Tensor, batches: list[Tensor]):
        self.x, self.y, self.batches = x, y, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for b in self.batches:
            yield self.x.index_select(0, b), self.y.index_select(0, b)


class PlainModule(L.LightningModule):
    """Cross-entropy (plus the EWC penalty once anchors exist); test accuracy counted per loader."""

    def __init__(self, model: nn.Module, log: bool = False):
        super().__init__()
        self.model = model
        self.log_values = log
        self.experience = 0
        self.train_correct = self.train_seen = 0
        self.train_loss = 0.0
        self.anchors: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
        self.correct: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        self.loss_sum: dict[int, float] = {}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if self.anchors:
            loss = loss + ewc_penalty(self.model, self.anchors)
        if self.log_values:
            self.train_correct += int((logits.detach().argmax(-1) == y).sum())
            self.train_seen += len(y)
            self.train_loss += float(loss.detach()) * len(y)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.log_values:
            self.log("train/acc_epoch", self.train_correct / max(1, self.train_seen))
            self.log("train/loss_epoch", self.train_loss / max(1, self.train_seen))
            self.log("step", float(self.global_step))
            self.train_correct = self.train_seen = 0
            self.train_loss = 0.0

    def on_test_epoch_end(self) -> None:
        if not self.log_values:
            return
        for j in self.correct:
            self.log(f"test/acc/exp{j}", self.correct[j] / self.seen[j], add_dataloader_idx=False)
            self.log(f"test/loss/exp{j}", self.loss_sum[j] / self.seen[j], add_dataloader_idx=False)
        self.log(
            "test/acc/stream", sum(self.correct.values()) / sum(self.seen.values()), add_dataloader_idx=False
        )
        stream_loss = sum(self.loss_sum.values()) / sum(self.seen.values())
        self.log("test/loss/stream", stream_loss, add_dataloader_idx=False)
        self.log("experience", float(self.experience), add_dataloader_idx=False)
        self.log("step", float(self.global_step), add_dataloader_idx=False)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self.model(x)
        hits = int((logits.argmax(-1) == y).sum())
        if self.log_values:
            loss = float(F.cross_entropy(logits, y, reduction="sum"))
            self.loss_sum[dataloader_idx] = self.loss_sum.get(dataloader_idx, 0.0) + loss
        self.correct[dataloader_idx] = self.correct.get(dataloader_idx, 0) + hits
        self.seen[dataloader_idx] = self.seen.get(dataloader_idx, 0) + len(y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)


def run(
    method: str, data_root: str | None, fraction: float, class_order: list[int], log: bool = False
) -> RunRecord:
    """Train and evaluate the stream with plain Lightning; return what was measured."""
    single_thread()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(SEED, verbose=False)
    data = load_mnist(data_root, fraction)
    train_x = ((data.train_x.float() / 255.0 - MEAN) / STD).contiguous()
    test_x = ((data.test_x.float() / 255.0 - MEAN) / STD).contiguous()
    train_y, test_y = data.train_y, data.test_y
    train_exps = split_by_class(train_y, class_order, N_EXPERIENCES)
    test_loaders = [
        Gathers(test_x, test_y, list(idx.split(BATCH_SIZE)))
        for idx in split_by_class(test_y, class_order, N_EXPERIENCES)
    ]
    module = PlainModule(mlp(), log=log)
    generator = torch.Generator().manual_seed(SEED)
    setup_s = time.perf_counter() - _START

    clock = Stopwatch()
    replay_groups: list[Tensor] = []
    matrix: list[list[float]] = []
    start = time.perf_counter()
    for position, indices in enumerate(train_exps):
        module.experience = position
        with clock.phase("train"):
            batches = list(indices[torch.randperm(len(indices), generator=generator)].split(BATCH_SIZE))
            if method == "replay" and replay_groups:
                memory = memory_batches(
                    experience_balanced(replay_groups, MEM_SIZE), len(batches), BATCH_SIZE, generator
                )
                batches = [torch.cat([b, m]) for b, m in zip(batches, memory)]
            trainer = L.Trainer(**TRAINER_KWARGS)
            trainer.fit(module, train_dataloaders=Gathers(train_x, train_y, batches))
            if method == "replay":
                replay_groups.append(indices[torch.randperm(len(indices), generator=generator)])
                replay_groups = [g[:MEM_SIZE] for g in replay_groups]
            elif method == "ewc":
                fisher = per_sample_fisher(module.model, train_x, train_y, indices)
                module.anchors.append(
                    ({n: p.detach().clone() for n, p in module.model.named_parameters()}, fisher)
                )
        with clock.phase("eval"):
            module.correct, module.seen, module.loss_sum = {}, {}, {}
            trainer.test(module, dataloaders=test_loaders, verbose=False)
            matrix.append([module.correct[j] / module.seen[j] for j in range(len(test_loaders))])
    total = time.perf_counter() - start
    return RunRecord(
        contender="plain_lightning-logged" if log else "plain_lightning",
        method=method,
        total_s=total,
        train_s=clock["train"],
        eval_s=clock["eval"],
        setup_s=setup_s,
        stream_samples=sum(len(i) for i in train_exps),
        average_accuracy=average_of_last_row(matrix),
        accuracy_matrix=matrix,
        data_source=data.source,
        versions={**torch_versions(), "lightning": L.__version__},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--log", action="store_true", help="log as many values as lightning_cl does")
    args = parser.parse_args()
    root = args.data or default_data_root()
    record = run(
        args.method, str(root) if root else None, args.fraction, parse_class_order(args.class_order), args.log
    )
    write_record(record, args.json)


if __name__ == "__main__":
    main()
