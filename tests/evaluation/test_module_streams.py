"""The results of ContinualModule on streams whose test experiences are not its train experiences."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch

from lightning_cl import ContinualModule
from lightning_cl.data import SplitDigits, TensorClassificationDataset, new_instances, split_online
from lightning_cl.data.digits import load_digits
from lightning_cl.models import MLP
from tests.conftest import quiet_trainer_kwargs


def _module() -> ContinualModule:
    return ContinualModule(
        MLP(num_classes=10, input_size=64, hidden_size=64, drop_rate=0.0),
        optimizer=partial(torch.optim.SGD, lr=0.05),
    )


def test_online_stream_has_one_column_per_test_experience() -> None:
    L.seed_everything(1)
    bench = SplitDigits(n_experiences=5, seed=1)
    online = split_online(bench.train_stream, 100)
    module = _module()
    for mini in online:
        trainer = L.Trainer(**quiet_trainer_kwargs())
        trainer.fit(module, datamodule=mini)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    results = module.results
    assert len(online) == 15 and results.trained == list(range(15)) and results.tested == [0, 1, 2, 3, 4]
    assert all(len(row) == 5 for row in results.accuracy_matrix)
    assert results.average_accuracy == pytest.approx(sum(results.accuracy_matrix[-1]) / 5)
    assert 0.0 < results.average_accuracy < 0.35  # fine-tuning ends on the last origin's classes
    # Each mini-experience marks its origin experience: the pairing is known.
    assert results["accuracy"].pairing_source == "marked"
    # Fine-tuning forgets the four origin experiences trained before the last one.
    assert sorted(results["accuracy"].forgetting_per_experience) == [0, 1, 2, 3]
    assert not math.isnan(results.forgetting) and results.forgetting > 0.5 and results.bwt < -0.5


def test_new_instances_stream_has_one_column() -> None:
    L.seed_everything(1)
    images, labels = load_digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    bench = new_instances(
        TensorClassificationDataset(images[train], labels[train]),
        TensorClassificationDataset(images[test], labels[test]),
        3,
    )
    module = _module()
    for experience in bench.train_stream:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2))
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    results = module.results
    assert results.trained == [0, 1, 2] and results.tested == [0]
    assert results.average_accuracy == pytest.approx(results.accuracy_matrix[-1][0])
    assert results.average_accuracy > 0.5  # new samples of the same classes: it keeps learning
    best_earlier = max(results.accuracy_matrix[0][0], results.accuracy_matrix[1][0])
    assert results.forgetting == pytest.approx(best_earlier - results.accuracy_matrix[-1][0])
