"""The metrics of one evaluation: per test experience, per task label, and over the whole stream.

A user chooses any torchmetrics ``Metric`` (or a ``MetricCollection``); :class:`StreamMetrics`
keeps one copy of each per test experience (and per task label in an experience that mixes
tasks) and gives the stream's value as the metric over **all** the stream's samples: the
experiences' states merged (``Metric.merge_state``), not a mean of their values, which is
wrong for F1, top-k recall or a confusion matrix. Under DDP each value comes from
torchmetrics' own synchronisation at ``compute``, so 2 processes give the values of one.

Which input a metric gets: an aggregation metric (``MeanMetric``, ``SumMetric``, ``MaxMetric``,
... from ``torchmetrics.aggregation``) receives the loss (per sample in evaluation, the batch's
in training); every other metric receives ``(logits, targets)``, as torchmetrics'
classification metrics take them (``MulticlassAccuracy(top_k=5)`` needs the logits).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.aggregation import BaseAggregator
from torchmetrics.classification import MulticlassAccuracy

from lightning_cl.evaluation.metric_matrix import MetricMatrices

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_SCOPES",
    "Measurement",
    "StreamMetrics",
    "default_metrics",
    "matrix_name",
    "metric_dict",
    "pad_logits",
    "record_measurements",
    "takes_loss",
]

DEFAULT_METRICS = ("acc", "loss")
_FLUSH_VALUES = 1 << 22  # deferred logit values held at most (float32: 16 MB)
"""The metrics every evaluation measures: accuracy and the cross-entropy loss."""

METRIC_SCOPES = ("minibatch", "epoch", "experience", "stream")
"""Where a user's metric is measured: each training step, each training epoch, each test (or
validation) experience, the whole test stream."""

# The logits of classes a dynamic head cannot output yet: never the argmax, ~0 after softmax.
_MASK_VALUE = -1e9
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def matrix_name(name: str) -> str:
    """The name of a logged metric's matrix in the results (``"acc"`` is ``"accuracy"``).

    Example:
        >>> matrix_name("acc"), matrix_name("f1")
        ('accuracy', 'f1')
    """
    return "accuracy" if name == "acc" else name


def takes_loss(metric: Metric) -> bool:
    """Whether ``metric`` is updated with the loss (an aggregation metric) rather than ``(logits, targets)``.

    Example:
        >>> from torchmetrics import MeanMetric
        >>> from torchmetrics.classification import MulticlassF1Score
        >>> takes_loss(MeanMetric()), takes_loss(MulticlassF1Score(num_classes=3))
        (True, False)
    """
    return isinstance(metric, BaseAggregator)


def default_metrics(n_classes: int) -> dict[str, Metric]:
    """Accuracy (``"acc"``, micro: the fraction of samples right) and the mean loss (``"loss"``).

    Args:
        n_classes: the number of classes of the benchmark.

    Returns:
        ``{"acc": MulticlassAccuracy, "loss": MeanMetric}``.

    Example:
        >>> sorted(default_metrics(10))
        ['acc', 'loss']
    """
    return {
        "acc": MulticlassAccuracy(num_classes=n_classes, average="micro", validate_args=False),
        "loss": MeanMetric(),
    }


def metric_dict(
    metrics: Metric | MetricCollection | Mapping[str, Metric] | Sequence[Metric] | None,
) -> dict[str, Metric]:
    """The user's metrics by name.

    Args:
        metrics: one ``Metric`` (named by its class, as ``MetricCollection`` names it), a
            ``MetricCollection`` (its keys), a mapping ``{name: Metric}``, a list of metrics, or
            ``None``.

    Returns:
        ``{name: Metric}`` (the objects given, not copies).

    Raises:
        ValueError: for a value that is not a torchmetrics ``Metric``, a name that is one of
            :data:`DEFAULT_METRICS` (they are always measured) or holds other characters than
            letters, digits, ``_``, ``-`` and ``.`` (names become logger keys such as
            ``test/<name>/exp0``), or two metrics of one name.

    Example:
        >>> from torchmetrics.classification import MulticlassF1Score
        >>> list(metric_dict({"f1": MulticlassF1Score(num_classes=3)}))
        ['f1']
        >>> list(metric_dict(MulticlassF1Score(num_classes=3)))
        ['MulticlassF1Score']
    """
    if metrics is None:
        return {}
    if isinstance(metrics, Metric):
        items: list[tuple[str, Any]] = [(type(metrics).__name__, metrics)]
    elif isinstance(metrics, MetricCollection):
        items = list(metrics.items(keep_base=False, copy_state=False))
    elif isinstance(metrics, Mapping):
        items = [(str(k), v) for k, v in metrics.items()]
    elif isinstance(metrics, Iterable) and not isinstance(metrics, (str, bytes)):
        items = [(type(m).__name__, m) for m in metrics]
    else:
        raise ValueError(
            "metrics must be a torchmetrics Metric, a MetricCollection, a dict {name: Metric} or a list "
            f"of metrics, got {type(metrics).__name__}"
        )
    out: dict[str, Metric] = {}
    for name, metric in items:
        if not isinstance(metric, Metric):
            raise ValueError(f"metric {name!r} must be a torchmetrics Metric, got {type(metric).__name__}")
        taken = {*DEFAULT_METRICS, *(matrix_name(d) for d in DEFAULT_METRICS)}
        if name in taken:
            raise ValueError(
                f"metric name {name!r} is taken: {DEFAULT_METRICS} are always measured (their results "
                f"are named {tuple(matrix_name(d) for d in DEFAULT_METRICS)}); name yours otherwise"
            )
        if not _NAME.match(name):
            raise ValueError(
                f"metric name {name!r} must hold only letters, digits, '_', '-' and '.' (it becomes a "
                "logger key such as test/<name>/exp0)"
            )
        if name in out:
            raise ValueError(f"two metrics are named {name!r}")
        out[name] = metric
    return out


def _mergeable(metric: Metric) -> bool:
    return metric.full_state_update is False and not metric.dist_sync_on_step


def _fresh(metric: Metric) -> Metric:
    clone = copy.deepcopy(metric)
    clone.reset()
    return clone


def pad_logits(logits: Tensor, n_classes: int) -> Tensor:
    """Logits widened to ``n_classes`` columns (a dynamic head before its later classes exist).

    Example:
        >>> pad_logits(torch.zeros(2, 3), 5).shape
        torch.Size([2, 5])
    """
    width = logits.shape[-1]
    if width >= n_classes:
        return logits
    return F.pad(logits, (0, n_classes - width), value=_MASK_VALUE)


@dataclass
class Measurement:
    """One value an evaluation measured.

    Attributes:
        name: the metric's name (``"acc"``, ``"loss"``, the user's key).
        column: the test experience index; ``None`` for the stream.
        task: the task label, for the value on one task of an experience that mixes tasks.
        value: what the metric's ``compute`` returned (a scalar, a per-class vector, a matrix).
    """

    name: str
    column: int | None
    value: Tensor
    task: int | None = None

    @property
    def scalar(self) -> bool:
        """Whether the value is one number (it then has a matrix and a logger key)."""
        return self.value.numel() == 1

    def key(self, stage: str) -> str:
        """The logger key: ``<stage>/<name>/exp<j>``, ``.../exp<j>/task<t>`` or ``<stage>/<name>/stream``."""
        where = "stream" if self.column is None else f"exp{self.column}"
        task = "" if self.task is None else f"/task{self.task}"
        return f"{stage}/{self.name}/{where}{task}"


class _Held:
    """What :class:`StreamMetrics` holds between updates: batches not yet in the deferred metrics."""

    __slots__ = ("clean", "pending", "values")

    def __init__(self, pending: list[list[tuple[Tensor, Tensor, Tensor | None]]]):
        self.pending = pending  # per column: (logits, targets, per-sample losses or None)
        self.values = 0  # logit values held
        self.clean = True  # no update since the last reset (or since construction)


class StreamMetrics(nn.Module):
    """The metrics of one evaluation run (a ``trainer.test`` or a validation epoch) over a stream.

    Holds a fresh copy of every metric per column (test experience), per task label of a column
    whose experience mixes tasks, and, for metrics whose states cannot be merged, one for the
    stream. :meth:`update` takes a batch's logits, targets, task labels and per-sample losses;
    :meth:`compute` gives every value as a :class:`Measurement` and resets the states.

    Args:
        metrics: the user's metrics by name (see :func:`metric_dict`); the defaults
            (:func:`default_metrics`) are added in front.
        columns: the test experience index of each dataloader (``dataloader_idx`` = position).
        n_classes: the benchmark's number of classes; narrower logits are padded to it.
        scopes: where the user's metrics are measured: ``"experience"`` and/or ``"stream"``
            (the defaults are measured at both).
        task_labels: per column, the task labels of an experience that holds several; each then
            gets its values per task too.

    Raises:
        ValueError: for a scope outside ``("experience", "stream")``.

    Example:
        >>> from torchmetrics.classification import MulticlassF1Score
        >>> tracker = StreamMetrics({"f1": MulticlassF1Score(num_classes=2, average="macro")},
        ...                         columns=[0, 1], n_classes=2)
        >>> y = torch.tensor([0, 1])
        >>> tracker.update(0, torch.tensor([[2.0, 0.0], [1.0, 0.0]]), y, torch.zeros(2, dtype=torch.long))
        >>> tracker.update(1, torch.tensor([[0.0, 1.0], [0.0, 3.0]]), y, torch.zeros(2, dtype=torch.long))
        >>> values = {m.key("test"): round(float(m.value), 4) for m in tracker.compute()}
        >>> values["test/f1/exp0"], values["test/f1/exp1"], values["test/f1/stream"]
        (0.3333, 0.3333, 0.5)
    """

    def __init__(
        self,
        metrics: Mapping[str, Metric],
        columns: Sequence[int],
        n_classes: int,
        *,
        scopes: Sequence[str] = ("experience", "stream"),
        task_labels: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        bad = [s for s in scopes if s not in ("experience", "stream")]
        if bad:
            raise ValueError(f"evaluation scopes must be among ('experience', 'stream'), got {bad}")
        self.columns = [int(c) for c in columns]
        self.n_classes = int(n_classes)
        self.scopes = tuple(scopes)
        self.task_labels = {int(c): sorted(int(t) for t in ts) for c, ts in (task_labels or {}).items()}
        user = dict(metrics)
        templates = {**default_metrics(self.n_classes), **user}

        def fresh(names: Iterable[str]) -> nn.ModuleDict:
            # The defaults are built anew (cheaper than a copy); the user's metrics are copied.
            built = default_metrics(self.n_classes)
            return nn.ModuleDict({n: built[n] if n in built else _fresh(templates[n]) for n in names})

        self.names = list(templates)
        self.in_experience = [n for n in self.names if n in DEFAULT_METRICS or "experience" in scopes]
        self.in_stream = [n for n in self.names if n in DEFAULT_METRICS or "stream" in scopes]
        # Stream values merged from the experiences' states, or updated on their own.
        self.merged = [n for n in self.in_stream if n in self.in_experience and _mergeable(templates[n])]
        direct = [n for n in self.in_stream if n not in self.merged]
        self.loss_input = {n for n, m in templates.items() if takes_loss(m)}
        self.per_column = nn.ModuleList([fresh(self.in_experience) for _ in self.columns])
        # The stream's metrics: those filled by merging the experiences' states at `compute`,
        # and those updated by every batch.
        self.stream_merged = fresh(self.merged)
        self.stream = fresh(direct)
        tasks = {c: ts for c, ts in self.task_labels.items() if len(ts) > 1}
        self.tasks = [tasks.get(c, []) for c in self.columns]
        self.per_task = nn.ModuleList(
            [nn.ModuleDict({str(t): fresh(self.in_experience) for t in ts}) for ts in self.tasks]
        )
        # The default accuracy and loss of each column are updated once per evaluation from the
        # batches' logits and targets, concatenated (the same states as one update per batch:
        # micro accuracy and the mean are sums), with one argmax and one cross-entropy over them,
        # instead of once per batch: a torchmetrics update costs more Python than the model's
        # forward on small batches.
        self.deferred = [n for n in DEFAULT_METRICS if n not in user and n in self.in_experience]
        self._immediate = [
            {n: m for n, m in cast(Mapping[str, Metric], column).items() if n not in self.deferred}
            for column in self.per_column
        ]
        # The per-sample loss is needed at `update` only by metrics updated there: the user's
        # aggregation metrics, the stream's own, and those per task label.
        now = {n for column in self._immediate for n in column} | set(direct)
        if any(self.tasks):
            now |= set(self.in_experience)
        self._loss_now = bool(self.loss_input & now)
        # Bookkeeping changed per batch lives outside the module's attributes (whose assignment
        # goes through nn.Module.__setattr__).
        self._held = _Held([[] for _ in self.columns])

    @property
    def device(self) -> torch.device:
        """Where the metrics' states are (they move together, with ``.to``)."""
        return next(m for m in self.modules() if isinstance(m, Metric)).device

    def _flush(self) -> None:
        """Update the deferred metrics with the batches held since the last flush."""
        held = self._held
        for column, pending in zip(self.per_column, held.pending):
            if not pending:
                continue
            metrics = cast(Mapping[str, Metric], column)
            logits = torch.cat([x for x, _, _ in pending]) if len(pending) > 1 else pending[0][0]
            target = torch.cat([y for _, y, _ in pending]) if len(pending) > 1 else pending[0][1]
            if "acc" in self.deferred:
                metrics["acc"].update(logits.argmax(dim=-1), target)
            if "loss" in self.deferred:
                given = [loss is not None for _, _, loss in pending]
                if not any(given):
                    losses = F.cross_entropy(logits.float(), target, reduction="none")
                elif all(given):
                    losses = torch.cat([cast(Tensor, loss) for _, _, loss in pending])
                else:
                    losses = torch.cat(
                        [
                            F.cross_entropy(x.float(), y, reduction="none") if loss is None else loss
                            for x, y, loss in pending
                        ]
                    )
                metrics["loss"].update(losses)
            pending.clear()
        held.values = 0

    def _update(
        self, metrics: Mapping[str, Metric], logits: Tensor, target: Tensor, loss: Tensor | None
    ) -> None:
        for name, metric in metrics.items():
            if name in self.loss_input:
                metric.update(loss)
            else:
                metric.update(logits, target)

    def update(
        self,
        dataloader_idx: int,
        logits: Tensor,
        target: Tensor,
        task_labels: Tensor,
        loss: Tensor | None = None,
    ) -> None:
        """Update the metrics of the column of ``dataloader_idx`` (and the stream's) with one batch.

        Args:
            dataloader_idx: the position of the test experience in :attr:`columns`.
            logits: shape ``(N, C)``; padded to ``n_classes`` when narrower.
            target: shape ``(N,)``.
            task_labels: shape ``(N,)``.
            loss: per-sample losses, shape ``(N,)``; the cross-entropy of ``logits`` when ``None``.
        """
        held = self._held
        held.clean = False
        logits = pad_logits(logits, self.n_classes)
        if loss is None and self._loss_now:
            loss = F.cross_entropy(logits.float(), target, reduction="none")
        if self.deferred:
            kept = None if loss is None else loss.detach()
            held.pending[dataloader_idx].append((logits.detach(), target, kept))
            held.values += logits.numel()
            if held.values >= _FLUSH_VALUES:
                self._flush()
            self._update(self._immediate[dataloader_idx], logits, target, loss)
        else:
            self._update(self.per_column[dataloader_idx], logits, target, loss)  # type: ignore[arg-type]
        if self.stream:
            self._update(self.stream, logits, target, loss)  # type: ignore[arg-type]
        tasks = self.tasks[dataloader_idx]
        if tasks:
            by_task = cast(nn.ModuleDict, self.per_task[dataloader_idx])
            for t in tasks:
                mask = task_labels == t
                if bool(mask.any()):
                    self._update(
                        cast(Mapping[str, Metric], by_task[str(t)]),
                        logits[mask],
                        target[mask],
                        None if loss is None else loss[mask],
                    )

    @staticmethod
    def _measured(metric: Metric, world_size: int) -> bool:
        # Under DDP every rank computes (torchmetrics' synchronisation is a collective call).
        return world_size > 1 or metric.update_count > 0

    def compute(self, world_size: int = 1) -> list[Measurement]:
        """Every value of this evaluation, then reset every state.

        Columns without any batch are left out (in one process; under DDP every rank computes
        every column, since torchmetrics' synchronisation is a collective call).

        Args:
            world_size: the number of processes.

        Returns:
            The measurements: per column (and task), then the stream's.
        """
        self._flush()
        out: list[Measurement] = []
        stream: dict[str, Metric] = dict(self.stream_merged.items())  # type: ignore[arg-type]
        counts = dict.fromkeys(stream, 0)
        for column, metrics, tasks, by_task in zip(self.columns, self.per_column, self.tasks, self.per_task):
            for name, metric in cast(Mapping[str, Metric], metrics).items():
                if not self._measured(metric, world_size):
                    continue
                out.append(Measurement(name, column, metric.compute().detach()))
                if name in stream:
                    stream[name].merge_state(metric)
                    counts[name] += metric.update_count
            for t in tasks:
                for name, metric in cast(Mapping[str, Metric], cast(nn.ModuleDict, by_task)[str(t)]).items():
                    if self._measured(metric, world_size):
                        out.append(Measurement(name, column, metric.compute().detach(), task=t))
        for name, metric in stream.items():
            metric._update_count = counts[name]  # what the merged states were updated with
        stream.update(self.stream.items())  # type: ignore[arg-type]
        for name in self.in_stream:
            metric = stream[name]
            if self._measured(metric, world_size):
                out.append(Measurement(name, None, metric.compute().detach()))
        self.reset()
        return out

    def reset(self) -> None:
        """Reset every state (for example after a sanity check); a no-op when nothing was updated since."""
        held = self._held
        if held.clean:
            return
        held.clean = True
        for pending in held.pending:
            pending.clear()
        held.values = 0
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()


def record_measurements(
    matrices: MetricMatrices,
    row: int | None,
    measurements: Iterable[Measurement],
    higher_is_better: Mapping[str, bool | None] | None = None,
) -> None:
    """Record a test evaluation after train experience ``row``: scalars in their matrices, the rest aside.

    Scalar values go to their metric's matrix (named by :func:`matrix_name`; the stream's value
    with ``record_stream``). Non-scalar values of trained rows are kept with
    :meth:`MetricMatrices.record_tensor` (``"exp<j>"`` or ``"stream"``), and a one-dimensional
    stream value (the per-class accuracy of ``MulticlassAccuracy(average=None)``) also with
    ``record_per_class``, the input of AMCA. Values per task label are logged only.

    Args:
        matrices: the run's matrices.
        row: the train experience index, ``None`` before the first (the untrained model).
        measurements: what :meth:`StreamMetrics.compute` returned.
        higher_is_better: per metric name, its direction (``None``: from the name).

    Example:
        >>> m = MetricMatrices()
        >>> record_measurements(m, 0, [Measurement("acc", 0, torch.tensor(0.5)),
        ...                            Measurement("cm", None, torch.eye(2))])
        >>> m.results().accuracy_matrix, m.results().tensors["cm"][0]["stream"].tolist()
        ([[0.5]], [[1.0, 0.0], [0.0, 1.0]])
    """
    directions = higher_is_better or {}
    for m in measurements:
        if m.task is not None:
            continue
        name = matrix_name(m.name)
        if m.scalar:
            matrix = matrices.add(name, directions.get(m.name))
            value = float(m.value.reshape(()))
            if m.column is None:
                matrix.record_stream(row, value)
            else:
                matrix.record(row, m.column, value)
            continue
        if row is None:
            continue
        value_t = m.value.detach().to("cpu", torch.float64)
        if m.column is None and value_t.ndim == 1:
            matrices.add(name, directions.get(m.name)).record_per_class(row, value_t)
        matrices.record_tensor(name, row, "stream" if m.column is None else f"exp{m.column}", value_t)
