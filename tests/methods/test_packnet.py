"""PackNet: train, prune, retrain; an earlier task's accuracy exactly unchanged after later tasks."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_cl.data import SplitDigits
from lightning_cl.methods import FromScratch, GDumb, PackNet
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs


def _multihead_module() -> ContinualModule:
    model = MLP(input_size=64, hidden_size=64, drop_rate=0.0, head="multihead")
    return ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))


def test_earlier_tasks_keep_their_accuracy_exactly() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module, packnet = _multihead_module(), PackNet(prune_ratio=0.5, post_prune_epochs=1)
    rows = []
    for experience in bench.train_stream[:3]:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[packnet])
        trainer.fit(module, datamodule=experience)
        result = trainer.test(module, datamodule=bench.test_stream[:3], verbose=False)[0]
        rows.append([result[f"test/acc/exp{j}"] for j in range(experience.index + 1)])
    assert rows[1][0] == rows[0][0] and rows[2][0] == rows[0][0]  # task 0, exactly
    assert rows[2][1] == rows[1][1]  # task 1, exactly
    assert min(rows[2]) > 0.85
    assert packnet.tasks == [0, 1, 2]
    owners = packnet.owners["features.1.weight"]
    shares = [float((owners == k).float().mean()) for k in range(4)]
    # Half of the free weights go to each task: 1/2, 1/4, 1/8; the rest is free (and zero).
    assert shares == pytest.approx([0.125, 0.5, 0.25, 0.125], abs=2e-3)
    weight = module.model.features[1].weight
    assert bool((weight[owners.to(weight.device) == 0] == 0).all())


def test_pruning_keeps_the_largest_free_weights_per_layer() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    packnet = PackNet(prune_ratio=0.5, head_layer="9")
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -3.0], [2.0, -0.2]]))
        model[1].weight.copy_(torch.tensor([[-1.0, 0.5]]))
    packnet.owners = {n: torch.zeros(w.shape, dtype=torch.uint8) for n, w in packnet.prunable(model).items()}
    packnet._task = 4
    packnet.prune(model, 0)
    assert packnet.owners["0.weight"].tolist() == [[0, 1], [1, 0]]
    assert packnet.owners["1.weight"].tolist() == [[1, 0]]
    assert model[0].weight.tolist() == [[0.0, -3.0], [2.0, 0.0]]
    # The second task prunes among the free weights only.
    packnet.tasks, packnet._task = [4], 7
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.3, -3.0], [2.0, 0.4]]))
    packnet.prune(model, 1)
    assert packnet.owners["0.weight"].tolist() == [[0, 1], [1, 2]]
    state = PackNet()
    state.load_state_dict(packnet.state_dict())
    assert state.tasks == [4] and torch.equal(state.owners["0.weight"], packnet.owners["0.weight"])


def test_set_up_errors() -> None:
    with pytest.raises(ValueError, match=r"prune_ratio must be a number in \(0, 1\)"):
        PackNet(prune_ratio=1.0)
    with pytest.raises(ValueError, match="post_prune_epochs must be an int >= 0"):
        PackNet(post_prune_epochs=-1)
    task_incremental = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    with pytest.raises(MisconfigurationException, match="is a MultiHeadClassifier"):
        L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[PackNet()]).fit(
            digits_module(), datamodule=task_incremental.train_stream[0]
        )
    with pytest.raises(MisconfigurationException, match="must be above post_prune_epochs"):
        L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[PackNet()]).fit(
            _multihead_module(), datamodule=task_incremental.train_stream[0]
        )
    class_incremental = SplitDigits(n_experiences=5, seed=1)
    module, packnet = _multihead_module(), PackNet(post_prune_epochs=0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[packnet]).fit(
        module, datamodule=class_incremental.train_stream[0]
    )
    with pytest.raises(MisconfigurationException, match=r"has task labels \[0\] \(tasks trained: \[0\]\)"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[packnet]).fit(
            module, datamodule=class_incremental.train_stream[1]
        )


def _batch_norm_module() -> ContinualModule:
    """The multi-head MLP with a BatchNorm1d after its hidden layer."""
    model = MLP(input_size=64, hidden_size=64, drop_rate=0.0, head="multihead")
    model.features = nn.Sequential(model.features[0], model.features[1], nn.BatchNorm1d(64), nn.ReLU())
    return ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))


def test_with_batch_norm_an_earlier_task_is_unchanged_bit_for_bit() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module, packnet = _batch_norm_module(), PackNet(prune_ratio=0.5, post_prune_epochs=1)
    rows = []
    for experience in bench.train_stream[:3]:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[packnet])
        trainer.fit(module, datamodule=experience)
        result = trainer.test(module, datamodule=bench.test_stream[:3], verbose=False)[0]
        rows.append([result[f"test/acc/exp{j}"] for j in range(experience.index + 1)])
    assert rows[1][0] == rows[0][0] and rows[2][0] == rows[0][0]  # task 0, exactly
    assert rows[2][1] == rows[1][1]
    assert min(rows[2]) > 0.8
    norm = module.model.features[2]
    # The live statistics moved on with the later tasks; task 0 keeps its own.
    first = packnet.norm_statistics[0]["features.2.running_mean"]
    assert not torch.equal(norm.running_mean.cpu(), first)
    assert torch.equal(packnet.norm_statistics[2]["features.2.running_mean"], norm.running_mean.cpu())


@pytest.mark.parametrize(
    ("callbacks", "match"),
    [
        (lambda: [PackNet(), FromScratch()], "PackNet cannot be combined with FromScratch"),
        (lambda: [PackNet(), GDumb(mem_size=20)], "PackNet cannot be combined with GDumb"),
        (lambda: [FromScratch(), PackNet()], "FromScratch cannot be combined with PackNet"),
    ],
)
def test_methods_that_re_initialise_the_model_are_refused(callbacks, match: str) -> None:  # type: ignore[no-untyped-def]
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    with pytest.raises(MisconfigurationException, match=f"{match}.*re-initialising the model would wipe"):
        L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=callbacks()).fit(
            _multihead_module(), datamodule=bench.train_stream[0]
        )


def test_an_experience_fitted_again_is_named_as_such() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module, packnet = _multihead_module(), PackNet(post_prune_epochs=0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[packnet]).fit(module, datamodule=bench.train_stream[0])
    with pytest.raises(MisconfigurationException, match=r"experience 0 \(fitted again\?\)") as refused:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[packnet]).fit(module, datamodule=bench.train_stream[0])
    assert "use a task-incremental stream" not in str(refused.value)
