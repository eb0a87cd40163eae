import pytest
import torch

from lightning_cl.data import TensorClassificationDataset


def test_batched_read_applies_transform_once_per_batch():
    calls = []

    def transform(x):
        calls.append(tuple(x.shape))
        return x.float() * 2

    ds = TensorClassificationDataset(
        torch.arange(10, dtype=torch.uint8).reshape(5, 2), [0, 1, 2, 3, 4], transform
    )
    x, y = ds.__getitems__([4, 1])
    assert x.tolist() == [[16.0, 18.0], [4.0, 6.0]]
    assert y.tolist() == [4, 1]
    assert calls == [(2, 2)]
    assert ds.inputs.dtype == torch.uint8


def test_getitem_and_len():
    ds = TensorClassificationDataset(torch.zeros(3, 4), torch.tensor([2, 0, 1]))
    x, y = ds[2]
    assert len(ds) == 3 and tuple(x.shape) == (4,) and int(y) == 1
    assert "n=3" in repr(ds)


@pytest.mark.parametrize(
    ("inputs", "targets", "match"),
    [
        (torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), "differ in length"),
        (torch.zeros(3, 2), torch.zeros(3), "1-d integer"),
        (torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long), "1-d integer"),
    ],
)
def test_bad_input(inputs, targets, match):
    with pytest.raises(ValueError, match=match):
        TensorClassificationDataset(inputs, targets)
