"""ER-AML: metric learning of the incoming data against the memory, cross-entropy on the memory."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_cl import methods
from lightning_cl.data import SplitDigits
from lightning_cl.methods import ERAML, asymmetric_metric_loss, step_generator
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average, stream_trainer_kwargs


def _by_hand(f: torch.Tensor, pairs: list[tuple[int, int, list[int]]], tau: float) -> float:
    n = F.normalize(f, dim=1)
    s = (n @ n.T / tau).tolist()
    terms = [
        math.log(math.exp(s[a][p]) + sum(math.exp(s[a][k]) for k in negs)) - s[a][p] for a, p, negs in pairs
    ]
    return sum(terms) / len(terms)


def test_negatives_are_the_memory_samples_of_other_classes_only() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 4, generator=g)
    # Incoming rows 0-2 (classes 0, 1, 2); memory rows 3-5 (classes 0, 1, 1).
    y = torch.tensor([0, 1, 2, 0, 1, 1])
    loss = asymmetric_metric_loss(f, y, slice(0, 3), slice(3, 6), temperature=0.5, generator=g)
    # Anchor 0: positive row 3, negatives rows 4, 5 (not incoming row 1 or 2).
    # Anchor 1: positive row 4 or 5 (drawn), negative row 3. Anchor 2: no positive, left out.
    expected = [_by_hand(f, [(0, 3, [4, 5]), (1, p, [3])], 0.5) for p in (4, 5)]
    assert min(abs(float(loss) - e) for e in expected) < 1e-5
    # Moving an incoming sample of another class changes nothing of anchor 0's term.
    f2 = f.clone()
    f2[2] = torch.tensor([9.0, -3.0, 0.0, 1.0])
    again = asymmetric_metric_loss(
        f2, y, slice(0, 3), slice(3, 6), temperature=0.5, generator=torch.Generator().manual_seed(1)
    )
    assert min(abs(float(again) - e) for e in expected) < 1e-5


def test_no_valid_anchor_gives_a_zero_loss_in_the_graph() -> None:
    f = torch.randn(3, 2, requires_grad=True)
    loss = asymmetric_metric_loss(f, torch.tensor([0, 1, 1]), slice(0, 1), slice(1, 3))  # no positive
    assert float(loss.detach()) == 0.0 and loss.requires_grad


class _Spy(ERAML):
    """Checks every step's loss against the metric term and the memory's cross-entropy, recomputed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checked: list[tuple[dict[str, slice], float, float]] = []

    def task_loss(self, module: Any, batch: Any, logits: torch.Tensor, parts: Any) -> Any:
        loss = super().task_loss(module, batch, logits, parts)
        if loss is None:
            return None
        x, y, _ = batch
        with torch.no_grad():
            features = module.model.features(x)  # no dropout: the step's features again
            generator = step_generator(0, int(module.global_step_all))
            metric = asymmetric_metric_loss(features, y, parts["current"], parts["replay"], 0.1, generator)
            expected = metric + F.cross_entropy(logits[parts["replay"]], y[parts["replay"]])
        self.checked.append((dict(parts), float(loss), float(expected)))
        return loss


def test_the_task_loss_is_the_metric_term_plus_the_memorys_cross_entropy() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    spy, module = _Spy(mem_size=40, mem_batch_size=8, seed=0), digits_module()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[spy]).fit(module, datamodule=experience)
    assert spy.checked, "no step of the second experience had memory rows"
    assert spy.checked[0][0] == {"current": slice(0, 32), "replay": slice(32, 40)}
    assert all(abs(loss - expected) < 1e-5 for _, loss, expected in spy.checked)


def test_a_missing_feature_layer_is_refused_at_set_up() -> None:
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[ERAML(feature_layer="trunk")])
    with pytest.raises(ValueError, match="the model has no layer 'trunk'"):
        trainer.fit(digits_module(), datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        ERAML(temperature=0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got inf"):
        ERAML(temperature=float("inf"))
    with pytest.raises(ValueError, match=r"feature_layer must be a non-empty layer name .*, got 1"):
        ERAML(feature_layer=1)  # type: ignore[arg-type]


@pytest.mark.slow
def test_er_aml_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    ours = split_digits_average([ERAML(mem_size=200, seed=0)])
    assert naive < 0.25
    assert ours > naive + 0.3, (naive, ours)


def test_the_running_experiences_classes_are_learnt() -> None:
    # The memory's cross-entropy alone trains the classifier: from older samples alone, the
    # running experience's classes were never predicted.
    L.seed_everything(1)
    results = fit_stream(
        digits_module(),
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[ERAML(mem_size=100, seed=0)],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(max_epochs=2),
        max_experiences=2,
    )
    row = results.accuracy_matrix[1]
    assert row[1] > 0.5 and row[0] > 0.5, row


_REHEARSAL = [
    (methods.Replay, "mem_size"),
    (methods.ERACE, "mem_size"),
    (methods.ERAML, "mem_size"),
    (methods.SCR, "mem_size"),
    (methods.CoPE, "mem_size"),
    (methods.MIR, "mem_size"),
    (methods.GSSGreedy, "mem_size"),
    (methods.GDumb, "mem_size"),
    (methods.ICaRL, "mem_size"),
    (methods.BiC, "mem_size"),
    (methods.DER, "mem_size"),
    (methods.AGEM, "patterns_per_experience"),
    (methods.GEM, "patterns_per_experience"),
]


@pytest.mark.parametrize(("method", "argument"), _REHEARSAL, ids=[m.__name__ for m, _ in _REHEARSAL])
def test_every_rehearsal_method_refuses_a_memory_it_cannot_rehearse(method: Any, argument: str) -> None:
    # ERAML(mem_size=0) was accepted; the methods' checks and messages differed.
    low = 0 if method is methods.Replay else 1  # Replay(mem_size=0): replay off, documented
    for bad in (low - 1, 2.5, True, "200"):
        message = rf"^{argument} must be an int >= {low}, got {bad!r}: {method.__name__} rehearses"
        with pytest.raises(ValueError, match=message):
            method(**{argument: bad})
    assert method(**{argument: max(low, 1) + 1}) is not None
