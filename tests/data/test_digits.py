import pytest
import torch

from lightning_cl.data import SplitDigits, load_digits


def test_sizes_and_fixed_split():
    images, _labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    bench = SplitDigits(n_experiences=5)
    assert sum(len(e) for e in bench.train_stream) == 1438
    assert sum(len(e) for e in bench.test_stream) == 359
    assert bench.n_classes == 10 and bench.class_order == list(range(10))
    again = SplitDigits(n_experiences=5, seed=4)
    train_x = torch.cat([e.dataset.base.inputs for e in bench.train_stream[:1]])
    assert torch.equal(train_x, again.train_stream[0].dataset.base.inputs)
    for exp in bench.test_stream:
        per_class = [int((exp.dataset.targets == c).sum()) for c in exp.classes_in_this_experience]
        assert all(abs(n - 36) <= 1 for n in per_class)


def test_task_labels_and_errors():
    assert SplitDigits(n_experiences=2, task_labels=True).scenario == "task_incremental"
    with pytest.raises(ValueError, match="allowed values"):
        SplitDigits(n_experiences=3)
