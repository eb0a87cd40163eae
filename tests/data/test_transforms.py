import pytest
import torch

from lightning_cl.data.transforms import (
    BatchRandomCrop,
    BatchRandomHorizontalFlip,
    PixelPermutation,
    normalize,
)


def test_random_crop_draws_per_sample():
    torch.manual_seed(0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = BatchRandomCrop(4, padding=2, fill=-1.0)(x)
    assert out.shape == x.shape
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 5
    assert ((out == -1) | (out >= 0)).all()


def test_flip_per_sample():
    torch.manual_seed(0)
    x = torch.arange(4.0).reshape(1, 1, 2, 2).repeat(100, 1, 1, 1)
    out = BatchRandomHorizontalFlip()(x)
    flipped = (out[:, 0, 0, 0] == 1).sum()
    assert 20 < int(flipped) < 80


def test_normalize_and_errors():
    out = normalize((0.5,), (0.25,))(torch.zeros(2, 1, 2, 2, dtype=torch.uint8))
    assert out.dtype == torch.float32 and torch.allclose(out, torch.tensor(-2.0))
    with pytest.raises(ValueError, match="permutation"):
        PixelPermutation([0, 0, 1])
    with pytest.raises(ValueError, match="padding"):
        BatchRandomCrop(2, padding=-1)
    with pytest.raises(ValueError, match="larger than"):
        BatchRandomCrop(9)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BatchRandomHorizontalFlip(2.0)
