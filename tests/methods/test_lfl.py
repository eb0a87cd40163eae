"""LFL: the feature distance to the previous model, and a head held at its values."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import LFL
from tests.conftest import digits_module, quiet_trainer_kwargs
from tests.methods.permuted_digits import permuted_digits, run_permuted


def _watch(lfl: LFL) -> list[tuple[float, float]]:
    """(penalty, expected) for every step: expected from the weights the step starts from."""
    seen: list[tuple[float, float]] = []
    penalty = lfl.penalty

    def recorded(module: Any, batch: Any, logits: torch.Tensor) -> Any:
        value = penalty(module, batch, logits)
        if value is not None:
            x = batch[0].flatten(1)
            with torch.no_grad():
                now = module.model.features(x)
                old = lfl.teacher(module).features(x)  # type: ignore[union-attr]
            seen.append((float(value), lfl.weight(module.current_experience) * float(F.mse_loss(now, old))))
        return value

    lfl.penalty = recorded  # type: ignore[method-assign]
    return seen


def test_penalty_is_the_weighted_feature_mse_and_the_head_stays() -> None:
    bench = permuted_digits(n_experiences=2)
    module, lfl = digits_module(), LFL(lambda_e=[0.0, 3.0])
    seen = _watch(lfl)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[lfl]).fit(module, datamodule=bench.train_stream[0])
    assert seen == []  # no previous model during the first experience
    head = module.model.head.weight.detach().clone()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[lfl]).fit(
        module, datamodule=bench.train_stream[1]
    )
    assert len(seen) > 10 and seen[0][0] == pytest.approx(0.0, abs=1e-7)  # the first step: same weights
    for value, expected in seen:
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert max(v for v, _ in seen) > 0
    assert torch.equal(module.model.head.weight, head)  # held at its values


def test_freeze_head_false_lets_the_head_learn() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, lfl = digits_module(), LFL(lambda_e=1.0, freeze_head=False)
    for experience in bench.train_stream[:2]:
        head = module.model.head.weight.detach().clone()
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[lfl]).fit(module, datamodule=experience)
    assert not torch.equal(module.model.head.weight, head)


def test_a_frozen_head_with_new_classes_is_refused() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, lfl = digits_module(), LFL()
    # Refused at the first experience already, before anything trains.
    refused = (
        r"experience 0 holds 2 of the benchmark's 10 classes.*classes \[.*\] could never.*freeze_head=False"
    )
    with pytest.raises(MisconfigurationException, match=refused):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[lfl]).fit(module, datamodule=bench.train_stream[0])
    assert module.current_experience is None and not module.seen_classes  # nothing trained


def test_lfl_forgets_less_than_fine_tuning_on_permuted_digits() -> None:
    naive = run_permuted([])
    lfl = run_permuted([LFL(lambda_e=1.0)])
    assert lfl.forgetting < naive.forgetting - 0.05
    assert lfl.average_accuracy > naive.average_accuracy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lambda_e": -1.0}, "lambda_e must be a finite number >= 0"),
        ({"lambda_e": float("nan")}, "lambda_e must be a finite number >= 0.*got nan"),
        ({"lambda_e": [1.0, float("inf")]}, "lambda_e must be a finite number >= 0.*got \\[1.0, inf\\]"),
        ({"lambda_e": []}, "non-empty list"),
        ({"freeze_head": "no"}, "freeze_head must be a bool.*got 'no'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LFL(**kwargs)


def test_a_missing_layer_is_named_at_setup() -> None:
    bench = SplitDigits(n_experiences=5)
    with pytest.raises(ValueError, match=r"no layer 'body'.*\['features', 'head'\]"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[LFL(feature_layer="body")]).fit(
            digits_module(), datamodule=bench.train_stream[0]
        )
