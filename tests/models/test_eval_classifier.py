"""The evaluation-classifier extension point: one callback's scores in place of the model's logits."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ContinualCallback
from lightning_cl.models import EvalClassifier, eval_classifier_of
from tests.conftest import digits_module, quiet_trainer_kwargs


class _Constant(ContinualCallback, EvalClassifier):
    """Predicts class ``c`` for every sample (``None`` before ``ready``: the model's logits)."""

    def __init__(self, c: int, ready: bool = True) -> None:
        self.c, self.ready, self.calls = c, ready, 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(c=self.c)

    def eval_logits(self, module: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        self.calls += 1
        if not self.ready:
            return None
        scores = torch.zeros(len(x), self.c + 1, device=x.device)
        scores[:, self.c] = 1.0
        return scores


def test_the_accuracy_matrix_records_the_replaced_predictions() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module, constant = digits_module(), _Constant(c=2)
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[constant])
    trainer.fit(module, datamodule=bench.train_stream[0])
    trainer.test(module, datamodule=bench.test_stream, verbose=False)
    row = module.results.accuracy_matrix[0]
    # Class 2's share of the test experience that holds it, 0 elsewhere.
    expected = [float((e.dataset.targets == 2).float().mean()) for e in bench.test_stream]
    assert sum(v > 0 for v in expected) == 1
    assert row == pytest.approx(expected, abs=1e-6)
    assert constant.calls > 0


def test_none_keeps_the_models_logits() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    rows = []
    for callbacks in ([], [_Constant(c=2, ready=False)]):
        L.seed_everything(0)
        module = digits_module()
        trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=callbacks)
        trainer.fit(module, datamodule=bench.train_stream[0])
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
        rows.append(module.results.accuracy_matrix[0])
    assert rows[0] == rows[1]
    assert rows[0][0] > 0.9


def test_two_evaluation_classifiers_are_refused_at_set_up() -> None:
    assert eval_classifier_of([object()]) is None
    with pytest.raises(MisconfigurationException, match="_Constant, _Constant each replace the classifier"):
        eval_classifier_of([_Constant(1), _Constant(2)])
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[_Constant(1), _Constant(2)])
    with pytest.raises(MisconfigurationException, match="at most one callback"):
        trainer.fit(digits_module(), datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])
