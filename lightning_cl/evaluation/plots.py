"""Figures of a run: a metric's matrix as a heat map, each test experience's curve, a confusion matrix.

Each function returns a matplotlib ``Figure`` (drawn on ``ax`` when given, else on a new figure)
and saves it to ``path`` when given (the format from the suffix: ``.png``, ``.pdf``, ``.svg``).
matplotlib is imported when a function runs, so the rest of ``lightning_cl`` does not need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from lightning_cl.evaluation.results import ContinualResults, MetricResults

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["figures", "log_figures", "plot_confusion_matrix", "plot_curves", "plot_matrix", "save_figures"]

NORMALIZE = (None, "true", "pred", "all")


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as err:  # pragma: no cover - matplotlib is in the test extras
        raise ModuleNotFoundError(
            "lightning_cl's figures need matplotlib: pip install matplotlib (or lightning-cl[test])"
        ) from err
    return plt


def _as_results(source: MetricResults | Tensor | Sequence[Sequence[float]], name: str) -> MetricResults:
    if isinstance(source, MetricResults):
        return source
    t = torch.as_tensor(source, dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"a metric matrix must be 2-d, got shape {tuple(t.shape)}")
    return MetricResults(name, t.tolist(), list(range(t.shape[0])), list(range(t.shape[1])))


def _axes(ax: Axes | None, width: float, height: float) -> Axes:
    if ax is not None:
        return ax
    _, new = _pyplot().subplots(figsize=(width, height), layout="constrained")
    return new


def _finish(ax: Axes, path: str | Path | None) -> Figure:
    figure = cast("Figure", ax.get_figure(root=True))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    return figure


def plot_matrix(
    results: MetricResults | Tensor | Sequence[Sequence[float]],
    *,
    ax: Axes | None = None,
    path: str | Path | None = None,
    annotate: bool = True,
    cmap: str = "viridis",
) -> Figure:
    """Draw a metric's matrix ``R[i][j]`` as a heat map, one cell per (row, column).

    Rows are the train experiences in training order (top to bottom), columns the test
    experiences. A higher-is-better metric whose values lie in ``[0, 1]`` (accuracy, F1) uses
    that fixed colour range; any other metric spans its values. Unmeasured cells are blank.

    Args:
        results: a :class:`MetricResults`, or a 2-d tensor or nested list (rows and columns
            then labelled ``0, 1, ...``).
        ax: axes to draw on; a new figure when ``None``.
        path: also save the figure there.
        annotate: write each value in its cell.
        cmap: a matplotlib colour map name.

    Returns:
        The figure; its image's array is the matrix.

    Raises:
        ValueError: for a tensor or list that is not 2-d, or a matrix with no row or no column
            (a per-class metric's values are in ``ContinualResults.tensors``, not a matrix).

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> fig = plot_matrix([[0.9, 0.1], [0.6, 0.8]])
        >>> fig.axes[0].images[0].get_array().tolist()
        [[0.9, 0.1], [0.6, 0.8]]
    """
    r = _as_results(results, "accuracy")
    if not r.trained or not r.tested:
        raise ValueError(
            f"metric {r.name!r} has no value to draw ({len(r.trained)} row(s), {len(r.tested)} "
            "column(s)); a per-class or other non-scalar metric is kept in ContinualResults.tensors"
        )
    ax = _axes(ax, 1.6 + 0.75 * max(1, len(r.tested)), 1.2 + 0.55 * max(1, len(r.trained)))
    data = r.tensor.numpy()
    values = [v for row in r.matrix for v in row if not math.isnan(v)]
    unit = bool(values) and r.higher_is_better and all(0.0 <= v <= 1.0 for v in values)
    vmin, vmax = (0.0, 1.0) if unit or not values else (min(values), max(values))
    import numpy as np

    image = ax.imshow(np.ma.masked_invalid(data), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(r.tested)), [str(j) for j in r.tested])
    ax.set_yticks(range(len(r.trained)), [str(i) for i in r.trained])
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training experience i")
    ax.set_title(f"{r.name} R[i, j]")
    if annotate:
        middle = (vmin + vmax) / 2
        for i, row in enumerate(r.matrix):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < middle else "k")
    ax.figure.colorbar(image, ax=ax, label=r.name)
    return _finish(ax, path)


def plot_curves(
    results: MetricResults | Tensor | Sequence[Sequence[float]],
    *,
    ax: Axes | None = None,
    path: str | Path | None = None,
    stream: bool = True,
) -> Figure:
    """Draw each test experience's value over the stream: one line per column of ``R``.

    The x axis is the train experience after which each value was measured (training order);
    the test stream's value (:attr:`MetricResults.stream`) is drawn dashed when recorded.

    Args:
        results: a :class:`MetricResults`, or a 2-d tensor or nested list.
        ax: axes to draw on; a new figure when ``None``.
        path: also save the figure there.
        stream: draw the stream's curve too.

    Returns:
        The figure; its axes hold one line per test experience (then the stream's).

    Raises:
        ValueError: for a tensor or list that is not 2-d.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> fig = plot_curves([[0.9, 0.1], [0.6, 0.8]])
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['exp 0', 'exp 1']
    """
    r = _as_results(results, "accuracy")
    ax = _axes(ax, 5.5, 3.5)
    x = list(range(len(r.trained)))
    data = r.tensor
    for k, j in enumerate(r.tested):
        ax.plot(x, data[:, k].tolist(), marker="o", label=f"exp {j}")
    if stream and any(not math.isnan(v) for v in r.stream):
        ax.plot(x, r.stream, "k--", marker="s", label="stream")
    ax.set_xticks(x, [str(i) for i in r.trained])
    ax.set_xlabel("after training experience")
    ax.set_ylabel(r.name)
    ax.set_title(f"{r.name} of each test experience over the stream")
    if r.tested:
        ax.legend(fontsize="small", ncols=2 if len(r.tested) > 6 else 1)
    ax.grid(alpha=0.3)
    return _finish(ax, path)


def plot_confusion_matrix(
    confusion: Tensor | Sequence[Sequence[float]],
    *,
    class_names: Sequence[str] | None = None,
    normalize: str | None = None,
    ax: Axes | None = None,
    path: str | Path | None = None,
    annotate: bool | None = None,
    cmap: str = "Blues",
) -> Figure:
    """Draw a ``(C, C)`` confusion matrix: rows the true class, columns the predicted class.

    The layout of torchmetrics' ``MulticlassConfusionMatrix`` (``confmat[i, j]``: samples of
    class ``i`` predicted as ``j``).

    Args:
        confusion: the counts (or rates), shape ``(C, C)``.
        class_names: a label per class; ``0 .. C-1`` when ``None``.
        normalize: ``None`` (counts as given), ``"true"`` (each row sums to 1), ``"pred"``
            (each column sums to 1) or ``"all"`` (the whole matrix sums to 1).
        ax: axes to draw on; a new figure when ``None``.
        path: also save the figure there.
        annotate: write each value in its cell; ``None``: only when ``C <= 20``.
        cmap: a matplotlib colour map name.

    Returns:
        The figure; its image's array is the (normalised) matrix.

    Raises:
        ValueError: for a matrix that is not square and 2-d, a ``normalize`` not in
            ``(None, "true", "pred", "all")``, or ``class_names`` of another length than ``C``.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> fig = plot_confusion_matrix([[3, 1], [0, 4]], normalize="true")
        >>> fig.axes[0].images[0].get_array().tolist()
        [[0.75, 0.25], [0.0, 1.0]]
    """
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {tuple(cm.shape)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    n = cm.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(n))]
    if len(names) != n:
        raise ValueError(f"class_names needs {n} names (one per class), got {len(names)}")
    if normalize == "true":
        cm = cm / cm.sum(dim=1, keepdim=True).clamp_min(1e-12)
    elif normalize == "pred":
        cm = cm / cm.sum(dim=0, keepdim=True).clamp_min(1e-12)
    elif normalize == "all":
        cm = cm / cm.sum().clamp_min(1e-12)
    ax = _axes(ax, 1.5 + 0.45 * n, 1.2 + 0.45 * n)
    image = ax.imshow(cm.numpy(), cmap=cmap)
    ax.set_xticks(range(n), names, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (f" (normalised: {normalize})" if normalize else ""))
    if annotate if annotate is not None else n <= 20:
        top = float(cm.max()) if cm.numel() else 0.0
        integral = normalize is None and bool(torch.all(cm == cm.round()))
        for i in range(n):
            for j in range(n):
                v = float(cm[i, j])
                text = f"{int(v)}" if integral else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", color="w" if v > top / 2 else "k")
    ax.figure.colorbar(image, ax=ax)
    return _finish(ax, path)


def _names(
    results: ContinualResults, metrics: str | Sequence[str] | None, tensors: bool = False
) -> list[str]:
    """``metrics`` as a list of names ``results`` holds (every metric for ``None``)."""
    if metrics is None:
        return list(results)
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    known = [*results, *results.tensors] if tensors else list(results)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"no metric {unknown[0]!r}; recorded: {known}")
    return names


def save_figures(
    results: ContinualResults,
    directory: str | Path,
    *,
    metrics: str | Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write each metric's heat map and curves as PNG files into ``directory``.

    Files are ``<metric>_matrix.png`` and ``<metric>_curves.png``; metrics with no row or no
    column (a per-class metric) are skipped. Figures are closed after saving.

    Args:
        results: the run's results.
        directory: where to write (created if missing).
        metrics: the metric names to draw (a name or a list of them); every metric when ``None``.

    Returns:
        ``{"<metric>_matrix": path, "<metric>_curves": path, ...}`` for the files written.

    Raises:
        KeyError: for a name in ``metrics`` that ``results`` does not hold.
    """
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in _names(results, metrics):
        r = results[name]
        if not r.trained or not r.tested:
            continue
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        for kind, draw in (("matrix", plot_matrix), ("curves", plot_curves)):
            path = out / f"{stem}_{kind}.png"
            plt.close(draw(r, path=path))
            written[f"{name}_{kind}"] = path
    return written


def figures(results: ContinualResults, *, metrics: str | Sequence[str] | None = None) -> dict[str, Figure]:
    """The run's figures, by name: each scalar metric's heat map and curves, each stream confusion matrix.

    Names are ``<metric>_matrix``, ``<metric>_curves`` (metrics with at least one row and one
    column) and ``<metric>_stream`` for the last row's stream value of each square 2-d metric in
    :attr:`ContinualResults.tensors` (a ``MulticlassConfusionMatrix``). Each figure is a
    matplotlib ``Figure`` of its own (not pyplot's: no GUI backend, nothing left open).

    Args:
        results: the run's results.
        metrics: the names to draw (a name or a list of them; metrics or tensors of
            ``results``); every metric when ``None``.

    Returns:
        ``{name: Figure}``.

    Raises:
        KeyError: for a name that ``results`` holds neither as a metric nor as a tensor.

    Example:
        >>> from lightning_cl.evaluation import MetricMatrices
        >>> m = MetricMatrices()
        >>> m.record("accuracy", 0, 0, 0.5)
        >>> m.record_tensor("confusion", 0, "stream", torch.eye(3))
        >>> sorted(figures(m.results()))
        ['accuracy_curves', 'accuracy_matrix', 'confusion_stream']
    """
    _pyplot()
    from matplotlib.figure import Figure as NewFigure

    names = _names(results, metrics, tensors=True) if metrics is not None else [*results, *results.tensors]
    out: dict[str, Figure] = {}
    for name in names:
        if name in results and results[name].trained and results[name].tested:
            r = results[name]
            for kind, draw in (("matrix", plot_matrix), ("curves", plot_curves)):
                figure = NewFigure(layout="constrained")
                out[f"{name}_{kind}"] = draw(r, ax=figure.subplots())
        rows = results.tensors.get(name, {})
        if rows:
            last = rows[list(rows)[-1]]  # the last trained row
            stream = last.get("stream")
            if stream is not None and stream.ndim == 2 and stream.shape[0] == stream.shape[1]:
                n = stream.shape[0]
                figure = NewFigure(figsize=(1.5 + 0.45 * n, 1.2 + 0.45 * n), layout="constrained")
                out[f"{name}_stream"] = plot_confusion_matrix(stream, ax=figure.subplots())
    return out


def log_figures(
    results: ContinualResults,
    loggers: Any,
    *,
    step: int | None = None,
    metrics: Sequence[str] | None = None,
) -> list[str]:
    """Hand the run's :func:`figures` to every logger that takes figures, through its Lightning API.

    TensorBoard (``TensorBoardLogger.experiment.add_figure``), MLflow
    (``MLFlowLogger.experiment.log_figure`` into the run's artifacts, as ``figures/<name>.png``)
    and Weights & Biases (``WandbLogger.log_image``) receive them; other loggers (CSV) are
    skipped: ``fit_stream`` writes the PNG files beside ``results.json`` for them. Call it on
    rank 0 at the end of a run (a plain loop, or after ``fit_stream``).

    Args:
        results: the run's results.
        loggers: a Lightning logger, a list of them (``trainer.loggers``), or ``None``.
        step: the step the figures belong to (for example ``module.global_step_all``).
        metrics: the metric names to draw; every metric when ``None``.

    Returns:
        The names of the loggers that received figures (their class names).

    Raises:
        ValueError: for ``loggers`` that are not Lightning ``Logger`` objects (a name such as
            ``"tensorboard"``).
    """
    from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

    if loggers is None or loggers is False:
        return []
    targets = [loggers] if isinstance(loggers, (Logger, str)) else list(loggers)
    if not all(isinstance(lg, Logger) for lg in targets):
        raise ValueError(
            "loggers must be Lightning Logger objects (trainer.loggers, TensorBoardLogger(...)), got "
            f"{[type(lg).__name__ for lg in targets]}"
        )
    takers = [lg for lg in targets if isinstance(lg, (TensorBoardLogger, MLFlowLogger, WandbLogger))]
    if not takers:
        return []
    try:
        drawn = figures(results, metrics=metrics)
    except ModuleNotFoundError as err:  # no matplotlib: the loggers get the scalars only
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"lightning_cl: no figures for the loggers ({err})")
        return []
    received: list[str] = []
    for logger in takers:
        for name, figure in drawn.items():
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(name, figure, global_step=step, close=False)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_figure(logger.run_id, figure, f"figures/{name}.png")
            else:
                logger.log_image(key=f"figures/{name}", images=[figure], step=step)
        received.append(type(logger).__name__)
    return received
