"""Recorders that fill a matrix per scalar metric as a run goes on."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_cl.evaluation.results import ContinualResults, MetricResults

__all__ = ["MetricMatrices", "MetricMatrix", "lower_is_better_by_name"]

LOWER_IS_BETTER_SUFFIXES = ("loss", "error")


def lower_is_better_by_name(name: str) -> bool:
    """The default direction of a metric named ``name``: lower is better for ``*loss`` and ``*error``.

    Args:
        name: the metric's name.

    Returns:
        ``True`` when the name ends with ``"loss"`` or ``"error"`` (any case).

    Example:
        >>> lower_is_better_by_name("val_loss"), lower_is_better_by_name("f1")
        (True, False)
    """
    return name.lower().endswith(LOWER_IS_BETTER_SUFFIXES)


def _index(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int, got {value!r}") from None


def _column(value: Any) -> int:
    column = _index(value, "the column (test experience index)")
    if column < 0:
        raise ValueError(f"the column (test experience index) must be >= 0, got {column}")
    return column


def _row(value: Any) -> int | None:
    """``None`` and ``-1`` stand for the untrained model (before the first experience)."""
    if value is None:
        return None
    row = _index(value, "the row (train experience index, or None before training)")
    if row == -1:
        return None
    if row < 0:
        raise ValueError(f"the row must be >= 0, or None / -1 before the first experience; got {row}")
    return row


def _columns(columns: int | Iterable[int]) -> list[int]:
    if isinstance(columns, Iterable):
        return sorted({_column(c) for c in columns})
    return [_column(columns)]


def _value(value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"a matrix value must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"a matrix value must be a real number, got {value!r}")
    return float(value)


class MetricMatrix:
    """Fills the matrix ``R[i][j]`` of one scalar metric as a run goes on.

    ``record(row, column, value)``: the value on test experience ``column`` after training
    train experience ``row`` (rows keep the order in which they were first recorded, the
    training order; recording a cell again overwrites it). ``row=None`` (or ``-1``) records the
    untrained model's value, the baseline of forward transfer. The columns of the results are
    the test experiences that were recorded, nothing else.

    Args:
        name: the metric's name.
        higher_is_better: its direction; ``None`` picks it from the name
            (:func:`lower_is_better_by_name`).

    Example:
        >>> m = MetricMatrix("accuracy")
        >>> m.record(0, 0, 0.5)
        >>> m.record(1, 0, 0.6)
        >>> r = m.results()
        >>> r.tested, r.average
        ([0], 0.6)
    """

    def __init__(self, name: str = "accuracy", higher_is_better: bool | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self.higher_is_better = (
            not lower_is_better_by_name(name) if higher_is_better is None else bool(higher_is_better)
        )
        self.rows: dict[int, dict[int, float]] = {}
        self.stream: dict[int, float] = {}
        self.initial: dict[int, float] = {}
        self.trained_on: dict[int, list[int]] = {}
        self.per_class: dict[int, list[float]] = {}

    def record(self, row: int | None, column: int, value: float | Tensor) -> None:
        """Record the value on test experience ``column`` after training experience ``row``.

        Args:
            row: the train experience index; ``None`` or ``-1``: before the first experience.
            column: the test experience index.
            value: a real number (or a one-element tensor).

        Raises:
            ValueError: for a row below ``-1``, a negative column, or a value that is not a real
                number.
        """
        r, c, v = _row(row), _column(column), _value(value)
        if r is None:
            self.initial[c] = v
        else:
            self.rows.setdefault(r, {})[c] = v

    def record_stream(self, row: int | None, value: float | Tensor) -> None:
        """Record the value over all samples of the test stream after training experience ``row``.

        Args:
            row: the train experience index (``None``: ignored, there is no stream baseline).
            value: a real number.

        Raises:
            ValueError: as :meth:`record`.
        """
        r, v = _row(row), _value(value)
        if r is not None:
            self.rows.setdefault(r, {})
            self.stream[r] = v

    def mark_trained(self, row: int, columns: int | Iterable[int]) -> None:
        """Say which test experiences' data row ``row`` trained on (the pairing of rows with columns).

        Without it, rows pair with columns by index when every row's index is a column's (the
        aligned streams of class- and domain-incremental benchmarks) and are unpaired otherwise;
        see :class:`MetricResults`. An online mini-experience marks its origin experience; a
        new-instances experience the one test experience; a joint run every column.

        Args:
            row: the train experience index.
            columns: one test experience index or several.

        Raises:
            ValueError: for a negative row or column.
        """
        r = _row(row)
        if r is None:
            raise ValueError("mark_trained needs a train experience index >= 0, got None / -1")
        self.rows.setdefault(r, {})
        self.trained_on[r] = _columns(columns)

    def record_per_class(self, row: int | None, values: Sequence[float] | Tensor) -> None:
        """Record the metric per class on the test stream after ``row`` (``nan``: class not measured).

        Args:
            row: the train experience index (``None``: ignored).
            values: one value per class (for example ``MulticlassAccuracy(average=None)``).

        Raises:
            ValueError: if ``values`` is not one-dimensional.
        """
        r = _row(row)
        t = torch.as_tensor(values, dtype=torch.float64)
        if t.ndim != 1:
            raise ValueError(f"per-class values must be 1-d, got shape {tuple(t.shape)}")
        if r is not None:
            self.rows.setdefault(r, {})
            self.per_class[r] = [float(v) for v in t]

    def results(self) -> MetricResults:
        """The matrix so far and its derived values.

        Returns:
            A :class:`MetricResults`: rows in training order, columns sorted.
        """
        trained = list(self.rows)
        tested = sorted({j for row in self.rows.values() for j in row} | set(self.initial))
        matrix = [[self.rows[i].get(j, math.nan) for j in tested] for i in trained]
        marked = bool(self.trained_on)
        return MetricResults(
            name=self.name,
            matrix=matrix,
            trained=trained,
            tested=tested,
            stream=[self.stream.get(i, math.nan) for i in trained],
            initial=[self.initial.get(j, math.nan) for j in tested],
            trained_on=[self.trained_on.get(i, []) for i in trained] if marked else None,
            higher_is_better=self.higher_is_better,
            per_class=[self.per_class[i] for i in trained if i in self.per_class],
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "rows": {i: dict(row) for i, row in self.rows.items()},
            "stream": dict(self.stream),
            "initial": dict(self.initial),
            "trained_on": {i: list(c) for i, c in self.trained_on.items()},
            "per_class": {i: list(v) for i, v in self.per_class.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the keys ``rows``, ``stream`` and ``initial`` suffice)."""
        self.name = str(state.get("name", self.name))
        self.higher_is_better = bool(state.get("higher_is_better", self.higher_is_better))
        self.rows = {int(i): {int(j): float(v) for j, v in row.items()} for i, row in state["rows"].items()}
        self.stream = {int(i): float(v) for i, v in state.get("stream", {}).items()}
        self.initial = {int(j): float(v) for j, v in state.get("initial", {}).items()}
        self.trained_on = {int(i): [int(j) for j in c] for i, c in state.get("trained_on", {}).items()}
        self.per_class = {int(i): [float(x) for x in v] for i, v in state.get("per_class", {}).items()}


class MetricMatrices:
    """One :class:`MetricMatrix` per metric name: what a callback records at test time.

    ``record(name, row, column, value)`` creates the metric's matrix on first use (its
    direction from the name unless declared with :meth:`add`); :meth:`mark_trained` pairs rows
    with columns for every metric at once. :meth:`results` gives a :class:`ContinualResults`.

    Example:
        >>> m = MetricMatrices()
        >>> for row, (acc, loss) in enumerate([(0.9, 0.3), (0.5, 1.2)]):
        ...     m.record("accuracy", row, 0, acc)
        ...     m.record("loss", row, 0, loss)
        >>> results = m.results()
        >>> round(results["accuracy"].forgetting, 4), round(results["loss"].forgetting, 4)
        (0.4, 0.9)
    """

    def __init__(self) -> None:
        self.matrices: dict[str, MetricMatrix] = {}
        self.tensors: dict[str, dict[int, dict[str, Tensor]]] = {}
        self._trained_on: dict[int, list[int]] = {}

    def add(self, name: str, higher_is_better: bool | None = None) -> MetricMatrix:
        """The matrix of metric ``name``, created (with that direction) if new.

        Args:
            name: the metric's name.
            higher_is_better: its direction; ``None``: from the name.

        Returns:
            The metric's :class:`MetricMatrix`.

        Raises:
            ValueError: if ``name`` exists with the other direction.
        """
        found = self.matrices.get(name)
        if found is not None:
            if higher_is_better is not None and found.higher_is_better != bool(higher_is_better):
                raise ValueError(
                    f"metric {name!r} is recorded with higher_is_better={found.higher_is_better}, "
                    f"got {higher_is_better}"
                )
            return found
        matrix = MetricMatrix(name, higher_is_better)
        for row, cols in self._trained_on.items():
            matrix.mark_trained(row, cols)
        self.matrices[name] = matrix
        return matrix

    def __getitem__(self, name: str) -> MetricMatrix:
        try:
            return self.matrices[name]
        except KeyError:
            raise KeyError(f"no metric {name!r}; recorded: {list(self.matrices)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.matrices

    def __iter__(self) -> Iterator[str]:
        return iter(self.matrices)

    def record(self, name: str, row: int | None, column: int, value: float | Tensor) -> None:
        """:meth:`MetricMatrix.record` on metric ``name``'s matrix."""
        self.add(name).record(row, column, value)

    def record_stream(self, name: str, row: int | None, value: float | Tensor) -> None:
        """:meth:`MetricMatrix.record_stream` on metric ``name``'s matrix."""
        self.add(name).record_stream(row, value)

    def record_per_class(self, name: str, row: int | None, values: Sequence[float] | Tensor) -> None:
        """:meth:`MetricMatrix.record_per_class` on metric ``name``'s matrix."""
        self.add(name).record_per_class(row, values)

    def record_tensor(self, name: str, row: int, where: str, value: Tensor | Sequence[Any]) -> None:
        """Keep a non-scalar value (a confusion matrix, per-class values) of metric ``name`` after ``row``.

        Args:
            name: the metric's name.
            row: the train experience index.
            where: ``"exp<j>"`` for test experience ``j``, ``"stream"`` for the whole test stream.
            value: the tensor (kept on the CPU as ``float64``).

        Raises:
            ValueError: for a row below 0, or ``where`` neither ``"stream"`` nor ``"exp<j>"``.

        Example:
            >>> m = MetricMatrices()
            >>> m.record_tensor("confusion", 0, "stream", torch.eye(2))
            >>> m.results().tensors["confusion"][0]["stream"].sum().item()
            2.0
        """
        r = _row(row)
        if r is None:
            raise ValueError("record_tensor needs a train experience index >= 0, got None / -1")
        where = str(where)
        if where != "stream" and not (where.startswith("exp") and where[3:].isdigit()):
            raise ValueError(
                f"record_tensor's where must be 'stream' or 'exp<j>' for test experience j (such as "
                f"'exp0'), got {where!r}"
            )
        t = torch.as_tensor(value).detach().to("cpu", torch.float64)
        self.tensors.setdefault(str(name), {}).setdefault(r, {})[where] = t

    def mark_trained(self, row: int, columns: int | Iterable[int]) -> None:
        """:meth:`MetricMatrix.mark_trained` for every metric, present and future."""
        r = _row(row)
        if r is None:
            raise ValueError("mark_trained needs a train experience index >= 0, got None / -1")
        cols = _columns(columns)
        self._trained_on[r] = cols
        for matrix in self.matrices.values():
            matrix.mark_trained(r, cols)

    def results(self) -> ContinualResults:
        """Every metric's :class:`MetricResults`, in the order first recorded."""
        return ContinualResults(
            {name: m.results() for name, m in self.matrices.items()}, tensors=self.tensors
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state: each metric's :meth:`MetricMatrix.state_dict` and the pairing."""
        return {
            "metrics": {name: m.state_dict() for name, m in self.matrices.items()},
            "trained_on": {i: list(c) for i, c in self._trained_on.items()},
            "tensors": {
                name: {i: {w: t.tolist() for w, t in row.items()} for i, row in rows.items()}
                for name, rows in self.tensors.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.matrices = {}
        for name, sub in state["metrics"].items():
            matrix = MetricMatrix(str(name))
            matrix.load_state_dict(sub)
            self.matrices[str(name)] = matrix
        self._trained_on = {int(i): [int(j) for j in c] for i, c in state.get("trained_on", {}).items()}
        self.tensors = {
            str(name): {
                int(i): {str(w): torch.tensor(v, dtype=torch.float64) for w, v in row.items()}
                for i, row in rows.items()
            }
            for name, rows in state.get("tensors", {}).items()
        }
