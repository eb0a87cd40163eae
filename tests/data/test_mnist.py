import pytest
import torch

from lightning_cl.data import PermutedMNIST, RotatedMNIST, SplitMNIST


def test_split_mnist_on_real_files(mnist_root):
    bench = SplitMNIST(mnist_root, n_experiences=5)
    assert sum(len(e) for e in bench.train_stream) == 60_000
    assert sum(len(e) for e in bench.test_stream) == 10_000
    x, y, _t = next(iter(bench.train_stream[0].train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1}
    base = bench.train_stream[0].dataset.base
    assert base.inputs.dtype == torch.uint8
    full = base.transform(base.inputs[:2000])
    assert abs(float(full.mean())) < 0.1 and abs(float(full.std()) - 1) < 0.1


def test_permuted_and_rotated_on_real_files(mnist_root):
    bench = PermutedMNIST(mnist_root, n_experiences=2, seed=0)
    a, b = bench.train_stream[0].dataset[0][0], bench.train_stream[1].dataset[0][0]
    assert torch.equal(a.flatten().sort().values, b.flatten().sort().values) and not torch.equal(a, b)
    assert len(bench.train_stream[1]) == 60_000 and len(bench.test_stream[1]) == 10_000
    rot = RotatedMNIST(mnist_root, n_experiences=2, rotations_list=[0, 180])
    x0, x1 = rot.test_stream[0].dataset[0][0], rot.test_stream[1].dataset[0][0]
    assert torch.equal(x0.flip(-1).flip(-2), x1)


def test_small_idx_files(idx_root):
    bench = SplitMNIST(idx_root, n_experiences=2, class_ids_from_zero_in_each_exp=True)
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[0, 1, 2, 3, 4]] * 2
    assert PermutedMNIST(idx_root, n_experiences=3, task_labels=True).train_stream[2].task_label == 2
    assert len(RotatedMNIST(idx_root, n_experiences=4, seed=1).train_stream) == 4


def test_missing_files_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(
        RuntimeError, match=r"MNIST not found: .*MNIST/raw/train-images-idx3-ubyte does not exist"
    ):
        SplitMNIST(tmp_path)
