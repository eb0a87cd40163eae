import pytest
import torch
from torch.utils.data import Dataset

from lightning_cl.data import DatasetView, TensorClassificationDataset, gather, targets_of


class PerSample(Dataset):
    """A base without __getitems__: the view must fall back to one read per sample."""

    def __init__(self, n):
        self.targets = [i % 3 for i in range(n)]
        self.reads = 0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.reads += 1
        return torch.full((2,), float(i)), self.targets[i]


def base(n=10):
    return TensorClassificationDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 5)


def test_view_reads_batch_with_task_labels():
    view = DatasetView(base(), [7, 2, 5], task_labels=[1, 2, 3])
    x, y, t = view.__getitems__([2, 0])
    assert x.flatten().tolist() == [5.0, 7.0]
    assert y.tolist() == [0, 2] and t.tolist() == [3, 1]
    assert view.targets.tolist() == [2, 2, 0]
    x0, y0, t0 = view[1]
    assert float(x0) == 2.0 and int(y0) == 2 and int(t0) == 2


def test_per_sample_fallback_for_bases_without_getitems():
    ds = PerSample(6)
    view = DatasetView(ds, [5, 1, 3], task_labels=4)
    x, y, t = view.__getitems__([0, 2])
    assert x.shape == (2, 2) and x[:, 0].tolist() == [5.0, 3.0]
    assert y.dtype == torch.long and y.tolist() == [2, 0] and t.tolist() == [4, 4]
    assert ds.reads == 2
    assert gather(ds, torch.tensor([0]))[1].tolist() == [0]


def test_subset_and_concat_keep_base_and_labels():
    b = base()
    a, c = DatasetView(b, [0, 1, 2], 0), DatasetView(b, [8, 9], 1)
    joined = DatasetView.concat([a, c])
    assert joined.indices.tolist() == [0, 1, 2, 8, 9] and joined.task_labels.tolist() == [0, 0, 0, 1, 1]
    sub = joined.subset([4, 0])
    assert sub.base is b and sub.indices.tolist() == [9, 0] and sub.task_labels.tolist() == [1, 0]


def test_errors():
    b = base()
    with pytest.raises(ValueError, match="indices must lie in"):
        DatasetView(b, [10])
    with pytest.raises(ValueError, match="task labels for 2 indices"):
        DatasetView(b, [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="at least one view"):
        DatasetView.concat([])
    with pytest.raises(ValueError, match="different bases"):
        DatasetView.concat([DatasetView(b, [0]), DatasetView(base(), [0])])
    with pytest.raises(ValueError, match="no `targets`"):
        targets_of(object())
    with pytest.raises(ValueError, match="1-d integers"):
        DatasetView(type("D", (), {"targets": [0.5, 1.5]})(), [0])
