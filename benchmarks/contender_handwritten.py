"""Contender 1: a hand-written PyTorch loop on in-memory tensors, the practical speed limit.

No ``DataLoader``, no framework: the whole split is normalised once into one ``float32`` tensor
and every batch is an index gather. The methods follow lightning_cl's semantics exactly:

- Naive: fine-tuning; a fresh SGD optimizer per experience (lightning_cl's default
  ``optimizer_policy="reset"``).
- Replay: an experience-balanced memory of ``mem_size`` samples (each experience keeps a uniform
  random subset; the first experiences get one more when the size does not divide), updated
  at the end of each experience; from the second experience on each step is ``batch_size``
  current plus ``batch_size`` memory samples, the memory drawn in reshuffled passes, as many
  memory batches as the experience has batches.
- EWC (separate): at the end of each experience, the per-sample empirical Fisher (closed form
  for the MLP's linear layers, eval mode, batches of ``batch_size``) and a copy of the weights; the penalty
  ``lambda / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2`` is added to every later step.

Run: ``python benchmarks/contender_handwritten.py --method replay --data ../shared/data``.
"""

from __future__ import annotations

import argparse
import time

_START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
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
    average_of_last_row,
    default_data_root,
    load_mnist,
    parse_class_order,
    single_thread,
    split_by_class,
    torch_versions,
    write_record,
)
from torch import Tensor, nn  # noqa: E402


def mlp() -> nn.Module:
    """lightning_cl's ``MLP()`` / Avalanche's ``SimpleMLP``: 784-512-10, ReLU, dropout 0.5."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10))


def memory_batches(
    memory: Tensor, n_batches: int, batch_size: int, generator: torch.Generator
) -> list[Tensor]:
    """``n_batches`` batches of memory indices, drawn in reshuffled passes over the memory."""
    needed = n_batches * batch_size
    passes = -(-needed // len(memory))
    order = torch.cat([torch.randperm(len(memory), generator=generator) for _ in range(passes)])[:needed]
    return list(memory[order].split(batch_size))


def experience_balanced(groups: list[Tensor], mem_size: int) -> Tensor:
    """The memory: each experience's (already shuffled) indices cut to its equal share of ``mem_size``."""
    share, extra = divmod(mem_size, len(groups))
    return torch.cat([g[: share + (1 if k < extra else 0)] for k, g in enumerate(groups)])


def per_sample_fisher(model: nn.Module, x_all: Tensor, y_all: Tensor, indices: Tensor) -> dict[str, Tensor]:
    """Mean over ``indices`` of squared per-sample log-likelihood gradients, in eval mode.

    The MLP's parameters all sit in linear layers, whose per-sample gradient is the outer product
    of the gradient at the layer's output and its input: the sum of squares over a batch is
    ``(g ** 2).T @ (a ** 2)``, from one ordinary backward pass (what lightning_cl's EWC does for
    such models; the same numbers as ``torch.func.vmap`` over samples, at a fraction of the cost).
    """
    _, first, relu, dropout, last = model
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for chunk in indices.split(BATCH_SIZE):
        a1 = x_all[chunk].flatten(1)
        h = first(a1)
        a2 = dropout(relu(h))
        out = last(a2)
        loss = F.cross_entropy(out, y_all[chunk], reduction="sum")
        g1, g2 = torch.autograd.grad(loss, [h, out])
        for prefix, g, a in (("1", g1, a1), ("4", g2, a2)):
            sums[f"{prefix}.weight"] += g.pow(2).T @ a.detach().pow(2)
            sums[f"{prefix}.bias"] += g.pow(2).sum(0)
    model.train()
    return {n: s / len(indices) for n, s in sums.items()}


def ewc_penalty(model: nn.Module, anchors: list[tuple[dict[str, Tensor], dict[str, Tensor]]]) -> Tensor:
    """``lambda / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2``."""
    total = torch.zeros(())
    for params, fisher in anchors:
        for name, p in model.named_parameters():
            total = total + (fisher[name] * (p - params[name]).pow(2)).sum()
    return 0.5 * EWC_LAMBDA * total


@torch.no_grad()
def accuracies(model: nn.Module, x_all: Tensor, y_all: Tensor, experiences: list[Tensor]) -> list[float]:
    """Accuracy on each test experience, in batches of ``BATCH_SIZE``."""
    model.eval()
    row = []
    for indices in experiences:
        correct = 0
        for chunk in indices.split(BATCH_SIZE):
            correct += int((model(x_all[chunk]).argmax(-1) == y_all[chunk]).sum())
        row.append(correct / len(indices))
    model.train()
    return row


def run(method: str, data_root: str | None, fraction: float, class_order: list[int]) -> RunRecord:
    """Train and evaluate the stream with ``method``; return what was measured."""
    single_thread()
    torch.manual_seed(SEED)
    data = load_mnist(data_root, fraction)
    train_x = ((data.train_x.float() / 255.0 - MEAN) / STD).contiguous()
    test_x = ((data.test_x.float() / 255.0 - MEAN) / STD).contiguous()
    train_y, test_y = data.train_y, data.test_y
    train_exps = split_by_class(train_y, class_order, N_EXPERIENCES)
    test_exps = split_by_class(test_y, class_order, N_EXPERIENCES)
    model = mlp()
    generator = torch.Generator().manual_seed(SEED)
    setup_s = time.perf_counter() - _START

    clock = Stopwatch()
    replay_groups: list[Tensor] = []
    anchors: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
    matrix: list[list[float]] = []
    start = time.perf_counter()
    for indices in train_exps:
        with clock.phase("train"):
            optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            model.train()
            batches = indices[torch.randperm(len(indices), generator=generator)].split(BATCH_SIZE)
            memory: list[Tensor] | None = None
            if method == "replay" and replay_groups:
                memory = memory_batches(
                    experience_balanced(replay_groups, MEM_SIZE), len(batches), BATCH_SIZE, generator
                )
            for step, batch in enumerate(batches):
                if memory is not None:
                    batch = torch.cat([batch, memory[step]])
                loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
                if anchors:
                    loss = loss + ewc_penalty(model, anchors)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if method == "replay":
                replay_groups.append(indices[torch.randperm(len(indices), generator=generator)])
                replay_groups = [g[:MEM_SIZE] for g in replay_groups]
            elif method == "ewc":
                fisher = per_sample_fisher(model, train_x, train_y, indices)
                anchors.append(({n: p.detach().clone() for n, p in model.named_parameters()}, fisher))
        with clock.phase("eval"):
            matrix.append(accuracies(model, test_x, test_y, test_exps))
    total = time.perf_counter() - start
    return RunRecord(
        contender="handwritten",
        method=method,
        total_s=total,
        train_s=clock["train"],
        eval_s=clock["eval"],
        setup_s=setup_s,
        stream_samples=sum(len(i) for i in train_exps),
        average_accuracy=average_of_last_row(matrix),
        accuracy_matrix=matrix,
        data_source=data.source,
        versions=torch_versions(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    args = parser.parse_args()
    root = args.data or default_data_root()
    record = run(args.method, str(root) if root else None, args.fraction, parse_class_order(args.class_order))
    write_record(record, args.json)


if __name__ == "__main__":
    main()
