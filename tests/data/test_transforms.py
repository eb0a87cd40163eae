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
    # Each output is a 4x4 window of the image padded by 2: find every sample's offset.
    padded = torch.nn.functional.pad(x[0, 0], (2, 2, 2, 2), value=-1.0)
    windows = {(i, j): padded[i : i + 4, j : j + 4] for i in range(5) for j in range(5)}
    offsets = [next(k for k, w in windows.items() if torch.equal(o[0], w)) for o in out]
    assert len(set(offsets)) >= 15  # 64 draws of 25 offsets: samples got different crops
    assert max(offsets.count(k) for k in set(offsets)) < 16  # and no offset is shared by the batch


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
