"""Batch renormalisation: batch normalisation while r=1, d=0; the running moments at eval; r, d clipped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_cl.models import BatchRenorm1d, BatchRenorm2d, BatchRenormSettings, replace_batch_norm


def test_while_clipped_to_r1_d0_training_is_batch_normalisation() -> None:
    torch.manual_seed(0)
    renorm, norm = BatchRenorm2d(3), nn.BatchNorm2d(3)  # the paper's schedule: r_max=1, d_max=0 at first
    with torch.no_grad():
        for layer in (renorm, norm):
            layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    for step in range(3):
        x = (torch.randn(6, 3, 4, 4) * (step + 2) + step).requires_grad_(True)
        x_bn = x.detach().clone().requires_grad_(True)
        out, out_bn = renorm(x), norm(x_bn)
        torch.testing.assert_close(out, out_bn, rtol=1e-5, atol=1e-5)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        (out_bn * torch.arange(out.numel()).view_as(out)).sum().backward()
        torch.testing.assert_close(x.grad, x_bn.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(renorm.weight.grad, norm.weight.grad, rtol=1e-4, atol=1e-4)
    assert int(renorm.num_batches_tracked) == 3 and renorm.limits() == (1.0, 0.0)


def test_eval_uses_the_running_moments() -> None:
    layer = BatchRenorm1d(2)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25]) - layer.eps)  # sigma = 2 and 0.5
        layer.weight.copy_(torch.tensor([3.0, 1.0]))
        layer.bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[3.0, -1.0], [1.0, -2.0]])
    out = layer.eval()(x)
    # gamma (x - mu) / sigma + beta: [3 * 2 / 2, (1 / 0.5) + 1], [0, 1]
    torch.testing.assert_close(out, torch.tensor([[3.0, 3.0], [0.0, 1.0]]))
    assert int(layer.num_batches_tracked) == 0  # eval changes nothing


def test_r_and_d_are_clipped_by_the_schedule() -> None:
    settings = BatchRenormSettings(r_max=3.0, d_max=5.0, warmup_steps=2, r_max_steps=4, d_max_steps=6)
    # Linear after the warm-up: r_max reaches 3 at step 4, d_max 5 at step 6.
    assert [settings.limits(s) for s in (0, 2, 3, 4, 6)] == [
        (1.0, 0.0),
        (1.0, 0.0),
        (2.0, 1.25),
        (3.0, 2.5),
        (3.0, 5.0),
    ]
    layer = BatchRenorm1d(1, eps=1e-12, settings=settings)
    with torch.no_grad():
        layer.running_var.fill_(1.0)  # mu = 0, sigma = 1
        layer.num_batches_tracked.fill_(3)  # r in [1/2, 2], d in [-1.25, 1.25]
    x = torch.tensor([[0.0], [6.0]])  # mu_B = 3, sigma_B = 3: r = 3 -> 2, d = 3 -> 1.25
    out = layer(x)
    # (x - mu_B) / sigma_B * r + d = -1 * 2 + 1.25, 1 * 2 + 1.25
    torch.testing.assert_close(out, torch.tensor([[-0.75], [3.25]]))
    # mu += 0.01 (3 - 0); sigma += 0.01 (3 - 1) = 1.02, kept as sigma^2 - eps
    torch.testing.assert_close(layer.running_mean, torch.tensor([0.03]))
    torch.testing.assert_close(layer.running_var, torch.tensor([1.02**2]))
    # In the warm-up the same batch is normalised by its own moments.
    with torch.no_grad():
        layer.num_batches_tracked.fill_(0)
    torch.testing.assert_close(layer(x), torch.tensor([[-1.0], [1.0]]))


def test_replacing_batch_norm_keeps_the_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 5), nn.BatchNorm1d(5)
    )
    for _ in range(3):
        model(torch.randn(8, 1, 5, 5))
    x = torch.randn(4, 1, 5, 5)
    before = model.eval()(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    assert replace_batch_norm(model) is model
    assert isinstance(model[1], BatchRenorm2d) and isinstance(model[5], BatchRenorm1d)
    assert model[1].weight is weight and int(model[1].num_batches_tracked) == 3
    torch.testing.assert_close(model(x), before)  # eval: the same running moments
    # The same parameters and buffers: either model's checkpoint loads into the other.
    assert list(model.state_dict()) == list(state)
    plain = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 5), nn.BatchNorm1d(5)
    )
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.eval()(x), before)
    lone = replace_batch_norm(nn.BatchNorm1d(3))
    assert isinstance(lone, BatchRenorm1d)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="no running statistics"):
        replace_batch_norm(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match="r_max must be a finite number >= 1"):
        BatchRenormSettings(r_max=0.5)
    with pytest.raises(ValueError, match=r"momentum must lie in \(0, 1\]"):
        BatchRenormSettings(momentum=0.0)
    with pytest.raises(ValueError, match="r_max_steps must be >= warmup_steps=10"):
        BatchRenormSettings(warmup_steps=10, r_max_steps=5)
    with pytest.raises(ValueError, match="BatchRenorm2d expects a 4D input"):
        BatchRenorm2d(3)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        BatchRenorm1d(0)
