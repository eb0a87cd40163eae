"""SplitMNIST on the real files: the numbers every CL library reports."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_cl.data import SplitMNIST
from lightning_cl.models import MLP, ContinualModule
from lightning_cl.training import fit_stream
from tests.conftest import stream_trainer_kwargs


@pytest.mark.slow
def test_naive_split_mnist_final_average_accuracy_is_about_one_fifth(data_root: Path) -> None:
    L.seed_everything(1)
    bench = SplitMNIST(root=data_root, n_experiences=5, seed=1)
    module = ContinualModule(MLP(num_classes=10), optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9))
    results = fit_stream(module, bench, logger=False, trainer_kwargs=stream_trainer_kwargs(max_epochs=1))
    # Each experience is learned, then forgotten: only the last one is remembered.
    assert all(results.accuracy_matrix[i][i] > 0.9 for i in range(5))
    assert results.accuracy_matrix[-1][0] < 0.05
    assert results.average_accuracy == pytest.approx(0.20, abs=0.02)
