"""What a run measured: one metric's matrix and derived values, and all metrics of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_cl.evaluation import cl_metrics
from lightning_cl.evaluation.cl_metrics import TrainedOn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ContinualResults", "MetricResults"]

PRIMARY = "accuracy"
DERIVED = ("average", "seen_average", "forgetting", "forgetting_per_experience", "bwt", "fwt", "amca")


def _cell(value: float) -> str:
    """One table cell, 8 characters wide: 3 decimals, or scientific notation for large values."""
    if math.isnan(value):
        return "     -  "
    if abs(value) >= 1e4:
        text = f"{value:.1e}" if len(f"{value:.1e}") <= 7 else f"{value:.0e}"
        return f"{text:>8}"
    return f"{value:8.3f}"


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def _nested(value: Any) -> Any:
    """A nested list of floats with ``nan`` as ``None`` (valid JSON)."""
    if isinstance(value, list):
        return [_nested(v) for v in value]
    return _none_if_nan(float(value))


def _unnested(value: Any) -> Any:
    if isinstance(value, list):
        return [_unnested(v) for v in value]
    return _nan_if_none(value)


@dataclass(eq=False)
class MetricResults:
    """One scalar metric measured over a stream: its matrix and the CL metrics derived from it.

    The derived values are properties computed from the fields with the functions of
    :mod:`lightning_cl.evaluation.cl_metrics`, whose docstrings hold the formulas.

    **Pairing of rows with columns** (:attr:`pairing`): ``trained_on`` when given (what the
    recorder was told with ``mark_trained``); otherwise, when every row's experience index is
    also a column's, row ``i`` trained column ``i`` (train and test streams aligned, as in
    class- and domain-incremental benchmarks, also mid-stream); otherwise ``"unknown"`` (online
    and new-instances streams recorded without ``mark_trained``: more rows than columns). An online
    stream recorded without ``mark_trained`` pairs by index as long as its rows are no more than
    the test experiences, which is wrong for it: online recorders should call ``mark_trained``.

    Attributes:
        name: the metric's name (``"accuracy"``, ``"loss"``, ``"f1"``, ...).
        matrix: ``R[i][j]``, the value on column ``j`` after row ``i``; ``nan`` where not measured.
        trained: the train experience index of each row, in training order.
        tested: the test experience index of each column (the columns that were recorded).
        stream: per row, the value over all samples of the test stream (``nan`` if not recorded).
        initial: per column, the untrained model's value (``nan`` if not recorded).
        trained_on: per row, the test experience indices it trained on; ``None``: not recorded.
        higher_is_better: the metric's direction (``False`` for the loss).
        per_class: per row, the metric per class on the test stream (for AMCA); may be empty.

    Example:
        >>> r = MetricResults("accuracy", [[0.9, 0.1], [0.6, 0.8]], trained=[0, 1], tested=[0, 1])
        >>> r.average, round(r.forgetting, 4), round(r.bwt, 4)
        (0.7, 0.3, -0.3)
    """

    name: str
    matrix: list[list[float]]
    trained: list[int]
    tested: list[int]
    stream: list[float] = field(default_factory=list)
    initial: list[float] = field(default_factory=list)
    trained_on: list[list[int]] | None = None
    higher_is_better: bool = True
    per_class: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.matrix) != len(self.trained):
            raise ValueError(f"matrix has {len(self.matrix)} rows but trained names {len(self.trained)}")
        bad = [k for k, row in enumerate(self.matrix) if len(row) != len(self.tested)]
        if bad:
            raise ValueError(
                f"rows {bad} of the matrix do not have one value per tested column ({len(self.tested)})"
            )
        if self.trained_on is not None and len(self.trained_on) != len(self.trained):
            raise ValueError(
                f"trained_on needs one entry per row ({len(self.trained)}), got {len(self.trained_on)}"
            )
        if not self.stream:
            self.stream = [math.nan] * len(self.trained)
        if not self.initial:
            self.initial = [math.nan] * len(self.tested)
        if len(self.stream) != len(self.trained):
            raise ValueError(f"stream needs one value per row ({len(self.trained)}), got {len(self.stream)}")
        if len(self.initial) != len(self.tested):
            raise ValueError(
                f"initial needs one value per tested column ({len(self.tested)}), got {len(self.initial)}"
            )

    # ------------------------------------------------------------------ views
    @property
    def tensor(self) -> Tensor:
        """The matrix as a ``float64`` tensor of shape ``(len(trained), len(tested))``."""
        return torch.tensor(self.matrix, dtype=torch.float64).reshape(len(self.trained), len(self.tested))

    @property
    def pairing_source(self) -> str:
        """How rows were paired with columns: ``"marked"``, ``"labels"`` or ``"unknown"``."""
        if self.trained_on is not None:
            return "marked"
        if self.trained and set(self.trained) <= set(self.tested):
            return "labels"
        return "unknown"

    @property
    def pairing(self) -> TrainedOn:
        """The pairing as the ``trained_on`` argument of :mod:`~lightning_cl.evaluation.cl_metrics`."""
        source = self.pairing_source
        position = {j: k for k, j in enumerate(self.tested)}
        if source == "marked":
            assert self.trained_on is not None
            return [[position[j] for j in cols if j in position] for cols in self.trained_on]
        if source == "labels":
            return [[position[i]] for i in self.trained]
        return "unknown"

    # ------------------------------------------------------------------ derived values
    @property
    def average(self) -> float:
        """See :func:`~lightning_cl.evaluation.cl_metrics.average`."""
        return cl_metrics.average(self.tensor)

    @property
    def seen_average(self) -> float:
        """See :func:`~lightning_cl.evaluation.cl_metrics.seen_average`."""
        return cl_metrics.seen_average(self.tensor, trained_on=self.pairing)

    @property
    def forgetting_per_experience(self) -> dict[int, float]:
        """``{test experience index: f_j}``; see :func:`.cl_metrics.forgetting_per_experience`."""
        per = cl_metrics.forgetting_per_experience(
            self.tensor, trained_on=self.pairing, higher_is_better=self.higher_is_better
        )
        return {self.tested[j]: v for j, v in per.items()}

    @property
    def forgetting(self) -> float:
        """See :func:`~lightning_cl.evaluation.cl_metrics.forgetting`."""
        return cl_metrics.forgetting(
            self.tensor, trained_on=self.pairing, higher_is_better=self.higher_is_better
        )

    @property
    def bwt(self) -> float:
        """See :func:`~lightning_cl.evaluation.cl_metrics.backward_transfer`."""
        return cl_metrics.backward_transfer(
            self.tensor, trained_on=self.pairing, higher_is_better=self.higher_is_better
        )

    @property
    def fwt(self) -> float:
        """See :func:`~lightning_cl.evaluation.cl_metrics.forward_transfer`; needs :attr:`initial`."""
        return cl_metrics.forward_transfer(
            self.tensor, self.initial, trained_on=self.pairing, higher_is_better=self.higher_is_better
        )

    @property
    def amca(self) -> float:
        """See :func:`~lightning_cl.evaluation.cl_metrics.amca`; needs :attr:`per_class`."""
        if not self.per_class:
            return math.nan
        width = max(len(row) for row in self.per_class)
        padded = [list(row) + [math.nan] * (width - len(row)) for row in self.per_class]
        return cl_metrics.amca(padded)

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view: the fields, then the derived values; ``nan`` becomes ``None``."""
        data: dict[str, Any] = {
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "matrix": [[_none_if_nan(v) for v in row] for row in self.matrix],
            "trained": list(self.trained),
            "tested": list(self.tested),
            "stream": [_none_if_nan(v) for v in self.stream],
            "initial": [_none_if_nan(v) for v in self.initial],
            "trained_on": None if self.trained_on is None else [list(c) for c in self.trained_on],
            "per_class": [[_none_if_nan(v) for v in row] for row in self.per_class],
            "pairing_source": self.pairing_source,
        }
        for name in DERIVED:
            value = getattr(self, name)
            if isinstance(value, dict):
                data[name] = {str(k): _none_if_nan(v) for k, v in value.items()}
            else:
                data[name] = _none_if_nan(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> MetricResults:
        """Rebuild from :meth:`to_dict`'s output (derived values are recomputed, not read).

        Args:
            data: the dict.
            name: the metric's name when ``data`` has no ``"name"``.

        Returns:
            The results.

        Raises:
            ValueError: if ``data`` lacks ``matrix``, ``trained`` or ``tested``.

        Example:
            >>> r = MetricResults("loss", [[0.5]], [0], [0], higher_is_better=False)
            >>> MetricResults.from_dict(r.to_dict()) == r
            True
        """
        missing = [k for k in ("matrix", "trained", "tested") if k not in data]
        if missing:
            raise ValueError(f"metric results need the keys {missing}; got {sorted(data)}")
        trained_on = data.get("trained_on")
        return cls(
            name=str(data.get("name", name if name is not None else PRIMARY)),
            matrix=[[_nan_if_none(v) for v in row] for row in data["matrix"]],
            trained=[int(i) for i in data["trained"]],
            tested=[int(j) for j in data["tested"]],
            stream=[_nan_if_none(v) for v in data.get("stream") or []],
            initial=[_nan_if_none(v) for v in data.get("initial") or []],
            trained_on=None if trained_on is None else [[int(j) for j in c] for c in trained_on],
            higher_is_better=bool(data.get("higher_is_better", True)),
            per_class=[[_nan_if_none(v) for v in row] for row in data.get("per_class") or []],
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricResults):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    # ------------------------------------------------------------------ text
    def table(self) -> str:
        """The matrix (and the stream column) and the derived values as fixed-width text."""
        head = "after \\ test " + "".join(f"{'exp ' + str(j):>8}" for j in self.tested) + f"{'stream':>9}"
        title = self.name[:1].upper() + self.name[1:]
        if not self.tested and self.per_class:
            # A non-scalar metric kept per class only (class accuracy): no matrix, its AMCA.
            return f"{title}: per-class values after each of {len(self.trained)} rows | AMCA {self.amca:.4f}"
        lines = [
            f"{title} matrix R[i, j]: row = after training experience i, column = test experience j",
            head,
        ]
        if any(not math.isnan(v) for v in self.initial):
            cells = "".join(_cell(v) for v in self.initial)
            lines.append(f"{'untrained':<13}{cells}")
        for k, (i, row) in enumerate(zip(self.trained, self.matrix)):
            cells = "".join(_cell(v) for v in row)
            stream = self.stream[k] if k < len(self.stream) else math.nan
            lines.append(f"{'exp ' + str(i):<13}{cells}{'' if math.isnan(stream) else ' ' + _cell(stream)}")
        summary = (
            f"average {self.name} {self.average:.4f} | seen so far {self.seen_average:.4f} | "
            f"forgetting {self.forgetting:.4f} | BWT {self.bwt:.4f} | FWT {self.fwt:.4f}"
        )
        if self.per_class:
            summary += f" | AMCA {self.amca:.4f}"
        if not self.higher_is_better:
            summary += " (lower is better; forgetting > 0 means it rose)"
        lines.append(summary)
        return "\n".join(lines)


class ContinualResults(Mapping[str, MetricResults]):
    """Every metric a continual-learning run measured, by name, ready to print, save or plot.

    A read-only mapping from metric name to :class:`MetricResults`
    (``results["f1"].forgetting``); the accuracy's values are also attributes
    (``results.average_accuracy``, ``results.accuracy_matrix``, ...), ``nan`` or empty when no
    accuracy was recorded.

    Non-scalar values (a stream's confusion matrix, per-class accuracies) are in
    :attr:`tensors`: ``results.tensors["confusion"][row]["stream"]``.

    Args:
        metrics: the metrics, by name; their order is the table's.
        tensors: per metric name, per row (train experience index), per place (``"exp<j>"``,
            ``"stream"``), a tensor.

    Example:
        >>> acc = MetricResults("accuracy", [[0.9, 0.1], [0.6, 0.8]], trained=[0, 1], tested=[0, 1])
        >>> results = ContinualResults({"accuracy": acc})
        >>> results["accuracy"] is acc, results.average_accuracy, results.tested
        (True, 0.7, [0, 1])
        >>> ContinualResults.from_dict(results.to_dict()) == results
        True
    """

    def __init__(
        self,
        metrics: Mapping[str, MetricResults] | None = None,
        tensors: Mapping[str, Mapping[int, Mapping[str, Tensor]]] | None = None,
    ) -> None:
        self.metrics: dict[str, MetricResults] = dict(metrics or {})
        self.tensors: dict[str, dict[int, dict[str, Tensor]]] = {
            str(name): {
                int(row): {str(w): torch.as_tensor(v, dtype=torch.float64) for w, v in places.items()}
                for row, places in rows.items()
            }
            for name, rows in (tensors or {}).items()
        }
        for key, value in self.metrics.items():
            if not isinstance(value, MetricResults):
                raise ValueError(f"metric {key!r} must be a MetricResults, got {type(value).__name__}")

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, name: str) -> MetricResults:
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(f"no metric {name!r}; the results hold {list(self.metrics)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContinualResults):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def _accuracy(self) -> MetricResults:
        found = self.metrics.get(PRIMARY)
        return found if found is not None else MetricResults(PRIMARY, [], [], [])

    # ------------------------------------------------------------------ the accuracy's values
    @property
    def accuracy_matrix(self) -> list[list[float]]:
        """The accuracy matrix ``R[i][j]`` (``nan`` where not measured)."""
        return self._accuracy.matrix

    @property
    def matrix(self) -> Tensor:
        """The accuracy matrix as a ``float64`` tensor."""
        return self._accuracy.tensor

    @property
    def trained(self) -> list[int]:
        """The train experience index of each row."""
        return self._accuracy.trained

    @property
    def tested(self) -> list[int]:
        """The test experience index of each column."""
        return self._accuracy.tested

    @property
    def stream_accuracy(self) -> list[float]:
        """Per row, the accuracy over all samples of the test stream."""
        return self._accuracy.stream

    @property
    def average_accuracy(self) -> float:
        """:attr:`MetricResults.average` of the accuracy."""
        return self._accuracy.average

    @property
    def seen_accuracy(self) -> float:
        """:attr:`MetricResults.seen_average` of the accuracy."""
        return self._accuracy.seen_average

    @property
    def forgetting(self) -> float:
        """:attr:`MetricResults.forgetting` of the accuracy."""
        return self._accuracy.forgetting

    @property
    def bwt(self) -> float:
        """:attr:`MetricResults.bwt` of the accuracy."""
        return self._accuracy.bwt

    @property
    def fwt(self) -> float:
        """:attr:`MetricResults.fwt` of the accuracy."""
        return self._accuracy.fwt

    @property
    def amca(self) -> float:
        """:attr:`MetricResults.amca` of the accuracy."""
        return self._accuracy.amca

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view; ``nan`` becomes ``None`` so the result is valid JSON.

        The top-level keys are the accuracy's attributes of this class (``accuracy_matrix``,
        ``trained``, ``tested``, ``stream_accuracy``, ``average_accuracy``, ``seen_accuracy``,
        ``forgetting``, ``bwt``, ``fwt``, ``amca``); ``metrics`` holds every metric's
        :meth:`MetricResults.to_dict`; ``tensors`` the non-scalar values as nested lists
        (``{name: {row: {"exp<j>" | "stream": [...]}}}``).
        """
        acc = self._accuracy
        return {
            "accuracy_matrix": [[_none_if_nan(v) for v in row] for row in acc.matrix],
            "trained": list(acc.trained),
            "tested": list(acc.tested),
            "stream_accuracy": [_none_if_nan(v) for v in acc.stream],
            "average_accuracy": _none_if_nan(acc.average),
            "seen_accuracy": _none_if_nan(acc.seen_average),
            "forgetting": _none_if_nan(acc.forgetting),
            "bwt": _none_if_nan(acc.bwt),
            "fwt": _none_if_nan(acc.fwt),
            "amca": _none_if_nan(acc.amca),
            "metrics": {name: m.to_dict() for name, m in self.metrics.items()},
            "tensors": {
                name: {
                    str(row): {w: _nested(t.tolist()) for w, t in places.items()}
                    for row, places in rows.items()
                }
                for name, rows in self.tensors.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinualResults:
        """Rebuild from :meth:`to_dict`'s output, or from the older layout with accuracy only.

        Args:
            data: the dict (for example ``json.load`` of a ``results.json``).

        Returns:
            The results; derived values are recomputed from the matrices.

        Raises:
            ValueError: if ``data`` holds neither ``metrics`` nor ``accuracy_matrix``.

        Example:
            >>> ContinualResults.from_dict({"accuracy_matrix": [[0.5], [0.6]], "trained": [0, 1],
            ...                             "tested": [0]}).average_accuracy
            0.6
        """
        if "metrics" in data:
            tensors = {
                name: {
                    int(row): {w: torch.tensor(_unnested(v), dtype=torch.float64) for w, v in places.items()}
                    for row, places in rows.items()
                }
                for name, rows in (data.get("tensors") or {}).items()
            }
            return cls(
                {name: MetricResults.from_dict(m, name) for name, m in data["metrics"].items()},
                tensors=tensors,
            )
        if "accuracy_matrix" not in data:
            raise ValueError(f"results need a 'metrics' or an 'accuracy_matrix' key; got {sorted(data)}")
        matrix = data["accuracy_matrix"]
        trained = data.get("trained", data.get("trained_experiences", list(range(len(matrix)))))
        tested = data.get(
            "tested", data.get("test_experiences", list(range(len(matrix[0]) if matrix else 0)))
        )
        legacy = {
            "matrix": matrix,
            "trained": trained,
            "tested": tested,
            "stream": data.get("stream_accuracy"),
        }
        return cls({PRIMARY: MetricResults.from_dict(legacy, PRIMARY)})

    def to_json(self, path: str | Path | None = None) -> str:
        """The results as JSON text (:meth:`to_dict`); also written to ``path`` when given.

        Args:
            path: the file to write (parents must exist).

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> ContinualResults:
        """Read results written by :meth:`to_json`.

        Args:
            source: a path to a JSON file, or the JSON text itself.

        Returns:
            The results (``ContinualResults.from_json(p) == results`` after ``results.to_json(p)``).

        Raises:
            ValueError: if ``source`` is neither JSON results (an object, as ``to_json`` writes)
                nor the path of a file holding them.
        """
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise ValueError(
                    f"{text!s:.80} is neither JSON results (an object, as to_json writes) nor a file"
                )
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not JSON results ({source!s:.80}): {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"JSON results must be an object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (AttributeError, TypeError, KeyError) as err:
            raise ValueError(f"not JSON results ({source!s:.80}): {type(err).__name__}: {err}") from err

    # ------------------------------------------------------------------ text and figures
    def table(self) -> str:
        """Each metric's matrix and derived values as fixed-width text, accuracy first."""
        names = sorted(self.metrics, key=lambda n: n != PRIMARY)
        if not names:
            return self._accuracy.table()
        return "\n\n".join(self.metrics[n].table() for n in names)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"ContinualResults({self.to_json()})"

    def plot(self, metric: str = PRIMARY, ax: Axes | None = None, path: str | Path | None = None) -> Figure:
        """Draw one metric's matrix as an annotated heat map (:func:`.plots.plot_matrix`).

        Args:
            metric: the metric's name.
            ax: axes to draw on; a new figure when ``None``.
            path: also save the figure there (PNG by the suffix).

        Returns:
            The figure.
        """
        from lightning_cl.evaluation.plots import plot_matrix

        return plot_matrix(
            self[metric] if self.metrics or metric != PRIMARY else self._accuracy, ax=ax, path=path
        )
