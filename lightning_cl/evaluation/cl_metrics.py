r"""Continual-learning metrics derived from a matrix of any scalar metric.

Every function reads a matrix ``R`` of shape ``(T, J)``: row ``i`` holds the values measured
after training row ``i`` of the train stream (rows in training order), column ``j`` the values
on test experience ``j``. ``nan`` marks a value that was not measured. The matrix may hold any
scalar metric (accuracy, loss, F1, ...); pass ``higher_is_better=False`` for a metric such as
the loss, and the signs below keep their meaning: positive forgetting is a loss of quality,
positive BWT and FWT are a gain.

Write :math:`s = +1` for a higher-is-better metric and :math:`s = -1` otherwise, and
:math:`T-1` for the last row.

**Which row trained which column.** Forgetting, BWT, FWT and the average over the experiences
seen so far need to know when each test experience was trained. ``trained_on`` says it:

- ``"diagonal"`` (the default): row ``i`` trained column ``i``: the usual stream whose train
  experience ``i`` and test experience ``i`` hold the same classes or domain;
- a sequence with one entry per row: the column positions whose data that row trained on (an
  online mini-experience trains the column of its origin experience; a new-instances row trains
  the one test column; a joint row trains them all). A column no row trained is *not yet
  trained*;
- ``"unknown"``: no pairing is known.

With a pairing, column :math:`j` is *first trained* at row :math:`a_j` (the first row that
trained it) and *learned* at row :math:`e_j`, the last row of the run of consecutive rows that
starts at :math:`a_j` and train it (an online stream's origin experience is learned after its
last mini-experience; a stream without repeats has :math:`e_j = a_j`).
With ``"unknown"``, no column has an :math:`a_j`: forgetting runs over every column measured in
the last row and in an earlier row, BWT pairs each such column with its best earlier value (so
BWT is minus the forgetting), and FWT and the seen-so-far average are ``nan``.

The functions return ``nan`` where their terms are empty (for example forgetting with one row).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "TrainedOn",
    "amca",
    "average",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forgetting_per_experience",
    "forward_transfer",
    "mean_class_accuracy",
    "seen_average",
    "trained_columns",
]

TrainedOn = Sequence[Collection[int]] | Literal["diagonal", "unknown"]
"""Which columns each row trained on: a sequence with one entry per row, ``"diagonal"`` or
``"unknown"`` (see the module's docstring)."""

PAIRINGS = ("diagonal", "unknown")


def _as_float64(value: Any, what: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{what} must hold numbers (a tensor or nested lists of floats), got {value!r}"
        ) from err


def _check(matrix: Tensor | Sequence[Sequence[float]]) -> Tensor:
    r = _as_float64(matrix, "the metric matrix")
    if r.ndim != 2:
        raise ValueError(f"the metric matrix must be 2-d (rows x columns), got shape {tuple(r.shape)}")
    return r


def trained_columns(
    trained_on: TrainedOn, n_rows: int, n_columns: int
) -> tuple[dict[int, int], dict[int, int]] | None:
    """The rows at which each column was first trained and learned.

    Args:
        trained_on: the pairing (see the module's docstring).
        n_rows: rows of the matrix.
        n_columns: columns of the matrix.

    Returns:
        ``(first, learned)``: dicts from column position to the row position :math:`a_j` and
        :math:`e_j`, for the columns some row trained; ``None`` for ``"unknown"``.

    Raises:
        ValueError: for a string other than ``"diagonal"`` / ``"unknown"``, a sequence whose
            length is not ``n_rows``, or a column position outside ``[0, n_columns)``.

    Example:
        >>> trained_columns([[0], [0], [1]], 3, 2)
        ({0: 0, 1: 2}, {0: 1, 1: 2})
    """
    if isinstance(trained_on, str):
        if trained_on not in PAIRINGS:
            raise ValueError(f"trained_on must be a sequence or one of {PAIRINGS}, got {trained_on!r}")
        if trained_on == "unknown":
            return None
        rows: list[set[int]] = [{i} if i < n_columns else set() for i in range(n_rows)]
    else:
        if len(trained_on) != n_rows:
            raise ValueError(f"trained_on needs one entry per row ({n_rows}), got {len(trained_on)}")
        if not all(isinstance(cols, Iterable) and not isinstance(cols, (str, bytes)) for cols in trained_on):
            raise ValueError(
                "trained_on needs, per row, the columns that row trained on (a list of ints such as "
                f"[[0], [1], [1, 2]]), got {list(trained_on)!r}"
            )
        rows = [{int(j) for j in cols} for cols in trained_on]
        for cols in rows:
            bad = [j for j in cols if not 0 <= j < n_columns]
            if bad:
                raise ValueError(f"trained_on names columns {bad}; the matrix has columns 0..{n_columns - 1}")
    first: dict[int, int] = {}
    for i, cols in enumerate(rows):
        for j in cols:
            first.setdefault(j, i)
    learned: dict[int, int] = {}
    for j, a in first.items():
        e = a
        while e + 1 < n_rows and j in rows[e + 1]:
            e += 1
        learned[j] = e
    first = dict(sorted(first.items()))
    learned = dict(sorted(learned.items()))
    return first, learned


def _sign(higher_is_better: bool) -> float:
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better must be a bool, got {higher_is_better!r}")
    return 1.0 if higher_is_better else -1.0


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def average(matrix: Tensor | Sequence[Sequence[float]]) -> float:
    r"""The average of the last row over the test experiences measured there.

    .. math:: \mathrm{ACC} = \frac{1}{|J_{T-1}|} \sum_{j \in J_{T-1}} R_{T-1,j}

    where :math:`J_{T-1}` are the columns measured in the last row: for accuracy, the average
    accuracy of Lopez-Paz and Ranzato (2017), "Gradient Episodic Memory for Continual Learning",
    taken over every test experience of the stream. It needs no pairing of rows with columns,
    so it is defined for online and new-instances streams too.

    Args:
        matrix: ``R``, shape ``(T, J)``.

    Returns:
        The average, ``nan`` with no row or no measured value in the last row.

    Raises:
        ValueError: if ``matrix`` is not 2-d.

    Example:
        >>> average([[0.5], [0.6]])
        0.6
    """
    r = _check(matrix)
    if r.shape[0] == 0:
        return math.nan
    last = r[-1]
    return _mean([float(v) for v in last[~last.isnan()]])


average_accuracy = average
"""The name of :func:`average` when the matrix holds accuracies."""


def seen_average(matrix: Tensor | Sequence[Sequence[float]], *, trained_on: TrainedOn = "diagonal") -> float:
    r"""The average of the last row over the test experiences trained so far.

    .. math:: \mathrm{ACC}_{\mathrm{seen}} = \frac{1}{|S|} \sum_{j \in S} R_{T-1,j}, \qquad
        S = \{ j : a_j \le T-1 \}

    ("accuracy on the experiences seen so far"; at the end of a stream that trains every test
    experience it equals :func:`average`).

    Args:
        matrix: ``R``, shape ``(T, J)``.
        trained_on: the pairing of rows with columns.

    Returns:
        The average, ``nan`` with no trained column or an ``"unknown"`` pairing.

    Raises:
        ValueError: for a matrix that is not 2-d or a bad ``trained_on``.

    Example:
        >>> seen_average([[0.9, 0.1, 0.0], [0.6, 0.8, 0.1]])
        0.7
    """
    r = _check(matrix)
    pairing = trained_columns(trained_on, *r.shape)
    if pairing is None or r.shape[0] == 0:
        return math.nan
    last = r.shape[0] - 1
    return _mean([float(r[last, j]) for j in sorted(pairing[0]) if not math.isnan(float(r[last, j]))])


def forgetting_per_experience(
    matrix: Tensor | Sequence[Sequence[float]],
    *,
    trained_on: TrainedOn = "diagonal",
    higher_is_better: bool = True,
) -> dict[int, float]:
    r"""Forgetting of each test experience trained before the last row (Chaudhry et al., 2018).

    From "Riemannian Walk for Incremental Learning" (Chaudhry, Dokania, Ajanthan and Torr,
    ECCV 2018): the drop from the best value reached at any earlier row to the last row's,

    .. math:: f_j = \max_{l \in \{0, \dots, T-2\}} s R_{l,j} \; - \; s R_{T-1,j}

    for every column :math:`j` learned before the last row, :math:`e_j < T-1` (with an
    ``"unknown"`` pairing: every column measured in the last row and in an earlier row). A
    column still being trained at the last row (an online stream's current origin experience)
    has no forgetting yet. Positive values are forgetting, for
    a higher-is-better metric (accuracy drops) and a lower-is-better one (the loss rises)
    alike. ``nan`` earlier values are skipped.

    Args:
        matrix: ``R``, shape ``(T, J)``.
        trained_on: the pairing of rows with columns.
        higher_is_better: the metric's direction (``False`` for the loss).

    Returns:
        ``{column position: f_j}``.

    Raises:
        ValueError: for a matrix that is not 2-d or a bad ``trained_on``.

    Example:
        >>> forgetting_per_experience([[0.9, 0.1], [0.6, 0.8]])
        {0: 0.30000000000000004}
    """
    r = _check(matrix)
    t, n_columns = r.shape
    pairing = trained_columns(trained_on, t, n_columns)
    if t < 2:
        return {}
    s = _sign(higher_is_better)
    columns = range(n_columns) if pairing is None else sorted(j for j, e in pairing[1].items() if e < t - 1)
    out: dict[int, float] = {}
    for j in columns:
        earlier = [s * float(v) for v in r[: t - 1, j] if not math.isnan(float(v))]
        last = float(r[t - 1, j])
        if earlier and not math.isnan(last):
            out[j] = max(earlier) - s * last
    return out


def forgetting(
    matrix: Tensor | Sequence[Sequence[float]],
    *,
    trained_on: TrainedOn = "diagonal",
    higher_is_better: bool = True,
) -> float:
    r"""Average forgetting of the stream (Chaudhry et al., 2018).

    .. math:: F = \frac{1}{|J_f|} \sum_{j \in J_f} f_j

    over the columns :math:`J_f` of :func:`forgetting_per_experience`, which defines
    :math:`f_j`.

    Args:
        matrix: ``R``, shape ``(T, J)``.
        trained_on: the pairing of rows with columns.
        higher_is_better: the metric's direction.

    Returns:
        ``F``; ``nan`` with fewer than two rows or no column learned before the last row.

    Raises:
        ValueError: for a matrix that is not 2-d or a bad ``trained_on``.

    Example:
        >>> round(forgetting([[0.9, 0.1, 0.0], [0.6, 0.8, 0.1], [0.3, 0.7, 0.95]]), 4)
        0.35
    """
    per = forgetting_per_experience(matrix, trained_on=trained_on, higher_is_better=higher_is_better)
    return _mean(list(per.values()))


def backward_transfer(
    matrix: Tensor | Sequence[Sequence[float]],
    *,
    trained_on: TrainedOn = "diagonal",
    higher_is_better: bool = True,
) -> float:
    r"""Backward transfer (Lopez-Paz and Ranzato, 2017): what later training did to earlier experiences.

    From "Gradient Episodic Memory for Continual Learning" (NeurIPS 2017), with the row at which
    a column was learned in place of the paper's diagonal:

    .. math:: \mathrm{BWT} = \frac{1}{|J_b|} \sum_{j \in J_b} s \left(R_{T-1,j} - R_{e_j,j}\right),
        \qquad J_b = \{ j : e_j < T-1 \}

    For the diagonal pairing :math:`e_j = j` and this is the paper's formula. Negative values are
    forgetting. With an ``"unknown"`` pairing :math:`R_{e_j,j}` is the best earlier value of
    column :math:`j`, so BWT equals minus :func:`forgetting`.

    Args:
        matrix: ``R``, shape ``(T, J)``.
        trained_on: the pairing of rows with columns.
        higher_is_better: the metric's direction.

    Returns:
        BWT; ``nan`` with fewer than two rows or no column learned before the last row.

    Raises:
        ValueError: for a matrix that is not 2-d or a bad ``trained_on``.

    Example:
        >>> round(backward_transfer([[0.9, 0.1, 0.0], [0.6, 0.8, 0.1], [0.3, 0.7, 0.95]]), 4)
        -0.35
    """
    r = _check(matrix)
    t, n_columns = r.shape
    pairing = trained_columns(trained_on, t, n_columns)
    if pairing is None:
        value = forgetting(r, trained_on="unknown", higher_is_better=higher_is_better)
        return -value if not math.isnan(value) else math.nan
    s = _sign(higher_is_better)
    terms = []
    for j, e in sorted(pairing[1].items()):
        if e < t - 1:
            diff = float(r[t - 1, j]) - float(r[e, j])
            if not math.isnan(diff):
                terms.append(s * diff)
    return _mean(terms)


def forward_transfer(
    matrix: Tensor | Sequence[Sequence[float]],
    initial: Tensor | Sequence[float],
    *,
    trained_on: TrainedOn = "diagonal",
    higher_is_better: bool = True,
) -> float:
    r"""Forward transfer (Lopez-Paz and Ranzato, 2017): what earlier training did to later experiences.

    From "Gradient Episodic Memory for Continual Learning" (NeurIPS 2017): the value on a test
    experience just before it is first trained, against the untrained model's value
    :math:`b_j` (``initial``, measured before the first experience):

    .. math:: \mathrm{FWT} = \frac{1}{|J_w|} \sum_{j \in J_w} s \left(R_{a_j-1,j} - b_j\right),
        \qquad J_w = \{ j : a_j \ge 1 \}

    For the diagonal pairing this is the paper's sum over experiences :math:`2 \dots T`
    (1-based); the first experience has no earlier row.

    Args:
        matrix: ``R``, shape ``(T, J)``.
        initial: :math:`b`, shape ``(J,)``: the untrained model's value on each column (``nan``
            where not measured).
        trained_on: the pairing of rows with columns.
        higher_is_better: the metric's direction.

    Returns:
        FWT; ``nan`` with an ``"unknown"`` pairing or no term with both values measured.

    Raises:
        ValueError: for a matrix that is not 2-d, ``initial`` of another length than the
            matrix's columns, or a bad ``trained_on``.

    Example:
        >>> forward_transfer([[0.9, 0.2], [0.5, 0.9]], [0.1, 0.1])
        0.1
    """
    r = _check(matrix)
    b = _as_float64(initial, "initial (the untrained model's value per column)").reshape(-1)
    t, n_columns = r.shape
    if b.numel() != n_columns:
        raise ValueError(f"initial needs one value per column ({n_columns}), got {b.numel()}")
    pairing = trained_columns(trained_on, t, n_columns)
    if pairing is None:
        return math.nan
    s = _sign(higher_is_better)
    terms = []
    for j, a in sorted(pairing[0].items()):
        if a >= 1:
            diff = float(r[a - 1, j]) - float(b[j])
            if not math.isnan(diff):
                terms.append(s * diff)
    return _mean(terms)


def mean_class_accuracy(class_accuracy: Tensor | Sequence[Sequence[float]]) -> Tensor:
    r"""Mean class accuracy of each row: the unweighted mean over classes of per-class accuracy.

    .. math:: \mathrm{MCA}_i = \frac{1}{|C_i|} \sum_{c \in C_i} A_{i,c}

    with :math:`A_{i,c}` the accuracy on the test samples of class :math:`c` after row
    :math:`i` and :math:`C_i` the classes measured there (``nan`` entries, classes without test
    samples, are left out).

    Args:
        class_accuracy: ``A``, shape ``(T, C)`` (for example ``MulticlassAccuracy(average=None)``
            on the whole test stream after each row).

    Returns:
        Shape ``(T,)``, ``float64``.

    Raises:
        ValueError: if ``class_accuracy`` is not 2-d.

    Example:
        >>> mean_class_accuracy([[1.0, 0.0, float("nan")]]).tolist()
        [0.5]
    """
    a = _check(class_accuracy)
    return a.nanmean(dim=1)


def amca(class_accuracy: Tensor | Sequence[Sequence[float]]) -> float:
    r"""Average mean class accuracy (AMCA), as Avalanche's ``AverageMeanClassAccuracy`` defines it.

    The mean, over the evaluations after each row so far, of the mean class accuracy on the test
    stream (:func:`mean_class_accuracy`):

    .. math:: \mathrm{AMCA} = \frac{1}{T} \sum_{i=0}^{T-1} \mathrm{MCA}_i

    Avalanche (``avalanche/evaluation/metrics/amca.py``) computes it per task label; call this
    once per task label with that task's classes for the same numbers.

    Args:
        class_accuracy: ``A``, shape ``(T, C)``.

    Returns:
        AMCA; ``nan`` with no row.

    Raises:
        ValueError: if ``class_accuracy`` is not 2-d.

    Example:
        >>> amca([[1.0, 0.0], [1.0, 1.0]])
        0.75
    """
    mca = mean_class_accuracy(class_accuracy)
    mca = mca[~mca.isnan()]
    return float(mca.mean()) if mca.numel() else math.nan
