"""Matrices computed by hand for the evaluation tests, and a headless matplotlib."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture
def aligned() -> torch.Tensor:
    """R[i, j] of a 3-experience stream whose train and test experiences align."""
    return torch.tensor([[0.9, 0.1, 0.0], [0.6, 0.8, 0.1], [0.3, 0.7, 0.95]], dtype=torch.float64)


@pytest.fixture
def online() -> dict[str, Any]:
    """An online stream: 6 mini-experiences (two per origin experience), 3 test experiences."""
    return {
        "matrix": torch.tensor(
            [
                [0.5, 0.0, 0.0],
                [0.9, 0.0, 0.0],
                [0.6, 0.4, 0.0],
                [0.4, 0.8, 0.1],
                [0.3, 0.5, 0.6],
                [0.2, 0.4, 0.9],
            ],
            dtype=torch.float64,
        ),
        "trained_on": [[0], [0], [1], [1], [2], [2]],
        "initial": [0.1, 0.1, 0.1],
    }


@pytest.fixture
def agg() -> Any:
    """matplotlib on the non-interactive Agg backend (the test is skipped without matplotlib)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield matplotlib
    plt.close("all")
