"""The results table keeps its columns apart whatever the values."""

from __future__ import annotations

from lightning_cl.evaluation import MetricMatrix


def test_large_values_keep_the_columns_apart() -> None:
    matrix = MetricMatrix("loss")
    for j, value in enumerate([129330.1254483731, 1254483731.5, -4567473.5]):
        matrix.record(0, j, value)
    row = next(line for line in matrix.results().table().splitlines() if line.startswith("exp 0"))
    cells = row.removeprefix("exp 0").split()
    assert cells == ["1.3e+05", "1.3e+09", "-5e+06"]  # each in 8 characters, a space between
