from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_cl.data import BatchLoader, DatasetView, SplitDigits, TensorClassificationDataset, make_loader


def test_batches_are_gathered_views_with_task_labels(make_view) -> None:
    batches = list(BatchLoader(make_view(), 4))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(len(b) == 3 and torch.equal(b[0].squeeze(1), b[1].float()) for b in batches)
    assert len(BatchLoader(make_view(), 4)) == 3 and len(BatchLoader(make_view(), 4, drop_last=True)) == 2
    assert [len(b[1]) for b in BatchLoader(make_view(), 4, drop_last=True)] == [4, 4]


@pytest.mark.parametrize("n", [10, 11])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_data_like_a_distributed_sampler(
    make_view, batch_ids, n, shuffle, world_size
) -> None:
    view = make_view(n)
    for rank in range(world_size):
        loader = BatchLoader(view, 3, shuffle=shuffle, seed=7, rank=rank, world_size=world_size)
        sampler = DistributedSampler(view, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=7)
        for epoch in range(3):  # every pass, as Lightning's sampler after set_epoch(epoch)
            sampler.set_epoch(epoch)
            assert batch_ids(loader) == list(sampler)
        assert len(loader) == -(-len(sampler) // 3)


def test_shuffled_orders_depend_on_seed_and_epoch_only(make_view, batch_ids) -> None:
    a, b = (
        BatchLoader(make_view(50), 8, shuffle=True, seed=3),
        BatchLoader(make_view(50), 8, shuffle=True, seed=3),
    )
    first_a, first_b = batch_ids(a), batch_ids(b)
    assert first_a == first_b and sorted(first_a) == list(range(50))
    assert batch_ids(a) != first_a  # the next pass is reshuffled
    assert batch_ids(BatchLoader(make_view(50), 8, shuffle=True, seed=4)) != first_a


def test_num_samples_draws_whole_passes(make_view, batch_ids) -> None:
    ids = batch_ids(BatchLoader(make_view(10), 4, shuffle=True, num_samples=25))
    counts = torch.bincount(torch.tensor(ids), minlength=10)
    assert len(ids) == 25 and int(counts.min()) == 2 and int(counts.max()) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2, num_samples=5), "needs shuffle=True"),
        (dict(batch_size=2, rank=2, world_size=2), "rank must lie in"),
        (dict(batch_size=2, num_workers=-1), "num_workers must be an int >= 0"),
    ],
)
def test_bad_arguments(make_view, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchLoader(make_view(), **kwargs)


@pytest.mark.parametrize("settings", [dict(num_workers=1), dict(pin_memory=True), dict(num_workers=2)])
def test_workers_and_pinning_give_the_batches_of_the_main_process(settings) -> None:
    view = SplitDigits().train_stream[0].dataset
    kwargs = dict(shuffle=True, num_samples=300, seed=5, rank=1, world_size=2, drop_last=True)
    main, other = BatchLoader(view, 16, **kwargs), BatchLoader(view, 16, **kwargs, **settings)
    assert len(main) == len(other) == 150 // 16
    for _epoch in range(2):
        a, b = list(main), list(other)
        assert len(a) == len(b) == len(main)
        for u, v in zip(a, b):
            assert all(torch.equal(p, q.cpu()) for p, q in zip(u, v))


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("stop", [0, 3, 7])
def test_state_dict_resumes_the_pass_in_the_same_order(make_view, batch_ids, num_workers, stop) -> None:
    def loader(seed: int = 11):
        return BatchLoader(make_view(30), 4, shuffle=True, seed=seed, num_workers=num_workers)

    reference = loader()
    first, second = batch_ids(reference), batch_ids(reference)  # two passes, never stopped
    interrupted = loader()
    batches = iter(interrupted)
    seen = [int(v) for _ in range(stop) for v in next(batches)[1]]
    state = interrupted.state_dict()
    assert (state["epoch"], state["position"]) == (1 if stop else 0, stop)
    resumed = loader(seed=99)  # a fresh loader with another seed, as in a new process
    resumed.load_state_dict(state)
    rest = batch_ids(resumed)
    assert seen + rest == first if stop else rest == first
    assert batch_ids(resumed) == second


def test_state_dict_restores_the_random_states(make_view) -> None:
    loader = BatchLoader(make_view(), 4)
    state = loader.state_dict()
    expected = torch.rand(3)
    torch.rand(5)
    BatchLoader(make_view(), 4).load_state_dict(state)
    assert torch.equal(torch.rand(3), expected)


def test_make_loader_reads_in_the_main_process_or_through_workers(make_view, batch_ids) -> None:
    view = SplitDigits().train_stream[0].dataset
    loader = make_loader(view, 8, num_workers=1)
    assert isinstance(loader, BatchLoader) and not isinstance(loader, torch.utils.data.DataLoader)
    x, y, t = next(iter(loader))
    assert x.shape == (8, 1, 8, 8) and y.shape == t.shape == (8,)
    assert batch_ids(make_loader(view, 8, num_workers=1)) == batch_ids(make_loader(view, 8))


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
