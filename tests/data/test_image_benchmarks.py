"""Tiny ImageNet, CUB-200 and CORe50: small files in their own layouts, read through workers."""

import pytest
import torch

from lightning_cl.data import CORe50, LoaderSettings, SplitCUB200, SplitOmniglot, SplitTinyImageNet


def test_tiny_imagenet(tiny_imagenet_root):
    bench = SplitTinyImageNet(tiny_imagenet_root, n_experiences=2, loader=LoaderSettings(batch_size=4))
    assert bench.n_classes == 4 and sum(len(e) for e in bench.train_stream) == 12
    assert sum(len(e) for e in bench.test_stream) == 8
    x, _y, _t = next(iter(bench.train_stream[0].train_dataloader()))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32


def test_tiny_imagenet_with_a_worker(tiny_imagenet_root):
    bench = SplitTinyImageNet(
        tiny_imagenet_root, n_experiences=2, loader=LoaderSettings(batch_size=4, num_workers=1)
    )
    exp = bench.test_stream[1]
    assert exp.test_dataloader() is exp.test_dataloader()
    ys = torch.cat([b[1] for b in exp.test_dataloader()])
    assert set(ys.tolist()) == set(exp.classes_in_this_experience)


def test_cub200(cub_root):
    bench = SplitCUB200(
        cub_root, n_experiences=3, classes_first_batch=2, size=(16, 16), loader=LoaderSettings()
    )
    assert [len(e.classes_in_this_experience) for e in bench.train_stream] == [2, 1, 1]
    assert sum(len(e) for e in bench.train_stream) == 8 and sum(len(e) for e in bench.test_stream) == 4
    x, _, _ = next(iter(bench.test_stream[0].test_dataloader()))
    assert x.shape == (2, 3, 16, 16)


def test_omniglot(omniglot_root):
    bench = SplitOmniglot(omniglot_root, n_experiences=2)
    assert bench.n_classes == 4 and sum(len(e) for e in bench.train_stream) == 16
    assert sum(len(e) for e in bench.test_stream) == 4
    x, _, _ = next(iter(bench.train_stream[0].train_dataloader()))
    assert x.shape[1:] == (1, 105, 105)
    with pytest.raises(ValueError, match="test_fraction"):
        SplitOmniglot(omniglot_root, test_fraction=1.0)


@pytest.mark.parametrize(
    ("scenario", "n_exp", "kind"),
    [("ni", 8, "new_instances"), ("nc", 9, "class_incremental"), ("nic", 79, "new_instances_and_classes")],
)
def test_core50(core50_root, scenario, n_exp, kind):
    bench = CORe50(core50_root, scenario=scenario, loader=LoaderSettings())
    assert bench.n_experiences == n_exp and bench.scenario == kind and bench.n_classes == 50
    assert len(bench.test_stream) == 1 and len(bench.test_stream[0]) == 30
    if scenario == "ni":
        assert all(e.classes_in_this_experience == list(range(10)) for e in bench.train_stream)
    if scenario == "nc":
        assert bench.class_order == list(range(10))
    x, _y, _t = next(iter(bench.train_stream[0].train_dataloader()))
    assert x.shape[1:] == (3, 16, 16)


def test_core50_categories_and_errors(core50_root, tmp_path):
    bench = CORe50(core50_root, scenario="ni", object_lvl=False, loader=LoaderSettings())
    assert bench.n_classes == 10 and bench.train_stream[0].classes_in_this_experience == [0, 1]
    with pytest.raises(ValueError, match="scenario must be one of"):
        CORe50(core50_root, scenario="xy")
    with pytest.raises(ValueError, match="run must be"):
        CORe50(core50_root, scenario="ni", run=10)
    with pytest.raises(FileNotFoundError, match=r"CORe50 not found: .*NI_inc/run0/train_batch_00"):
        CORe50(tmp_path, scenario="ni")
