import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_cl.data import DatasetView, RelabeledDataset, TensorClassificationDataset


def _base() -> TensorClassificationDataset:
    return TensorClassificationDataset(torch.arange(12.0).reshape(6, 2), [3, 0, 2, 1, 3, 0])


def test_targets_and_batches_are_mapped_inputs_untouched() -> None:
    ds = RelabeledDataset(_base(), [10, 11, 12, 13])
    assert ds.targets.tolist() == [13, 10, 12, 11, 13, 10] and len(ds) == 6
    x, y = ds.__getitems__(torch.tensor([4, 1]))
    assert y.tolist() == [13, 10] and torch.equal(x, torch.tensor([[8.0, 9.0], [2.0, 3.0]]))
    x0, y0 = ds[2]
    assert int(y0) == 12 and x0.tolist() == [4.0, 5.0]


def test_direct_reads_map_the_labels_like_getitems() -> None:
    ds = RelabeledDataset(_base(), [3, 2, 1, 0])
    view = DatasetView(ds, [5, 0, 3])
    plan = view.direct_read()
    assert plan is not None
    x, y = plan.read(plan.indices)
    assert y.tolist() == [3, 0, 2] == view.__getitems__(torch.arange(3))[1].tolist()
    assert torch.equal(x, view.__getitems__(torch.arange(3))[0])


def test_a_base_without_direct_reads_is_read_by_gather() -> None:
    base = TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 1]))
    base.targets = base.tensors[1]  # type: ignore[attr-defined]
    ds = RelabeledDataset(base, [1, 0])
    assert ds.targets.tolist() == [1, 0, 0] and ds.direct_read(torch.arange(3)) is None
    assert ds.__getitems__([0, 2])[1].tolist() == [1, 0]


@pytest.mark.parametrize(("targets", "bad"), [([0, 4], 4), ([0, -1], -1)])
def test_targets_outside_the_table_are_refused(targets: list[int], bad: int) -> None:
    base = TensorClassificationDataset(torch.zeros(2, 1), torch.tensor(targets))
    with pytest.raises(ValueError, match=f"covers class ids 0..3, the data has class {bad}"):
        RelabeledDataset(base, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="no `targets` attribute"):
        RelabeledDataset(TensorDataset(torch.zeros(2, 1)), [0])
