"""Runs SplitDigits streams for the resume and distributed tests, in a process of its own.

    python stream_script.py --out OUT.json [--methods naive,replay,ewc,...] [--ckpt-dir DIR]
        [--max-experiences K] [--resume] [--devices N --strategy ddp] [--batch-size B]

For each method it trains with ``fit_stream`` and writes the accuracy matrix and checksums of
the CL state (buffer indices, Fisher, teacher, SI/MAS importances, GEM memories, weights) per rank to OUT
(OUT.rank<r>.json under DDP).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_cl.data import LoaderSettings, SplitDigits
from lightning_cl.methods import (
    AGEM,
    AR1,
    DER,
    ERACE,
    ERAML,
    EWC,
    GEM,
    L2P,
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
    output_sensitivity,
)
from lightning_cl.models import (
    CNN,
    MLP,
    BatchRenorm1d,
    BatchRenorm2d,
    ContinualModule,
    ExpertGateNetwork,
    ProgressiveNetwork,
)
from lightning_cl.training import fit_stream
from lightning_cl.training.checkpoint import checkpoint_name

METHODS = {
    "naive": lambda: [],
    "replay": lambda: [Replay(mem_size=200)],
    # Replay updated after every step (Vitter's reservoir) and Replay choosing by herding.
    "replay_online": lambda: [Replay(mem_size=200, policy="reservoir", online=True)],
    "replay_herding": lambda: [Replay(mem_size=200, policy="class_balanced", selection=HerdingSelection())],
    # Memory batches as large as the current ones: with 10 (the online papers' setting) five
    # epochs per experience forget unevenly, and another sample order moves cells by 0.7.
    "mir": lambda: [MIR(mem_size=200, subsample=64, mem_batch_size=32)],
    "gss": lambda: [GSSGreedy(mem_size=200, n_reference=10, mem_batch_size=32)],
    "ewc": lambda: [EWC(ewc_lambda=2.0)],
    "both": lambda: [Replay(mem_size=200), EWC(ewc_lambda=2.0)],
    # Replay with the optimizer state (momentum) carried across experiences.
    "keep": lambda: [Replay(mem_size=200)],
    "lwf": lambda: [LwF(alpha=1.0)],
    "si": lambda: [SI(si_lambda=0.1)],
    # alpha=0: the importance is the last experience's alone, which the report recomputes
    # in one process from the whole experience (see `mas_check`).
    "mas": lambda: [MAS(lambda_reg=0.1, alpha=0.0)],
    "agem": lambda: [AGEM(patterns_per_experience=40, sample_size=32)],
    "der": lambda: [DER(mem_size=200, alpha=0.1, beta=0.5)],
    "gem": lambda: [GEM(patterns_per_experience=40, memory_strength=0.5)],
    "from_scratch": lambda: [FromScratch()],
    # Class-incremental digits: the head must learn the new classes.
    "lfl": lambda: [LFL(lambda_e=1.0, freeze_head=False)],
    "rwalk": lambda: [RWalk(ewc_lambda=1.0)],
    "cwr": lambda: [CWRStar()],
    "ar1": lambda: [AR1(latent_layer="features.1", mem_size=200)],
    # The paper's AR1: CWR* with latent replay and SI, batch renormalisation on a CNN's batch norm.
    "ar1_si": lambda: [AR1(latent_layer="features.7", mem_size=200), SI(si_lambda=0.1)],
    "gdumb": lambda: [GDumb(mem_size=100)],
    "er_ace": lambda: [ERACE(mem_size=200)],
    "er_aml": lambda: [ERAML(mem_size=200)],
    # RAR on Replay's memory batches, with the authors' Split-MNIST attack.
    "rar": lambda: [
        Replay(mem_size=200),
        RAR(beta=0.3, epsilon=0.3, step_size=0.075, steps=5, clamp=(0.0, 1.0)),
    ],
    # Meta-learning over a reservoir memory, each in its own inner loop (an owned optimisation step).
    "mer": lambda: [MER(mem_size=200, mem_batch_size=32, n_batches=2, inner_batch_size=16, beta=0.5, seed=1)],
    "mer_optimizer": lambda: [
        MER(
            mem_size=200,
            mem_batch_size=32,
            n_batches=2,
            inner_batch_size=16,
            beta=0.5,
            inner_steps="optimizer",
            seed=1,
        )
    ],
    "lamaml": lambda: [LaMAML(mem_size=200, mem_batch_size=32, n_glances=2, seed=1)],
    "icarl": lambda: [ICaRL(mem_size=200)],
    "bic": lambda: [BiC(mem_size=200)],
    "scr": lambda: [SCR(mem_size=200)],
    "generative_replay": lambda: [GenerativeReplay(generator_epochs=20, hidden_size=128, latent_size=16)],
    "cope": lambda: [CoPE(mem_size=200)],
    "pnn": lambda: [PNN()],
    "packnet": lambda: [PackNet(prune_ratio=0.5, post_prune_epochs=1)],
    "slda": lambda: [StreamingLDA()],
    "expert_gate": lambda: [ExpertGate()],
    "all": lambda: [
        Replay(mem_size=200),
        EWC(ewc_lambda=2.0),
        LwF(alpha=1.0),
        SI(si_lambda=0.1),
        MAS(lambda_reg=0.01),
        AGEM(patterns_per_experience=40, sample_size=32),
        GEM(patterns_per_experience=40, memory_strength=0.5),
    ],
}

# Methods that need a task-incremental stream (task label i in experience i), and the models
# of the methods that need their own.
TASK_INCREMENTAL = {"pnn", "packnet", "expert_gate"}
MODELS = {
    "pnn": lambda: ProgressiveNetwork(input_size=64, hidden_size=64),
    "packnet": lambda: MLP(input_size=64, hidden_size=256, drop_rate=0.0, head="multihead"),
    "ar1_si": lambda: CNN(num_classes=10, channels=(8, 16), drop_rate=0.0, batch_norm=True),
    "expert_gate": lambda: ExpertGateNetwork(input_size=64, hidden_size=64, code_size=16),
}
if importlib.util.find_spec("timm") is not None:  # L2P prompts a timm ViT: only where timm is installed
    from lightning_cl.models import PromptedViT

    METHODS["l2p"] = lambda: [L2P(diversify=True)]
    MODELS["l2p"] = lambda: PromptedViT(
        "vit_tiny_patch16_224",
        pretrained=False,
        pool_size=6,
        prompt_length=2,
        top_n=3,
        vit_kwargs=dict(img_size=8, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2),
    )


def checksums(module: ContinualModule, callbacks: list[Any]) -> dict[str, float]:
    out = {"weights": float(sum(p.detach().double().sum() for p in module.parameters()))}
    renorm = [m for m in module.modules() if isinstance(m, BatchRenorm1d | BatchRenorm2d)]
    if renorm:  # the running moments and step counts of batch renormalisation (AR1)
        out["batch_renorm"] = float(
            sum(
                m.running_mean.double().sum() + m.running_var.double().sum() + m.num_batches_tracked
                for m in renorm
            )
        )
    for cb in callbacks:
        if isinstance(cb, Replay):
            held = cb.buffer.indices
            out["buffer"] = float(held.double().mul(torch.arange(len(held)) + 1).sum())
        if isinstance(cb, MIR):
            held = cb.buffer.indices
            out["mir_memory"] = float(held.double().mul(torch.arange(len(held)) + 1).sum())
        if isinstance(cb, GSSGreedy):
            out["gss_memory"] = float(cb.indices.double().mul(torch.arange(len(cb)) + 1).sum())
            out["gss_scores"] = float(cb.scores.double().sum())
        if isinstance(cb, EWC):
            out["fisher"] = float(
                sum(f.double().sum() for a in cb.anchors.values() for f in a["fisher"].values())
            )
        if isinstance(cb, DER):
            out["der_memory"] = float(cb.buffer.indices.double().sum())
            out["der_logits"] = float(cb.logits.double().sum())
        if isinstance(cb, LwF) and cb.teacher_state is not None:
            out["teacher"] = float(sum(v.double().sum() for v in cb.teacher_state.values()))
        if isinstance(cb, AGEM | GEM):
            name = type(cb).__name__.lower()
            out[f"{name}_memory"] = float(cb.buffer.indices.double().sum())
            out[f"{name}_projections"] = float(cb.projections)
        if isinstance(cb, SI | MAS):
            out["importance"] = float(sum(v.double().sum() for v in cb.importance.values()))
        if isinstance(cb, FromScratch) and cb.initial_state is not None:
            out["initial"] = float(sum(v.double().sum() for v in cb.initial_state.values()))
        if isinstance(cb, LFL) and cb.teacher_state is not None:
            out["lfl_teacher"] = float(sum(v.double().sum() for v in cb.teacher_state.values()))
        if isinstance(cb, BiC):
            out["bic_memory"] = float(cb.buffer.indices.double().sum())
            out["bic_bias"] = float(cb.alpha) + float(cb.beta)
        if isinstance(cb, ICaRL):
            out["icarl_exemplars"] = float(sum(v.double().sum() for v in cb.exemplars.values()))
            out["icarl_means"] = float(cb.class_means.double().sum())
        if isinstance(cb, SCR):
            out["scr_means"] = float(cb.class_means.double().sum())
        if isinstance(cb, ERACE | ERAML | SCR):
            out[f"{type(cb).__name__.lower()}_memory"] = float(cb.buffer.indices.double().sum())
        if isinstance(cb, CoPE):
            out["cope_prototypes"] = float(cb.prototypes.double().abs().sum())
            out["cope_memory"] = float(
                cb.replay.buffer.indices.double().mul(torch.arange(len(cb.replay.buffer)) + 1).sum()
            )
        if isinstance(cb, GenerativeReplay) and cb.generator is not None:
            out["generator"] = float(sum(v.double().sum() for v in cb.generator.state_dict().values()))
            out["generator_solver"] = float(sum(v.double().sum() for v in (cb.solver_state or {}).values()))
        if isinstance(cb, GDumb):
            out["gdumb_memory"] = float(cb.indices.double().mul(torch.arange(len(cb)) + 1).sum())
        if isinstance(cb, RWalk) and cb.weights is not None:
            out["rwalk_weights"] = float(sum(v.double().sum() for v in cb.weights.values()))
            out["rwalk_fisher"] = float(sum(v.double().sum() for v in cb.fisher.values()))
        if isinstance(cb, AR1):
            out["ar1_memory"] = float(cb.indices.double().mul(torch.arange(len(cb.indices)) + 1).sum())
        if isinstance(cb, CWRStar) and cb.consolidated is not None:
            out["cwr_consolidated"] = float(cb.consolidated.abs().sum())
            out["cwr_past"] = float(cb.past.double().mul(torch.arange(len(cb.past)) + 1).sum())
        if isinstance(cb, PackNet):
            out["packnet_owners"] = float(sum(o.double().sum() for o in cb.owners.values()))
        if isinstance(cb, StreamingLDA) and cb.means is not None:
            out["slda_means"] = float(cb.means.sum())
            out["slda_sigma"] = float(cb.sigma.abs().sum())
            out["slda_counts"] = float(cb.counts.double().mul(torch.arange(len(cb.counts)) + 1).sum())
        if isinstance(cb, MER | LaMAML):
            held = cb.buffer.indices
            weighted = held.double().mul(torch.arange(len(held)) + 1)
            out[f"{type(cb).__name__.lower()}_memory"] = float(weighted.sum())
        if isinstance(cb, LaMAML):
            out["lamaml_alpha"] = float(sum(a.double().sum() for a in cb.alpha.values()))
        if isinstance(cb, MER) and cb.inner_steps == "optimizer" and module._trainer is not None:
            # The momentum its inner steps left in the module's optimizer (averaged over the ranks).
            state = module._trainer.optimizers[0].state.values()
            out["mer_optimizer_state"] = float(
                sum(v.double().sum() for s in state for v in s.values() if torch.is_tensor(v))
            )
        if isinstance(cb, RAR):
            out["rar_seed"] = float(cb.state_dict()["seed"] if cb.state_dict()["seed"] is not None else -1)
        if isinstance(cb, L2P) and cb.counts is not None:
            out["l2p_counts"] = float(cb.counts.double().mul(torch.arange(len(cb.counts)) + 1).sum())
        if isinstance(cb, ExpertGate):
            out["expert_gate_init"] = float(
                sum((k + 1) * (v if v is not None else -1) for k, v in cb.initialised_from.items())
            )
            out["expert_gate_relatedness"] = float(sum(v or 0.0 for v in cb.relatedness.values()))
            out["expert_gate_lwf"] = float(
                sum((k + 1) * (v if v is not None else -1) for k, v in cb.lwf_from.items())
            )
    return out


def mas_check(module: ContinualModule, callbacks: list[Any], bench: Any) -> float | None:
    """Largest gap between MAS's importance (sharded and all-reduced under DDP) and the same
    importance computed here, in this process, on the whole last experience (alpha=0 runs)."""
    (mas,) = [cb for cb in callbacks if isinstance(cb, MAS)] or [None]
    if mas is None or mas.alpha != 0.0 or not mas.importance:
        return None
    data = bench.train_stream[-1].dataset
    sums, count = output_sensitivity(module, data, torch.arange(len(data)), batch_size=64)
    gaps = [
        float(
            (mas.importance[n].cpu() - (v / count).clamp_max(mas.max_importance or float("inf"))).abs().max()
        )
        for n, v in sums.items()
    ]
    return max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ckpt-dir", default=None)
    parser.add_argument("--max-experiences", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    report: dict[str, Any] = {}
    trainer_kwargs = dict(
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        max_epochs=args.epochs,
        enable_progress_bar=False,
        precision=args.precision,
    )
    rank = 0
    for method in args.methods.split(","):
        L.seed_everything(1)
        bench = SplitDigits(
            n_experiences=5,
            seed=1,
            task_labels=method in TASK_INCREMENTAL,
            loader=LoaderSettings(batch_size=args.batch_size, num_workers=args.num_workers),
        )
        make_model = MODELS.get(
            method, lambda: MLP(num_classes=10, input_size=64, hidden_size=256, drop_rate=0.0)
        )
        module = ContinualModule(
            make_model(),
            optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
            optimizer_policy="keep" if method == "keep" else "reset",
        )
        callbacks = METHODS[method]()
        ckpt_dir = Path(args.ckpt_dir) / method if args.ckpt_dir else None
        ckpt_path = None
        if args.resume:
            ckpt_path = max(ckpt_dir.glob("experience_*.ckpt"))  # the last one saved
        results = fit_stream(
            module,
            bench,
            callbacks=callbacks,
            logger=False,
            trainer_kwargs={**trainer_kwargs, "enable_checkpointing": ckpt_dir is not None},
            checkpoint_dir=ckpt_dir,
            ckpt_path=ckpt_path,
            max_experiences=args.max_experiences,
        )
        rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
        report[method] = {
            "accuracy_matrix": results.accuracy_matrix,
            "average_accuracy": results.average_accuracy,
            "checksums": checksums(module, callbacks),
            "mas_check": mas_check(module, callbacks, bench),
            "resumed_from": str(ckpt_path) if ckpt_path else None,
            "checkpoint": checkpoint_name(results.trained[-1]) if results.trained else None,
        }
    out = Path(args.out)
    if args.devices > 1:
        out = out.with_suffix(f".rank{rank}.json")
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
