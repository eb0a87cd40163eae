import pytest
import torch

from lightning_cl.data import LoaderSettings, SplitCIFAR10, SplitCIFAR100, SplitCIFAR110, cifar_tensors


def test_cifar10_train_batches_augmented_eval_not(cifar_root):
    bench = SplitCIFAR10(cifar_root, n_experiences=5, loader=LoaderSettings(batch_size=10))
    assert sum(len(e) for e in bench.train_stream) == 50 and sum(len(e) for e in bench.test_stream) == 20
    exp = bench.train_stream[0]
    assert exp.dataset.base.inputs.dtype == torch.uint8
    plain, _, _ = exp.dataset.__getitems__(list(range(len(exp))))
    torch.manual_seed(0)
    aug = torch.cat([b[0] for b in exp.loader(exp.dataset, train=True, shuffle=False)])
    assert aug.shape == plain.shape == (10, 3, 32, 32) and not torch.equal(aug, plain)
    evaluated = torch.cat([b[0] for b in exp.test_dataloader()])
    assert torch.equal(evaluated, plain)
    half = SplitCIFAR10(cifar_root, n_experiences=6, first_exp_with_half_classes=True)
    assert [len(e.classes_in_this_experience) for e in half.train_stream] == [5, 1, 1, 1, 1, 1]
    assert SplitCIFAR10(cifar_root, augment=False).train_stream[0].train_transform is None


def test_cifar100_and_110(cifar_root):
    c100 = SplitCIFAR100(cifar_root)
    assert c100.n_experiences == 10 and c100.n_classes == 100
    c110 = SplitCIFAR110(cifar_root, n_experiences=11, seed=1)
    assert c110.n_classes == 110 and c110.train_stream[0].classes_in_this_experience == list(range(10))
    assert sorted(c for e in c110.train_stream[1:] for c in e.classes_in_this_experience) == list(
        range(10, 110)
    )
    assert len(c110.train_stream[0]) == 50 and sum(len(e) for e in c110.train_stream[1:]) == 200
    with pytest.raises(ValueError, match="must split evenly"):
        SplitCIFAR110(cifar_root, n_experiences=4)
    with pytest.raises(ValueError, match=">= 2"):
        SplitCIFAR110(cifar_root, n_experiences=1)


def test_errors(cifar_root, tmp_path):
    with pytest.raises(ValueError, match="10 or 100"):
        cifar_tensors(cifar_root, 20, True)
    with pytest.raises(RuntimeError, match=r"cifar-10-batches-py/data_batch_1 does not exist.*download=True"):
        SplitCIFAR10(tmp_path)
