from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_cl.methods.penalties import pad_to, quadratic_penalty, slice_to
from lightning_cl.models import MASK_VALUE, IncrementalClassifier


def test_pad_to_keeps_the_value_first_and_fills_the_rest() -> None:
    value = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = pad_to(value, (3, 4), fill=-1.0)
    assert out.tolist() == [[1.0, 2.0, -1.0, -1.0], [3.0, 4.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]]
    assert pad_to(value, torch.Size([2, 2])) is value  # already the shape: no copy
    assert pad_to(torch.tensor([True]), (3,), fill=False).tolist() == [True, False, False]
    logits = pad_to(torch.tensor([[0.5, 1.5]]), (1, 4), fill=MASK_VALUE)
    assert logits.tolist() == [[0.5, 1.5, MASK_VALUE, MASK_VALUE]] and logits.dtype == torch.float32


def test_slice_to_is_a_view_of_the_leading_block() -> None:
    value = torch.arange(12.0).view(3, 4)
    out = slice_to(value, (2, 3))
    assert out.tolist() == [[0.0, 1.0, 2.0], [4.0, 5.0, 6.0]]
    out.zero_()
    assert float(value[:2, :3].abs().sum()) == 0.0 and float(value[2].sum()) == 38.0


def test_the_two_are_inverse_and_differentiable() -> None:
    value = torch.randn(2, 3, requires_grad=True)
    torch.testing.assert_close(slice_to(pad_to(value, (5, 4)), (2, 3)), value)
    (pad_to(value, (4, 3)).sum() * 2).backward()
    assert value.grad is not None and value.grad.tolist() == [[2.0] * 3] * 2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda v: pad_to(v, (1, 3)), r"each at least the value's \(2, 3\), got \(1, 3\)"),
        (lambda v: pad_to(v, (2, 3, 1)), r"shape must have 2 dimensions, .*got \(2, 3, 1\)"),
        (lambda v: slice_to(v, (2, 4)), r"each at most the value's \(2, 3\), got \(2, 4\)"),
        (lambda v: slice_to(v, (6,)), r"shape must have 2 dimensions"),
    ],
)
def test_shapes_that_do_not_fit_are_refused(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 3))


def test_quadratic_penalty_is_the_importance_weighted_squared_distance() -> None:
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
        layer.bias.fill_(1.0)
    importance = {"weight": torch.tensor([[1.0, 0.5, 2.0], [3.0, 0.0, 0.0]])}  # no importance: bias free
    anchor = {"weight": torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    value = quadratic_penalty(layer, importance, anchor)
    # 1*1 + 0.5*4 + 2*9 + 3*1 = 24: a sum over the entries
    assert float(value.detach()) == pytest.approx(24.0) and value.shape == () and value.dtype == torch.float32
    value.backward()
    expected = 2 * importance["weight"] * (layer.weight.detach() - anchor["weight"])
    torch.testing.assert_close(layer.weight.grad, expected)
    assert layer.bias.grad is None


def test_quadratic_penalty_covers_the_old_units_of_a_grown_head() -> None:
    head = IncrementalClassifier(2, initial_out_features=2)
    anchor = {n: p.detach().clone() for n, p in head.named_parameters()}
    importance = {n: torch.ones_like(p) for n, p in head.named_parameters()}
    head.adaptation([0, 1, 2, 3])  # grows to 4 units
    with torch.no_grad():
        head.classifier.weight[2:] += 5.0  # new units: free
    assert float(quadratic_penalty(head, importance, anchor).detach()) == pytest.approx(0.0)
    with torch.no_grad():
        head.classifier.bias[:2] += 0.5  # old units: anchored
    assert float(quadratic_penalty(head, importance, anchor).detach()) == pytest.approx(2 * 0.25)


def test_quadratic_penalty_is_float32_for_low_precision_weights_and_zero_without_importance() -> None:
    layer = nn.Linear(2, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    value = quadratic_penalty(layer, {"weight": torch.full((1, 2), 0.1)}, {"weight": torch.zeros(1, 2)})
    assert value.dtype == torch.float32 and float(value.detach()) == pytest.approx(0.2)
    empty = quadratic_penalty(layer, {}, {})
    assert float(empty) == 0.0 and empty.device == layer.weight.device
