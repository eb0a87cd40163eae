import dataclasses

import lightning as L
import pytest
import torch

from lightning_cl.data import (
    DatasetView,
    Experience,
    LoaderSettings,
    SplitDigits,
    TensorClassificationDataset,
    TrainDataSource,
    make_loader,
)


def test_loaders_and_batch_shapes(make_experience):
    exp = make_experience(batch_size=4, eval_batch_size=3)
    x, y, t = next(iter(exp.train_dataloader()))
    assert x.shape == (4, 1, 1, 2) and y.shape == (4,) and t.tolist() == [3, 3, 3, 3]
    batches = list(exp.test_dataloader())
    assert [len(b[1]) for b in batches] == [3, 3, 3, 1]
    assert torch.cat([b[1] for b in batches]).tolist() == exp.dataset.targets.tolist()
    assert exp.val_dataloader() == []
    assert len(list(exp.predict_dataloader())) == 4
    assert exp.classes_in_this_experience == [0, 1] and exp.task_labels == [3] and exp.task_label == 3
    assert exp.batch_size == 4 and exp.eval_batch_size == 3


def test_eval_batch_size_follows_the_batch_size(make_experience):
    exp = make_experience(batch_size=4)
    assert exp.eval_batch_size == 4 and [len(b[1]) for b in exp.test_dataloader()] == [4, 4, 2]


def test_train_transform_only_on_training_batches(make_experience):
    exp = make_experience(batch_size=10, train_transform=lambda x: x * 0 - 1)
    x_train = next(iter(exp.train_dataloader()))[0]
    x_eval = next(iter(exp.test_dataloader()))[0]
    assert (x_train == -1).all() and x_eval.max() == 19
    memory = next(iter(exp.loader(exp.dataset, train=True, batch_size=2)))[0]
    assert (memory == -1).all()


def test_loaders_with_workers_are_built_once(make_experience):
    exp = make_experience(num_workers=1)
    assert exp.test_dataloader() is exp.test_dataloader()
    assert exp.train_dataloader() is exp.train_dataloader()
    x, _y, _t = next(iter(exp.test_dataloader()))
    assert x.shape[0] == 10


def test_replace_follows_every_field(make_experience):
    exp = make_experience(batch_size=5)
    other = exp.replace(index=9)
    assert other.index == 9 and other.batch_size == 5 and other.dataset is exp.dataset
    assert other.loader_settings is exp.loader_settings and other.classes_in_this_experience == [0, 1]
    resized = exp.replace(loader_settings=dataclasses.replace(exp.loader_settings, batch_size=2))
    assert resized.batch_size == 2 and len(resized.train_dataloader()) == 5
    with pytest.raises(TypeError, match=r"unknown fields \['batch_size'\]"):
        exp.replace(batch_size=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size must be a positive int, got 0"),
        (dict(eval_batch_size=0), "eval_batch_size must be a positive int or None, got 0"),
        (dict(num_workers=-1), "num_workers must be an int >= 0, got -1"),
        (dict(augment_on="gpu"), "augment_on must be one of .*'gpu'"),
        (dict(pin_memory="yes"), "pin_memory must be a bool, got 'yes'"),
    ],
)
def test_bad_loader_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoaderSettings(**kwargs)


def test_mixed_task_labels_and_errors():
    ds = TensorClassificationDataset(torch.zeros(4, 1), [0, 1, 0, 1])
    exp = Experience(
        DatasetView(ds, range(4), [0, 0, 1, 1]), index=0, classes_in_this_experience=[0, 1], n_classes=2
    )
    with pytest.raises(ValueError, match="task labels"):
        _ = exp.task_label
    view = DatasetView(ds, range(4))
    with pytest.raises(
        ValueError, match=r"loader_settings=\) must be a lightning_cl.data.LoaderSettings, got dict"
    ):
        Experience(view, index=0, classes_in_this_experience=[0], n_classes=2, loader_settings={})
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(view, 0)


class _Twice(L.Callback, TrainDataSource):
    """A trainer callback that adds the experience's own data once more, under ``"again"``."""

    def train_dataloaders(self, experience, current):
        return {"again": experience.loader(experience.dataset, train=True)}


def test_train_data_sources_among_the_callbacks_add_loaders():
    exp = SplitDigits().train_stream[0]
    trainer = L.Trainer(callbacks=[_Twice()], logger=False, enable_progress_bar=False, accelerator="cpu")
    exp.trainer = trainer
    loaders = exp.train_dataloader()
    assert sorted(loaders) == ["again", "current"] and len(loaders["again"]) == len(loaders["current"])
    exp.trainer = L.Trainer(callbacks=[L.Callback()], logger=False, enable_progress_bar=False)
    assert not isinstance(exp.train_dataloader(), dict)  # a plain callback adds nothing


def test_state_dict_carries_the_training_loaders_to_the_next_fit(batch_ids):
    def attached():
        exp = SplitDigits(n_experiences=5).train_stream[0]
        exp.trainer = L.Trainer(
            callbacks=[_Twice()], logger=False, enable_progress_bar=False, accelerator="cpu"
        )
        return exp

    exp = attached()
    loaders = exp.train_dataloader()
    batches = iter(loaders["current"])
    seen = [int(v) for _ in range(3) for v in next(batches)[1]]
    state = exp.state_dict()
    assert [s["position"] for s in state["train_loaders"]] == [3, 0]
    rest = batch_ids(batches)
    resumed = attached()
    resumed.load_state_dict(state)
    assert seen + batch_ids(resumed.train_dataloader()["current"]) == seen + rest
    exp.teardown("fit")
    assert exp.state_dict() == {} and exp.trainer is None
    broken = attached()
    broken.load_state_dict({"train_loaders": state["train_loaders"][:1]})
    with pytest.raises(ValueError, match="state of 1 training loaders of experience 0, but 2 were built"):
        broken.train_dataloader()
