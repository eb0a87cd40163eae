from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lightning_cl.evaluation import (
    amca,
    average,
    backward_transfer,
    forgetting,
    forgetting_per_experience,
    forward_transfer,
    mean_class_accuracy,
    seen_average,
)
from lightning_cl.evaluation.cl_metrics import trained_columns


def test_average_is_the_mean_of_the_last_row_over_its_columns(aligned: torch.Tensor) -> None:
    assert average(aligned) == pytest.approx((0.3 + 0.7 + 0.95) / 3)
    assert average(aligned[:2]) == pytest.approx((0.6 + 0.8 + 0.1) / 3)
    assert average([[0.5, math.nan, 0.25]]) == pytest.approx(0.375)  # unmeasured cells left out
    assert math.isnan(average(torch.zeros(0, 3)))


def test_seen_average_keeps_the_columns_trained_so_far(aligned: torch.Tensor) -> None:
    assert seen_average(aligned[:2]) == pytest.approx((0.6 + 0.8) / 2)
    assert seen_average(aligned) == pytest.approx(average(aligned))
    assert math.isnan(seen_average(aligned, trained_on="unknown"))


def test_forgetting_uses_the_best_earlier_value(aligned: torch.Tensor) -> None:
    r = aligned.clone()
    r[1, 0] = 0.95  # experience 0 improved before it was forgotten
    assert forgetting_per_experience(r) == pytest.approx({0: 0.95 - 0.3, 1: 0.8 - 0.7})
    assert forgetting(r) == pytest.approx(((0.95 - 0.3) + (0.8 - 0.7)) / 2)
    assert forgetting(aligned) == pytest.approx(-backward_transfer(aligned))


def test_backward_transfer_on_the_diagonal(aligned: torch.Tensor) -> None:
    assert backward_transfer(aligned) == pytest.approx(((0.3 - 0.9) + (0.7 - 0.8)) / 2)


def test_forward_transfer_by_hand_on_a_three_experience_stream(aligned: torch.Tensor) -> None:
    b = [0.1, 0.05, 0.2]
    # (R[0,1] - b1 + R[1,2] - b2) / 2: the value just before each later experience is trained
    assert forward_transfer(aligned, b) == pytest.approx(((0.1 - 0.05) + (0.1 - 0.2)) / 2)
    assert forward_transfer(aligned, [0.1, math.nan, 0.2]) == pytest.approx(0.1 - 0.2)
    assert math.isnan(forward_transfer(aligned, b, trained_on="unknown"))


def test_one_row_has_no_forgetting_bwt_or_fwt(aligned: torch.Tensor) -> None:
    one = aligned[:1]
    assert math.isnan(forgetting(one)) and math.isnan(backward_transfer(one))
    assert math.isnan(forward_transfer(one, [0.0, 0.0, 0.0]))
    assert average(one) == pytest.approx((0.9 + 0.1 + 0.0) / 3)


def test_lower_is_better_metrics_keep_the_meaning_of_the_signs() -> None:
    loss = [[0.2, 2.0], [1.5, 0.3]]
    assert forgetting(loss, higher_is_better=False) == pytest.approx(1.3)  # the loss rose by 1.3
    assert backward_transfer(loss, higher_is_better=False) == pytest.approx(-1.3)
    assert forward_transfer(loss, [2.3, 2.3], higher_is_better=False) == pytest.approx(0.3)
    # read as higher-is-better the same numbers would claim the opposite
    assert forgetting(loss) == pytest.approx(-1.3)


def test_online_stream_pairs_each_column_with_its_origin(online: dict[str, Any]) -> None:
    r, marks, b = online["matrix"], online["trained_on"], online["initial"]
    assert trained_columns(marks, 6, 3) == ({0: 0, 1: 2, 2: 4}, {0: 1, 1: 3, 2: 5})
    assert average(r) == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert seen_average(r, trained_on=marks) == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    # forgetting and BWT: the experiences learned before the last row (origins 0 and 1)
    assert forgetting_per_experience(r, trained_on=marks) == pytest.approx({0: 0.9 - 0.2, 1: 0.8 - 0.4})
    # BWT against the row after each origin's last mini-experience (rows 1 and 3)
    assert backward_transfer(r, trained_on=marks) == pytest.approx(((0.2 - 0.9) + (0.4 - 0.8)) / 2)
    # FWT against the row before each origin's first mini-experience (rows 1 and 3)
    assert forward_transfer(r, b, trained_on=marks) == pytest.approx(((0.0 - 0.1) + (0.1 - 0.1)) / 2)


def test_unknown_pairing_uses_every_column_and_its_best_earlier_value(online: dict[str, Any]) -> None:
    r = online["matrix"]
    expected = ((0.9 - 0.2) + (0.8 - 0.4) + (0.6 - 0.9)) / 3
    assert forgetting(r, trained_on="unknown") == pytest.approx(expected)
    assert backward_transfer(r, trained_on="unknown") == pytest.approx(-expected)
    # the default diagonal would pair row 1 with column 1, which online rows do not mean
    assert backward_transfer(r) != pytest.approx(backward_transfer(r, trained_on=online["trained_on"]))


def test_mean_class_accuracy_and_amca() -> None:
    per_class = [[1.0, 0.0, math.nan, math.nan], [0.8, 0.6, 1.0, 0.2]]
    assert mean_class_accuracy(per_class).tolist() == pytest.approx([0.5, 0.65])
    assert amca(per_class) == pytest.approx((0.5 + 0.65) / 2)
    assert math.isnan(amca(torch.zeros(0, 4)))


def test_bad_input_is_refused(aligned: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="must be 2-d"):
        average(torch.zeros(3))
    with pytest.raises(ValueError, match="one of \\('diagonal', 'unknown'\\), got 'rows'"):
        forgetting(aligned, trained_on="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one entry per row \\(3\\), got 2"):
        backward_transfer(aligned, trained_on=[[0], [1]])
    with pytest.raises(ValueError, match="names columns \\[5\\]"):
        backward_transfer(aligned, trained_on=[[0], [1], [5]])
    with pytest.raises(ValueError, match="one value per column \\(3\\), got 2"):
        forward_transfer(aligned, [0.1, 0.1])


def test_bad_pairings_directions_and_result_texts_are_named() -> None:
    from lightning_cl.evaluation import ContinualResults, forgetting

    matrix = [[0.9, 0.1], [0.5, 0.8]]
    with pytest.raises(ValueError, match=r"trained_on needs, per row, the columns that row trained on"):
        forgetting(matrix, trained_on=[0, 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="higher_is_better must be a bool, got 'no'"):
        forgetting(matrix, higher_is_better="no")  # type: ignore[arg-type]
    for text in ("not json", "[1, 2]"):
        with pytest.raises(ValueError, match="is neither JSON results"):
            ContinualResults.from_json(text)
    with pytest.raises(ValueError, match="not JSON results"):
        ContinualResults.from_json('{"metrics": 5}')


def test_non_numeric_matrix_or_initial_values_get_a_named_error() -> None:
    with pytest.raises(ValueError, match=r"the metric matrix must hold numbers .*got \[\['a'\]\]"):
        average([["a"]])
    with pytest.raises(
        ValueError, match=r"initial \(the untrained model's value per column\) must hold numbers"
    ):
        forward_transfer([[0.5, 0.2], [0.6, 0.7]], None)  # type: ignore[arg-type]
    assert forward_transfer([[0.9, 0.2], [0.5, 0.9]], [0.1, 0.1]) == pytest.approx(0.1)
