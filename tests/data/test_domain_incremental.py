import pytest
import torch

from lightning_cl.data import (
    DomainDataset,
    TensorClassificationDataset,
    domain_incremental,
    permuted,
    rotated,
)
from lightning_cl.data.domain_incremental import random_angles


def images(n=6):
    return TensorClassificationDataset(
        torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2), torch.arange(n) % 3
    )


def test_user_transform_per_experience_and_shared_transform():
    ds = images()
    bench = domain_incremental(ds, ds, [lambda x: x, lambda x: x + 100], transform=lambda x: x.float() / 2)
    assert bench.scenario == "domain_incremental" and len(bench.train_stream) == 2
    x0 = bench.train_stream[0].dataset.__getitems__([1])[0]
    x1 = bench.train_stream[1].dataset.__getitems__([1])[0]
    assert x0.flatten().tolist() == [2.0, 2.5, 3.0, 3.5] and x1.flatten().tolist() == [52.0, 52.5, 53.0, 53.5]
    assert all(e.classes_in_this_experience == [0, 1, 2] for e in bench.train_stream)
    assert bench.train_stream[1].dataset.base is bench.train_stream[0].dataset.base


def test_mixed_domain_batch_as_replay_reads_it():
    ds = DomainDataset(images(), [lambda x: x, lambda x: x * 0])
    x, y = ds.__getitems__([0, 6, 1])
    assert x[1].sum() == 0 and x[0].sum() == 6 and y.tolist() == [0, 0, 1]


def test_permuted_is_a_seeded_permutation():
    ds = images()
    a, b = permuted(ds, ds, 3, seed=5), permuted(ds, ds, 3, seed=5)
    xa = a.train_stream[2].dataset.__getitems__([0])[0]
    xb = b.train_stream[2].dataset.__getitems__([0])[0]
    assert torch.equal(xa, xb) and sorted(xa.flatten().tolist()) == [0, 1, 2, 3]
    assert [e.task_label for e in permuted(ds, ds, 2, seed=0, task_labels=True).train_stream] == [0, 1]


def test_rotated_angles():
    ds = TensorClassificationDataset(
        torch.tensor([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]], dtype=torch.uint8), [0]
    )
    bench = rotated(ds, ds, angles=[0, 90])
    assert bench.train_stream[1].dataset[0][0][0, 0].tolist() == [3, 6, 9]
    assert random_angles(3, seed=1) == random_angles(3, seed=1)
    with pytest.raises(ValueError, match=r"\[-180, 180\]"):
        rotated(ds, ds, angles=[200])
    with pytest.raises(ValueError, match="must match"):
        rotated(ds, ds, 3, angles=[0, 90])
    with pytest.raises(ValueError, match="n_experiences"):
        rotated(ds, ds)


def test_errors():
    with pytest.raises(ValueError, match="at least one transform"):
        domain_incremental(images(), images(), [])
    with pytest.raises(ValueError, match="positive int"):
        permuted(images(), images(), 0)
