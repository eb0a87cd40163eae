"""L2P on a pretrained backbone: class-incremental SplitMNIST against fine-tuning and a frozen linear head.

L2P's premise is a frozen *pretrained* transformer (Wang et al., 2022: an ImageNet-21k ViT-B/16).
No pretrained weights can be downloaded here, so the script makes its own:

1. **Pretraining** (not the evaluation data): a small timm ViT (28x28 grey images, patches of 7,
   width 64, 3 blocks of 4 heads, ~150k weights) learns the 10 classes of the UCI digits (the
   1,797 8x8 images of ``lightning_cl.data.load_digits``, the file of ``$LIGHTNING_CL_DATA/digits``),
   each image resized to 20x20 and padded to 28x28 (MNIST's framing: digits in a 20x20 box,
   centred), with MNIST's normalisation and random affine augmentation; AdamW, cosine schedule.
   80% of the digits train it, 20% give its held-out accuracy. Its weights go to a file.
2. **Class-incremental SplitMNIST** (real MNIST, 5 experiences of 2 classes, class order from the
   seed), every training experience cut to ``--samples-per-experience`` random samples
   (:class:`~lightning_cl.data.SubsampledBenchmark`) and the test stream to
   ``--test-per-experience`` per experience, to fit the CPU budget. Each method runs from the same
   file, through ``PromptedViT(pretrained_file=...)``, with the same seed, epochs, batches (128)
   and optimizer (Adam, reset per experience):

   - ``l2p``: :class:`~lightning_cl.methods.L2P` (the paper's pool 10, length 5, top 5,
     ``sim_coefficient=0.1``, class masking) on the frozen backbone; prompts, keys, head learn;
     Adam lr 0.03 (the paper's).
   - ``finetune``: the whole pretrained ViT and a linear head fine-tuned (Naive); Adam lr 1e-3
     (lr 0.03, on every weight of a transformer, diverges).
   - ``frozen_linear``: the frozen backbone's [CLS] feature (L2P's query) and a linear head
     trained naively; Adam lr 0.03 (the usual L2P baseline).
   - ``frozen_linear_masked``: the same with L2P's class masking and no prompts: what the prompts
     add beyond the masking.
   - ``joint_probe`` (an upper bound for a frozen backbone, not continual): a linear head on the
     frozen features of all five experiences' training samples at once.

After the stream each model is probed on the test samples: accuracy, accuracy within the true
experience's classes (the head told the experience), and how often the predicted class belongs
to the true experience (task identification); for L2P, the prompts test samples of each
experience select, and the cosine of their query with the chosen keys.

Run: ``python benchmarks/l2p_pretrained.py --root $LIGHTNING_CL_DATA [--seeds 1 2 3]``; it
prints markdown tables and writes ``--json`` (default ``benchmarks/l2p_pretrained.json``).
One torch thread; the weights go to ``--weights`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cl.data import SplitMNIST, SubsampledBenchmark, load_digits
from lightning_cl.data.experience import Experience
from lightning_cl.data.stream import Stream
from lightning_cl.methods import L2P, ContinualCallback
from lightning_cl.models import ContinualModule, IncrementalClassifier, PromptedViT
from lightning_cl.models.heads import DynamicModule
from lightning_cl.training import fit_stream

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
VIT = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=3, num_heads=4)
MODEL_NAME = "vit_tiny_patch16_224"  # the architecture family; its size comes from VIT
POOL = dict(pool_size=10, prompt_length=5, top_n=5)  # the paper's


# ---------------------------------------------------------------------------------------------
# 1. pretraining on the UCI digits
def framed_digits() -> tuple[Tensor, Tensor]:
    """The UCI digits as MNIST-framed 28x28 images in [0, 1] (a 20x20 digit, 4 pixels of border)."""
    images, labels = load_digits()  # (N, 1, 8, 8) in [0, 1]
    digits = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(digits.clamp(0, 1), (4, 4, 4, 4)), labels


def random_affine(x: Tensor, g: torch.Generator) -> Tensor:
    """Per sample: rotation within 15 degrees, scale 0.85-1.15, shift within 2 pixels (zeros outside)."""
    n = len(x)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
    scale = 0.85 + 0.3 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 / 14)
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def pretrain(path: Path, epochs: int, seed: int = 0) -> dict[str, float]:
    """Train the ViT on the UCI digits, save its state dict to ``path``; return its accuracies."""
    import timm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, labels = framed_digits()
    order = torch.randperm(len(labels), generator=g)
    n_train = int(0.8 * len(labels))
    train, held = order[:n_train], order[n_train:]
    model = timm.create_model(MODEL_NAME, pretrained=False, num_classes=10, **VIT)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps_per_epoch = math.ceil(n_train / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1e-3, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in train[torch.randperm(n_train, generator=g)].split(64):
            x = (random_affine(images[idx], g) - MNIST_MEAN) / MNIST_STD
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        held_acc = (model((images[held] - MNIST_MEAN) / MNIST_STD).argmax(1) == labels[held]).float().mean()
        train_acc = (
            (model((images[train] - MNIST_MEAN) / MNIST_STD).argmax(1) == labels[train]).float().mean()
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return dict(
        seconds=time.perf_counter() - start,
        train_accuracy=float(train_acc),
        held_out_accuracy=float(held_acc),
        weights=sum(p.numel() for p in model.parameters()),
    )


# ---------------------------------------------------------------------------------------------
# 2. the models and the masking-only baseline
class ViTClassifier(DynamicModule):
    """A timm ViT's [CLS] pre-logit feature and a growing linear head; the ViT frozen or trained."""

    def __init__(self, backbone: nn.Module, train_backbone: bool):
        super().__init__()
        self.train_backbone = train_backbone
        self.backbone = backbone.requires_grad_(train_backbone)
        self.head = IncrementalClassifier(int(backbone.num_features), 2)

    def adaptation(
        self, classes: Iterable[int], task_labels: Tensor | None = None, targets: Any = None
    ) -> None:
        self.head.adaptation(classes)

    def features(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class MaskedHead(ContinualCallback):
    """L2P's class masking alone: the current rows' logits outside the experience's classes masked."""

    def __init__(self) -> None:
        self._mask = L2P()
        self._classes: Tensor | None = None

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._classes = torch.tensor(sorted(int(c) for c in experience.classes_in_this_experience))

    def task_loss(self, module: Any, batch: Any, logits: Tensor, parts: Mapping[str, slice]) -> Tensor | None:
        if self._classes is None:
            return None
        current = parts.get("current", slice(0, len(logits)))
        masked = logits.clone()
        masked[current] = self._mask.mask_logits(logits[current], self._classes)
        return module.criterion(masked.float(), batch[1])


def backbone_from(weights: Path) -> nn.Module:
    """The pretrained transformer, read from the file through ``PromptedViT(pretrained_file=...)``."""
    return PromptedViT(MODEL_NAME, pretrained_file=weights, vit_kwargs=VIT, **POOL).backbone


def build(name: str, weights: Path) -> tuple[nn.Module, list[L.Callback], float]:
    if name == "l2p":
        return PromptedViT(MODEL_NAME, pretrained_file=weights, vit_kwargs=VIT, **POOL), [L2P()], 0.03
    if name == "finetune":
        return ViTClassifier(backbone_from(weights), train_backbone=True), [], 1e-3
    if name == "frozen_linear":
        return ViTClassifier(backbone_from(weights), train_backbone=False), [], 0.03
    if name == "frozen_linear_masked":
        return ViTClassifier(backbone_from(weights), train_backbone=False), [MaskedHead()], 0.03
    raise ValueError(f"unknown method {name!r}")


METHODS = ("l2p", "finetune", "frozen_linear", "frozen_linear_masked")


# ---------------------------------------------------------------------------------------------
# 3. the stream, the probes
def subsampled_test(stream: Stream, per_experience: int, seed: int) -> Stream:
    g = torch.Generator().manual_seed(seed)
    cut = [
        e.replace(dataset=e.dataset.subset(torch.randperm(len(e.dataset), generator=g)[:per_experience]))
        for e in stream
    ]
    return Stream(str(stream.name), cut)


def stacked(stream: Stream) -> tuple[Tensor, Tensor, Tensor]:
    """All samples of a stream: inputs, targets, and each sample's experience index."""
    xs, ys, es = [], [], []
    for i, e in enumerate(stream):
        for x, y, *_ in e.eval_loader():
            xs.append(x)
            ys.append(y)
            es.append(torch.full_like(y, i))
    return torch.cat(xs), torch.cat(ys), torch.cat(es)


@torch.no_grad()
def probe(model: nn.Module, x: Tensor, y: Tensor, exp: Tensor, groups: list[list[int]]) -> dict[str, Any]:
    """Accuracy, within-experience accuracy, task identification; for L2P, prompt choices."""
    model.eval()
    logits = torch.cat([model(b) for b in x.split(256)])
    group_of = torch.full((logits.shape[1],), -1, dtype=torch.long)
    for i, classes in enumerate(groups):
        group_of[torch.tensor(classes)] = i
    pred = logits.argmax(1)
    out: dict[str, Any] = dict(
        accuracy=float((pred == y).float().mean()),
        task_identified=float((group_of[pred] == exp).float().mean()),
    )
    within = logits.clone()
    for i, classes in enumerate(groups):
        rows = exp == i
        keep = torch.zeros(logits.shape[1], dtype=torch.bool)
        keep[torch.tensor(classes)] = True
        within[rows] = within[rows].masked_fill(~keep, float("-inf"))
    out["within_experience_accuracy"] = float((within.argmax(1) == y).float().mean())
    if isinstance(model, PromptedViT):
        selections = [model.pool(model.query(b)) for b in x.split(256)]
        idx = torch.cat([s.indices for s in selections])
        sim = torch.cat([s.similarity.gather(1, s.indices) for s in selections])
        pool = model.pool.pool_size
        out["test_prompt_histogram"] = [
            torch.bincount(idx[exp == i].flatten(), minlength=pool).tolist() for i in range(len(groups))
        ]
        out["distinct_prompt_sets"] = len({tuple(sorted(r)) for r in idx.tolist()})
        out["chosen_key_cosine"] = float(sim.mean())
        # How much the choice tells of the experience: the majority experience per prompt set.
        sets = [tuple(sorted(r)) for r in idx.tolist()]
        by_set: dict[tuple[int, ...], list[int]] = {}
        for s, e in zip(sets, exp.tolist()):
            by_set.setdefault(s, []).append(e)
        majority = sum(max(v.count(k) for k in set(v)) for v in by_set.values())
        out["experience_from_prompt_set"] = majority / len(sets)
    return out


def joint_probe(weights: Path, bench: Any, x_test: Tensor, y_test: Tensor, seed: int) -> float:
    """A linear head on the frozen features of every training experience at once (not continual)."""
    torch.manual_seed(seed)
    backbone = backbone_from(weights).eval()
    feats = ViTClassifier(backbone, train_backbone=False)
    train = stacked(Stream("train", list(bench.train_stream)))
    with torch.no_grad():
        f_train = torch.cat([feats.features(b) for b in train[0].split(256)])
        f_test = torch.cat([feats.features(b) for b in x_test.split(256)])
    head = nn.Linear(f_train.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=0.03)
    for _ in range(300):
        loss = F.cross_entropy(head(f_train), train[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((head(f_test).argmax(1) == y_test).float().mean())


def run(name: str, weights: Path, root: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    bench = SubsampledBenchmark(
        SplitMNIST(root, n_experiences=5, seed=seed),
        samples_per_experience=args.samples_per_experience,
        seed=seed,
    )
    test = subsampled_test(bench.test_stream, args.test_per_experience, seed)
    L.seed_everything(seed, verbose=False)
    model, callbacks, lr = build(name, weights)
    module = ContinualModule(model, optimizer=partial(torch.optim.Adam, lr=lr))
    start = time.perf_counter()
    results = fit_stream(
        module,
        bench,
        callbacks=callbacks,
        test_stream=test,
        logger=False,
        trainer_kwargs=dict(
            max_epochs=args.epochs,
            accelerator="cpu",
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        ),
    )
    seconds = time.perf_counter() - start
    groups = [sorted(int(c) for c in e.classes_in_this_experience) for e in bench.train_stream]
    x, y, exp = stacked(test)
    out: dict[str, Any] = dict(
        method=name,
        seed=seed,
        seconds=seconds,
        average_accuracy=results.average_accuracy,
        forgetting=results.forgetting,
        accuracy_matrix=[list(map(float, row)) for row in results.accuracy_matrix],
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        **probe(model, x, y, exp, groups),
    )
    l2p = next((c for c in callbacks if isinstance(c, L2P)), None)
    if l2p is not None and l2p.counts is not None:
        out["train_prompt_counts"] = l2p.counts.tolist()
    if name == "frozen_linear":
        out["joint_probe"] = joint_probe(weights, bench, x, y, seed)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    keys = ("average_accuracy", "forgetting", "within_experience_accuracy", "task_identified", "seconds")
    lines = [
        "| method | final accuracy | forgetting | accuracy within the true experience "
        "| task identified | seconds per run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in METHODS:
        mine = [r for r in rows if r["method"] == name]
        if not mine:
            continue
        cells = []
        for key in keys:
            values = [float(r[key]) for r in mine]
            mean = statistics.mean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean:.0f}" if key == "seconds" else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    probes = [r["joint_probe"] for r in rows if "joint_probe" in r]
    if probes:
        sd = statistics.stdev(probes) if len(probes) > 1 else 0.0
        lines.append(f"| `joint_probe` (not continual) | {statistics.mean(probes):.3f} ± {sd:.3f} | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("LIGHTNING_CL_DATA", "data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--samples-per-experience", type=int, default=1000)
    parser.add_argument("--test-per-experience", type=int, default=400)
    parser.add_argument(
        "--weights", type=Path, default=None, help="reuse (or write) the pretrained weights here"
    )
    parser.add_argument("--embed-dim", type=int, default=VIT["embed_dim"], help="the ViT's width")
    parser.add_argument("--depth", type=int, default=VIT["depth"], help="the ViT's blocks")
    parser.add_argument("--num-heads", type=int, default=VIT["num_heads"], help="the ViT's heads")
    parser.add_argument("--pretrain-only", action="store_true", help="write the weights and stop")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("l2p_pretrained.json"))
    args = parser.parse_args()
    VIT.update(embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    weights = args.weights or Path(tempfile.mkdtemp()) / "vit_digits.pth"
    report: dict[str, Any] = dict(
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    )
    stats = weights.with_suffix(".json")
    if not weights.is_file():
        stats.parent.mkdir(parents=True, exist_ok=True)
        stats.write_text(json.dumps(pretrain(weights, args.pretrain_epochs)))
    report["pretraining"] = json.loads(stats.read_text()) if stats.is_file() else None
    print("pretraining:", report["pretraining"], flush=True)
    if args.pretrain_only:
        return
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for name in args.methods:
            row = run(name, weights, args.root, seed, args)
            rows.append(row)
            print(
                f"seed {seed} {name}: acc {row['average_accuracy']:.3f} forgetting {row['forgetting']:.3f} "
                f"within {row['within_experience_accuracy']:.3f} task-id {row['task_identified']:.3f} "
                f"({row['seconds']:.0f} s)"
                + (f" joint probe {row['joint_probe']:.3f}" if "joint_probe" in row else ""),
                flush=True,
            )
            report["runs"] = rows
            args.json.write_text(json.dumps(report, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
