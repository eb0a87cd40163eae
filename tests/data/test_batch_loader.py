from __future__ import annotations

import pytest
import torch

from lightning_cl.data import DatasetView, SplitDigits, TensorClassificationDataset
from lightning_cl.data.batch_loader import BatchLoader
from lightning_cl.data.experience import make_loader


def _view(n: int = 10) -> DatasetView:
    return DatasetView(
        TensorClassificationDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n)), range(n)
    )


def _ids(loader: BatchLoader) -> list[int]:
    return [int(v) for batch in loader for v in batch[1]]


def test_batches_are_gathered_views_with_task_labels() -> None:
    batches = list(BatchLoader(_view(), 4))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(len(b) == 3 and torch.equal(b[0].squeeze(1), b[1].float()) for b in batches)
    assert len(BatchLoader(_view(), 4)) == 3 and len(BatchLoader(_view(), 4, drop_last=True)) == 2
    assert [len(b[1]) for b in BatchLoader(_view(), 4, drop_last=True)] == [4, 4]


@pytest.mark.parametrize("n", [10, 11])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_share_the_data_like_a_distributed_sampler(n: int, shuffle: bool) -> None:
    loaders = [BatchLoader(_view(n), 3, shuffle=shuffle, seed=7, rank=r, world_size=2) for r in range(2)]
    parts = [_ids(loader) for loader in loaders]
    assert len(parts[0]) == len(parts[1]) == -(-n // 2)  # equal shares, padded
    assert len(loaders[0]) == len(loaders[1])
    assert set(parts[0]) | set(parts[1]) == set(range(n))  # together: every sample
    if n % 2 == 0:
        assert not set(parts[0]) & set(parts[1])  # and no sample twice


def test_shuffled_orders_depend_on_seed_and_epoch_only() -> None:
    a, b = BatchLoader(_view(50), 8, shuffle=True, seed=3), BatchLoader(_view(50), 8, shuffle=True, seed=3)
    first_a, first_b = _ids(a), _ids(b)
    assert first_a == first_b and sorted(first_a) == list(range(50))
    assert _ids(a) != first_a  # the next pass is reshuffled
    assert _ids(BatchLoader(_view(50), 8, shuffle=True, seed=4)) != first_a


def test_num_samples_draws_whole_passes() -> None:
    ids = _ids(BatchLoader(_view(10), 4, shuffle=True, num_samples=25))
    counts = torch.bincount(torch.tensor(ids), minlength=10)
    assert len(ids) == 25 and int(counts.min()) == 2 and int(counts.max()) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2, num_samples=5), "needs shuffle=True"),
        (dict(batch_size=2, rank=2, world_size=2), "rank must lie in"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchLoader(_view(), **kwargs)


def test_make_loader_uses_a_dataloader_for_workers_and_pinning() -> None:
    view = SplitDigits().train_stream[0].dataset
    assert isinstance(make_loader(view, 8), BatchLoader)
    loader = make_loader(view, 8, num_workers=1)
    assert isinstance(loader, torch.utils.data.DataLoader)
    x, y, t = next(iter(loader))
    assert x.shape == (8, 1, 8, 8) and y.shape == t.shape == (8,)


class _NoDirect(BatchLoader):
    """The same loader forced through ``__getitems__``: the reference for the direct path."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dataset = _Opaque(self.dataset)


class _Opaque:
    def __init__(self, view: DatasetView) -> None:
        self.view = view
        self.task_labels = view.task_labels

    def __len__(self) -> int:
        return len(self.view)

    def __getitems__(self, positions):
        return self.view.__getitems__(positions)

    def direct_read(self) -> None:
        return None


def _domain_views() -> dict[str, DatasetView]:
    from lightning_cl.data.concat_dataset import ConcatClassificationDataset
    from lightning_cl.data.domain_dataset import DomainDataset
    from lightning_cl.data.relabeled import RelabeledDataset
    from lightning_cl.data.transforms import Normalize, PixelPermutation

    g = torch.Generator().manual_seed(0)
    raw = TensorClassificationDataset(
        torch.randint(0, 256, (40, 1, 3, 3), dtype=torch.uint8, generator=g), torch.arange(40) % 5
    )
    perms = [PixelPermutation(torch.randperm(9, generator=g)) for _ in range(3)]
    domains = DomainDataset(raw, perms, Normalize((0.5,), (0.25,)))
    relabeled = RelabeledDataset(domains, [4, 3, 2, 1, 0])
    concat = ConcatClassificationDataset([raw, TensorClassificationDataset(torch.zeros(7, 1, 3, 3), [1] * 7)])
    return {
        "tensor": DatasetView(raw, range(3, 33), task_labels=2),
        "one domain": DatasetView(domains, domains.domain_indices(1)[5:], task_labels=1),
        "relabeled domain": DatasetView(relabeled, relabeled.targets.new_tensor(range(80, 120))),
        "mixed tasks": DatasetView(domains, domains.domain_indices(2), task_labels=torch.arange(40) % 3),
        "two domains (no direct read)": DatasetView(domains, range(30, 50)),
        "one part of a concat": DatasetView(concat, range(41, 47)),
    }


@pytest.mark.parametrize("name", list(_domain_views()))
@pytest.mark.parametrize("shuffle", [False, True])
def test_direct_reads_give_the_batches_of_getitems(name: str, shuffle: bool) -> None:
    view = _domain_views()[name]
    assert (view.direct_read() is None) == ("no direct read" in name)
    fast = list(BatchLoader(view, 7, shuffle=shuffle, seed=5, rank=1, world_size=2))
    slow = list(_NoDirect(view, 7, shuffle=shuffle, seed=5, rank=1, world_size=2))
    assert len(fast) == len(slow) > 0
    for a, b in zip(fast, slow):
        assert all(u.dtype == v.dtype and torch.equal(u, v) for u, v in zip(a, b))


def test_direct_read_keeps_the_transform_order_of_the_wrappers() -> None:
    from lightning_cl.data.domain_dataset import DomainDataset

    base = TensorClassificationDataset(torch.ones(4, 1), [0, 1, 0, 1], transform=lambda x: x + 1)
    ds = DomainDataset(base, [lambda x: x * 10, lambda x: x * 100], transform=lambda x: x - 3)
    plan = DatasetView(ds, [4, 6]).direct_read()
    assert plan is not None and plan.read(plan.indices)[0].flatten().tolist() == [197.0, 197.0]
    assert plan.indices.tolist() == [0, 2]
