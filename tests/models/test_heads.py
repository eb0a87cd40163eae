from __future__ import annotations

import pytest
import torch

from lightning_cl.models import MASK_VALUE, MLP, IncrementalClassifier, MultiHeadClassifier


def _labels(n: int, value: int = 0) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long)


def test_incremental_classifier_grows_and_keeps_old_weights() -> None:
    head = IncrementalClassifier(4, initial_out_features=2)
    head.adaptation([0, 1], _labels(2), torch.tensor([0, 1]))
    old_weight = head.classifier.weight.detach().clone()
    old_bias = head.classifier.bias.detach().clone()

    head.adaptation([4, 5], _labels(2), torch.tensor([4, 5]))

    assert head.out_features == 6
    assert torch.equal(head.classifier.weight[:2], old_weight)
    assert torch.equal(head.classifier.bias[:2], old_bias)
    assert head.active_units.tolist() == [True, True, False, False, True, True]


def test_incremental_classifier_masks_units_of_unseen_classes() -> None:
    head = IncrementalClassifier(3, initial_out_features=2)
    head.adaptation([0, 2], _labels(2), torch.tensor([0, 2]))
    out = head(torch.randn(5, 3))
    assert out.shape == (5, 3)
    assert torch.all(out[:, 1] == MASK_VALUE)
    assert torch.all(out[:, [0, 2]] != MASK_VALUE)


def test_incremental_classifier_does_not_shrink() -> None:
    head = IncrementalClassifier(3, initial_out_features=5)
    head.adaptation([0, 1], _labels(2), torch.tensor([0, 1]))
    assert head.out_features == 5


def test_incremental_classifier_state_dict_grows_a_fresh_head() -> None:
    grown = IncrementalClassifier(4)
    grown.adaptation(range(7), _labels(7), torch.arange(7))
    fresh = IncrementalClassifier(4)
    fresh.load_state_dict(grown.state_dict())
    x = torch.randn(3, 4)
    assert fresh.out_features == 7
    assert torch.equal(fresh(x), grown(x))


def test_incremental_classifier_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="in_features"):
        IncrementalClassifier(0)


def test_multihead_routes_each_sample_to_its_task_head() -> None:
    head = MultiHeadClassifier(4)
    head.adaptation([0, 1], _labels(2, 0), torch.tensor([0, 1]))
    head.adaptation([2, 3], _labels(2, 1), torch.tensor([2, 3]))
    assert sorted(head.heads.keys()) == ["0", "1"]

    x = torch.randn(6, 4)
    t = torch.tensor([0, 1, 0, 1, 1, 0])
    out = head(x, t)
    assert out.shape == (6, 4)
    # Each row equals what its own head gives, padded with the mask value.
    for i in range(6):
        own = head.heads[str(int(t[i]))](x[i : i + 1])[0]
        assert torch.allclose(out[i, : len(own)], own)
        assert torch.all(out[i, len(own) :] == MASK_VALUE)
    # Task 0's head never predicts task 1's classes and vice versa.
    assert set(out[t == 0].argmax(1).tolist()) <= {0, 1}
    assert set(out[t == 1].argmax(1).tolist()) <= {2, 3}


def test_multihead_unknown_task_is_fully_masked() -> None:
    head = MultiHeadClassifier(4)
    head.adaptation([0, 1], _labels(2, 0), torch.tensor([0, 1]))
    out = head(torch.randn(3, 4), torch.tensor([0, 7, 7]))
    assert torch.all(out[1:] == MASK_VALUE)


def test_multihead_state_dict_recreates_heads() -> None:
    head = MultiHeadClassifier(4)
    head.adaptation([0, 1], _labels(2, 0), torch.tensor([0, 1]))
    head.adaptation([2, 3], _labels(2, 1), torch.tensor([2, 3]))
    fresh = MultiHeadClassifier(4)
    fresh.load_state_dict(head.state_dict())
    x, t = torch.randn(4, 4), torch.tensor([0, 1, 1, 0])
    assert torch.equal(fresh(x, t), head(x, t))


def test_copy_at_state_restores_earlier_widths_and_tasks() -> None:
    from lightning_cl.models import copy_at_state

    model = MLP(num_classes=2, input_size=4, hidden_size=3, head="multihead")
    model.head.adaptation([0, 1], torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    earlier = {k: v.clone() for k, v in model.state_dict().items()}
    model.head.adaptation([5, 6], torch.ones(2, dtype=torch.long), torch.tensor([5, 6]))
    model.head.heads["0"].adaptation([2])
    copy = copy_at_state(model, earlier)
    assert list(copy.head.heads) == ["0"] and copy.head.heads["0"].out_features == 2
    assert list(model.head.heads) == ["0", "1"] and model.head.heads["0"].out_features == 3  # untouched
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in earlier.items())
    x = torch.randn(3, 4)
    assert copy(x, torch.zeros(3, dtype=torch.long)).shape == (3, 2)
