"""The accuracy matrix of a stream and the metrics derived from it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AccuracyMatrix",
    "ContinualResults",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
]


def _check(matrix: Tensor) -> Tensor:
    if matrix.ndim != 2:
        raise ValueError(f"the accuracy matrix must be 2-d, got shape {tuple(matrix.shape)}")
    return matrix.double()


def average_accuracy(matrix: Tensor) -> float:
    r"""Average accuracy after the last trained experience, over the experiences trained so far.

    With :math:`T` rows (experiences trained, in order) and :math:`R_{i,j}` the accuracy on test
    experience :math:`j` after training experience :math:`i`:

    .. math:: \mathrm{ACC} = \frac{1}{T} \sum_{j=0}^{T-1} R_{T-1,j}

    (Lopez-Paz and Ranzato, 2017). ``nan`` if a needed entry is missing.
    """
    r = _check(matrix)
    t = r.shape[0]
    if t == 0 or r.shape[1] < t:
        return math.nan
    return float(r[t - 1, :t].mean())


def backward_transfer(matrix: Tensor) -> float:
    r"""Backward transfer: how training later experiences changed accuracy on earlier ones.

    .. math:: \mathrm{BWT} = \frac{1}{T-1} \sum_{j=0}^{T-2} \left(R_{T-1,j} - R_{j,j}\right)

    (Lopez-Paz and Ranzato, 2017). Negative values mean forgetting. ``nan`` for fewer than two
    trained experiences. Avalanche's "experience forgetting" averaged over the stream equals
    ``-BWT``.
    """
    r = _check(matrix)
    t = r.shape[0]
    if t < 2 or r.shape[1] < t:
        return math.nan
    diag = torch.diagonal(r)[: t - 1]
    return float((r[t - 1, : t - 1] - diag).mean())


def forgetting(matrix: Tensor) -> float:
    r"""Average forgetting (Chaudhry et al., 2018): the drop from the best accuracy ever reached.

    .. math::
        f_j = \max_{l \in \{0, \dots, T-2\}} R_{l,j} - R_{T-1,j}, \qquad
        F = \frac{1}{T-1} \sum_{j=0}^{T-2} f_j

    The maximum runs over all earlier rows, as in the paper (rows before :math:`j` was trained
    rarely matter: accuracy is low there). ``nan`` for fewer than two trained experiences.
    """
    r = _check(matrix)
    t = r.shape[0]
    if t < 2 or r.shape[1] < t:
        return math.nan
    best = r[: t - 1, : t - 1].nan_to_num(nan=-math.inf).max(dim=0).values
    return float((best - r[t - 1, : t - 1]).mean())


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass
class ContinualResults:
    """What a continual-learning run measured, ready to print, save or plot.

    Attributes:
        accuracy_matrix: ``R[i][j]``, accuracy on test experience ``j`` after training
            experience ``i`` (rows in training order); ``nan`` where not measured.
        trained: the index of the experience each row was trained on.
        tested: the index of the test experience of each column.
        stream_accuracy: per row, the accuracy over all samples of the test stream.
        average_accuracy: see :func:`average_accuracy`.
        forgetting: see :func:`forgetting`.
        bwt: see :func:`backward_transfer`.
    """

    accuracy_matrix: list[list[float]]
    trained: list[int]
    tested: list[int]
    stream_accuracy: list[float] = field(default_factory=list)
    average_accuracy: float = math.nan
    forgetting: float = math.nan
    bwt: float = math.nan

    @classmethod
    def from_matrix(
        cls, matrix: Tensor, trained: list[int], tested: list[int], stream_accuracy: list[float]
    ) -> ContinualResults:
        return cls(
            accuracy_matrix=matrix.tolist(),
            trained=list(trained),
            tested=list(tested),
            stream_accuracy=list(stream_accuracy),
            average_accuracy=average_accuracy(matrix),
            forgetting=forgetting(matrix),
            bwt=backward_transfer(matrix),
        )

    @property
    def matrix(self) -> Tensor:
        """The accuracy matrix as a ``float64`` tensor."""
        return torch.tensor(self.accuracy_matrix, dtype=torch.float64).reshape(len(self.trained), -1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view; ``nan`` becomes ``None`` so the result is valid JSON."""
        return {
            "accuracy_matrix": [[_none_if_nan(v) for v in row] for row in self.accuracy_matrix],
            "trained_experiences": self.trained,
            "test_experiences": self.tested,
            "stream_accuracy": [_none_if_nan(v) for v in self.stream_accuracy],
            "average_accuracy": _none_if_nan(self.average_accuracy),
            "forgetting": _none_if_nan(self.forgetting),
            "bwt": _none_if_nan(self.bwt),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The results as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def table(self) -> str:
        """The accuracy matrix and derived metrics as a fixed-width text table."""
        head = "after \\ test " + "".join(f"{'exp ' + str(j):>8}" for j in self.tested) + f"{'stream':>9}"
        lines = [
            "Accuracy matrix R[i, j]: row = after training experience i, column = test experience j",
            head,
        ]
        for k, (i, row) in enumerate(zip(self.trained, self.accuracy_matrix)):
            cells = "".join("     -  " if math.isnan(v) else f"{v:8.3f}" for v in row)
            stream = self.stream_accuracy[k] if k < len(self.stream_accuracy) else math.nan
            lines.append(f"{'exp ' + str(i):<13}{cells}{'' if math.isnan(stream) else f'{stream:9.3f}'}")
        lines.append(
            f"average accuracy {self.average_accuracy:.4f} | forgetting {self.forgetting:.4f} | "
            f"BWT {self.bwt:.4f}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, ax: Any = None) -> Any:
        """Draw the accuracy matrix as a heat map (needs matplotlib); returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(1.0 + 0.7 * len(self.tested), 1.0 + 0.6 * len(self.trained)))
        image = ax.imshow(self.matrix.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(self.tested)), [str(j) for j in self.tested])
        ax.set_yticks(range(len(self.trained)), [str(i) for i in self.trained])
        ax.set_xlabel("test experience j")
        ax.set_ylabel("after training experience i")
        for r, row in enumerate(self.accuracy_matrix):
            for c, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k")
        ax.figure.colorbar(image, ax=ax, label="accuracy")
        return ax


class AccuracyMatrix:
    """Accumulates test accuracies by (trained experience, test experience) as a run goes on.

    Row keys are experience indices in training order (a row is re-written if the same
    experience is tested again after the same training); ``None`` rows hold accuracies measured
    before any training and are kept apart (for forward transfer).
    """

    def __init__(self) -> None:
        self.rows: dict[int, dict[int, float]] = {}
        self.stream: dict[int, float] = {}
        self.initial: dict[int, float] = {}

    def record(self, trained: int | None, tested: int, accuracy: float) -> None:
        if trained is None:
            self.initial[int(tested)] = float(accuracy)
        else:
            self.rows.setdefault(int(trained), {})[int(tested)] = float(accuracy)

    def record_stream(self, trained: int | None, accuracy: float) -> None:
        if trained is not None:
            self.stream[int(trained)] = float(accuracy)

    def results(self) -> ContinualResults:
        trained = list(self.rows)
        tested = sorted({j for row in self.rows.values() for j in row})
        if trained and tested:
            width = max(max(tested) + 1, len(trained))
            tested = list(range(width))
        matrix = torch.full((len(trained), len(tested)), math.nan, dtype=torch.float64)
        for r, i in enumerate(trained):
            for j, v in self.rows[i].items():
                matrix[r, tested.index(j)] = v
        return ContinualResults.from_matrix(
            matrix, trained, tested, [self.stream.get(i, math.nan) for i in trained]
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": {i: dict(row) for i, row in self.rows.items()},
            "stream": dict(self.stream),
            "initial": dict(self.initial),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = {int(i): {int(j): float(v) for j, v in row.items()} for i, row in state["rows"].items()}
        self.stream = {int(i): float(v) for i, v in state["stream"].items()}
        self.initial = {int(j): float(v) for j, v in state["initial"].items()}
