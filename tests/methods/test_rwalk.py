"""RWalk: the EWC++ Fisher and path scores by hand, the penalty, and less forgetting than fine-tuning."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitDigits
from lightning_cl.methods import RWalk
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs
from tests.methods.permuted_digits import run_permuted


class _Steps(L.Callback):
    """Listed after RWalk: each step's gradient, and the weights before and after it."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()})
        self.before.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.after.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def _small() -> ContinualModule:
    model = MLP(num_classes=10, input_size=64, hidden_size=8, drop_rate=0.0)
    return ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05))


def test_fisher_and_scores_follow_the_papers_updates() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    alpha, delta_t = 0.7, 3
    rwalk, steps = RWalk(ewc_lambda=1.0, ewc_alpha=alpha, delta_t=delta_t), _Steps()
    module = _small()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[rwalk, steps]).fit(
        module, datamodule=bench.train_stream[0]
    )
    assert rwalk.scores is not None and rwalk.weights is not None
    for name in rwalk.fisher:
        fisher = torch.zeros_like(steps.grads[0][name])
        score, loss = torch.zeros_like(fisher), torch.zeros_like(fisher)
        since = steps.before[0][name]
        for t, (g, before, after) in enumerate(zip(steps.grads, steps.before, steps.after)):
            fisher = alpha * g[name] ** 2 + (1 - alpha) * fisher
            loss = loss - g[name] * (after[name] - before[name])
            if (t + 1) % delta_t == 0:
                score = score + loss / (
                    0.5 * fisher * (after[name] - since) ** 2 + torch.finfo(torch.float32).eps
                )
                loss, since = torch.zeros_like(loss), after[name]
        torch.testing.assert_close(rwalk.fisher[name], fisher, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(rwalk.scores[name], score, rtol=1e-3, atol=1e-3)
    # Both terms are normalised by their maxima: each weight lies in [0, 2], and some reach 1.
    largest = max(float(w.max()) for w in rwalk.weights.values())
    assert 1.0 <= largest <= 2.0 and min(float(w.min()) for w in rwalk.weights.values()) >= 0.0


def test_penalty_is_lambda_times_the_weighted_distance() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    rwalk, module = RWalk(ewc_lambda=2.5), _small()
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[rwalk])
    trainer.fit(module, datamodule=bench.train_stream[0])
    assert float(rwalk.penalty(module, None, None)) == pytest.approx(0.0, abs=1e-12)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1)
    expected = 2.5 * sum(
        float((rwalk.weights[n] * (p.detach() - rwalk.anchors[n]) ** 2).sum())  # type: ignore[index]
        for n, p in module.named_parameters()
    )
    assert float(rwalk.penalty(module, None, None)) == pytest.approx(expected, rel=1e-5)  # type: ignore[arg-type]


def test_rwalk_forgets_less_than_fine_tuning_on_permuted_digits() -> None:
    naive = run_permuted([])
    rwalk = run_permuted([RWalk(ewc_lambda=10.0)])
    assert rwalk.forgetting < naive.forgetting - 0.05
    assert rwalk.average_accuracy > naive.average_accuracy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ewc_lambda": -1.0}, "ewc_lambda must be a finite number >= 0"),
        ({"ewc_lambda": float("nan")}, "ewc_lambda must be a finite number >= 0, got nan"),
        ({"ewc_lambda": float("inf")}, "ewc_lambda must be a finite number >= 0, got inf"),
        ({"ewc_alpha": 1.5}, r"ewc_alpha must be a number in \[0, 1\]"),
        ({"delta_t": 0}, "delta_t must be an int >= 1"),
        ({"delta_t": True}, r"delta_t must be an int >= 1 \(not a bool\), got True"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RWalk(**kwargs)


def test_two_instances_are_refused_by_name() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `RWalk`"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[RWalk(), RWalk()])
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[RWalk()])
    trainer.callbacks.append(RWalk())
    with pytest.raises(
        ValueError, match=r"2 callbacks of the trainer share the state_key \"RWalk\{.*\}\" of RWalk"
    ):
        trainer.fit(digits_module(), datamodule=bench.train_stream[0])
