import torch

from lightning_cl.data import SplitFMNIST, SplitKMNIST
from lightning_cl.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD


def test_fmnist_and_kmnist_from_idx_files(idx_root):
    fm = SplitFMNIST(idx_root, n_experiences=5, seed=2)
    assert fm.name == "SplitFMNIST" and sum(len(e) for e in fm.train_stream) == 60
    assert sorted(c for e in fm.train_stream for c in e.classes_in_this_experience) == list(range(10))
    x, _, _ = next(iter(fm.test_stream[0].test_dataloader()))
    raw = fm.test_stream[0].dataset.base.inputs[fm.test_stream[0].dataset.indices[0]]
    expected = (raw.float() / 255 - FMNIST_MEAN[0]) / FMNIST_STD[0]
    assert torch.allclose(x[0], expected, atol=1e-5)
    km = SplitKMNIST(idx_root, n_experiences=10, task_labels=True)
    assert km.scenario == "task_incremental" and km.n_experiences == 10
