"""The accuracy matrix of a stream: the recorder ``ContinualModule`` fills at test time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_cl.evaluation.cl_metrics import average_accuracy, backward_transfer, forgetting
from lightning_cl.evaluation.metric_matrix import MetricMatrix
from lightning_cl.evaluation.results import ContinualResults

__all__ = [
    "AccuracyMatrix",
    "ContinualResults",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
]


class AccuracyMatrix:
    """Accumulates test accuracies by (trained experience, test experience) as a run goes on.

    The :class:`~lightning_cl.evaluation.metric_matrix.MetricMatrix` of the metric
    ``"accuracy"`` whose :meth:`results` is a :class:`ContinualResults`. Rows are train
    experience indices in training order; ``None`` rows hold accuracies measured before any
    training (the baseline of forward transfer); the columns are the test experiences recorded.

    Example:
        >>> m = AccuracyMatrix()
        >>> m.record(0, 0, 0.5)
        >>> m.record(1, 0, 0.6)
        >>> m.results().tested, m.results().average_accuracy
        ([0], 0.6)
    """

    def __init__(self) -> None:
        self.matrix = MetricMatrix("accuracy", higher_is_better=True)

    def record(self, trained: int | None, tested: int, accuracy: float | Tensor) -> None:
        """See :meth:`MetricMatrix.record`."""
        self.matrix.record(trained, tested, accuracy)

    def record_stream(self, trained: int | None, accuracy: float | Tensor) -> None:
        """See :meth:`MetricMatrix.record_stream`."""
        self.matrix.record_stream(trained, accuracy)

    def record_per_class(self, trained: int | None, accuracies: Sequence[float] | Tensor) -> None:
        """See :meth:`MetricMatrix.record_per_class` (the input of AMCA)."""
        self.matrix.record_per_class(trained, accuracies)

    def mark_trained(self, trained: int, tested: int | Iterable[int]) -> None:
        """See :meth:`MetricMatrix.mark_trained`."""
        self.matrix.mark_trained(trained, tested)

    @property
    def initial(self) -> dict[int, float]:
        """The untrained model's accuracy by test experience."""
        return dict(self.matrix.initial)

    def results(self) -> ContinualResults:
        """The accuracy matrix so far and the metrics derived from it."""
        return ContinualResults({self.matrix.name: self.matrix.results()})

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`MetricMatrix.state_dict`."""
        return self.matrix.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """See :meth:`MetricMatrix.load_state_dict`; older states (``rows``, ``stream``, ``initial``) load."""
        self.matrix.load_state_dict(state)
