import pytest
import torch

from lightning_cl.data import DatasetView, Experience, TensorClassificationDataset, make_loader


def experience(**kwargs):
    ds = TensorClassificationDataset(torch.arange(20.0).reshape(10, 1, 1, 2), torch.arange(10) % 2)
    return Experience(
        DatasetView(ds, range(10), 3), index=2, classes_in_this_experience=[1, 0], n_classes=2, **kwargs
    )


def test_loaders_and_batch_shapes():
    exp = experience(batch_size=4, eval_batch_size=3)
    x, y, t = next(iter(exp.train_dataloader()))
    assert x.shape == (4, 1, 1, 2) and y.shape == (4,) and t.tolist() == [3, 3, 3, 3]
    batches = list(exp.test_dataloader())
    assert [len(b[1]) for b in batches] == [3, 3, 3, 1]
    assert torch.cat([b[1] for b in batches]).tolist() == exp.dataset.targets.tolist()
    assert exp.val_dataloader() == []
    assert len(list(exp.predict_dataloader())) == 4
    assert exp.classes_in_this_experience == [0, 1] and exp.task_labels == [3] and exp.task_label == 3


def test_train_transform_only_on_training_batches():
    exp = experience(batch_size=10, train_transform=lambda x: x * 0 - 1)
    x_train = next(iter(exp.train_dataloader()))[0]
    x_eval = next(iter(exp.test_dataloader()))[0]
    assert (x_train == -1).all() and x_eval.max() == 19
    memory = next(iter(exp.loader(exp.dataset, train=True, batch_size=2)))[0]
    assert (memory == -1).all()


def test_loaders_with_workers_are_built_once():
    exp = experience(num_workers=1)
    assert exp.test_dataloader() is exp.test_dataloader()
    assert exp.train_dataloader() is exp.train_dataloader()
    x, _y, _t = next(iter(exp.test_dataloader()))
    assert x.shape[0] == 10


def test_replace_copies_settings():
    exp = experience(batch_size=5)
    other = exp.replace(index=9)
    assert other.index == 9 and other.batch_size == 5 and other.dataset is exp.dataset


def test_mixed_task_labels_and_errors():
    ds = TensorClassificationDataset(torch.zeros(4, 1), [0, 1, 0, 1])
    exp = Experience(
        DatasetView(ds, range(4), [0, 0, 1, 1]), index=0, classes_in_this_experience=[0, 1], n_classes=2
    )
    with pytest.raises(ValueError, match="task labels"):
        _ = exp.task_label
    view = DatasetView(ds, range(4))
    for kwargs, match in (
        (dict(batch_size=0), "batch_size"),
        (dict(eval_batch_size=0), "eval_batch_size"),
        (dict(num_workers=-1), "num_workers"),
        (dict(augment_on="gpu"), "augment_on must be one of .*'gpu'"),
    ):
        with pytest.raises(ValueError, match=match):
            Experience(view, index=0, classes_in_this_experience=[0], n_classes=2, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(view, 0)
