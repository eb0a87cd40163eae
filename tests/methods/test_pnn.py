"""PNN: a column per task, laterals from older columns, an earlier task's outputs unchanged forever."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import PNN, FromScratch, GDumb
from lightning_cl.models import ContinualModule, ProgressiveNetwork
from tests.conftest import digits_module, quiet_trainer_kwargs


def _pnn_module(**kwargs: object) -> ContinualModule:
    net = ProgressiveNetwork(input_size=64, hidden_size=32, **kwargs)  # type: ignore[arg-type]
    return ContinualModule(net, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))


def _outputs(module: ContinualModule, experience) -> torch.Tensor:  # type: ignore[no-untyped-def]
    x, _, t = experience.dataset.__getitems__(list(range(len(experience.dataset))))
    module.eval()
    with torch.no_grad():
        return module(x, t)


def test_an_earlier_task_is_bit_identical_after_later_tasks() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module, pnn = _pnn_module(), PNN()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[pnn]).fit(module, datamodule=bench.train_stream[0])
    first = _outputs(module, bench.test_stream[0])
    for experience in bench.train_stream[1:3]:
        L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[pnn]).fit(module, datamodule=experience)
    net = module.model
    assert net.tasks == [0, 1, 2]
    assert torch.equal(_outputs(module, bench.test_stream[0]), first)  # forgets nothing
    assert not any(p.requires_grad for p in net.columns["0"].parameters())
    assert all(p.requires_grad for p in net.columns["2"].parameters())  # the newest column trains
    result = L.Trainer(**quiet_trainer_kwargs()).test(module, datamodule=bench.test_stream[:3], verbose=False)
    assert min(result[0][f"test/acc/exp{j}"] for j in range(3)) > 0.85


def test_a_later_column_reads_the_older_ones_through_its_adapters() -> None:
    torch.manual_seed(0)
    net = ProgressiveNetwork(input_size=6, hidden_size=5, hidden_layers=3)
    for task in (0, 1):
        net.add_column(task)
        net.adaptation([0, 1], torch.tensor([task]), torch.tensor([0]))
    x, t1 = torch.randn(4, 6), torch.ones(4, dtype=torch.long)
    before, before0 = net(x, t1), net(x, torch.zeros(4, dtype=torch.long))
    weight = net.columns["0"].layers[0].weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    assert not torch.allclose(net(x, t1), before)  # column 1 depends on column 0
    with torch.no_grad():
        weight.copy_(saved)
        net.columns["1"].layers[0].weight.add_(1.0)
    assert torch.equal(net(x, torch.zeros(4, dtype=torch.long)), before0)  # column 0 not on column 1
    assert len(net.columns["1"].laterals) == 2 and len(net.columns["0"].laterals) == 0


def test_mixed_task_batches_and_a_fresh_network_loading_the_columns() -> None:
    torch.manual_seed(0)
    net = ProgressiveNetwork(input_size=3, hidden_size=4, adapter="linear")
    net.add_column(2)
    net.adaptation([0, 1], torch.tensor([2, 2]), torch.tensor([0, 1]))
    net.add_column(5)
    net.adaptation([4, 6], torch.tensor([5, 5]), torch.tensor([4, 6]))
    x, t = torch.randn(5, 3), torch.tensor([2, 5, 5, 2, 9])
    out = net(x, t)
    assert out.shape == (5, 7)
    assert torch.equal(out[0], torch.cat([net(x[:1], t[:1])[0], torch.full((5,), -1000.0)]))
    assert bool((out[4] == -1000.0).all())  # task 9 has no column
    fresh = ProgressiveNetwork(input_size=3, hidden_size=4, adapter="linear")
    fresh.load_state_dict(net.state_dict())
    assert fresh.tasks == [2, 5] and torch.equal(fresh(x, t), out)


def test_set_up_errors() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    with pytest.raises(ValueError, match=r"needs a model with one lightning_cl\.models\.ProgressiveNetwork"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[PNN()]).fit(
            digits_module(), datamodule=bench.train_stream[0]
        )
    module = _pnn_module()
    with pytest.raises(ValueError, match="task label 0 has no column"):
        L.Trainer(**quiet_trainer_kwargs()).fit(module, datamodule=bench.train_stream[0])
    class_incremental = SplitDigits(n_experiences=5, seed=1)
    module, pnn = _pnn_module(), PNN()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[pnn]).fit(
        module, datamodule=class_incremental.train_stream[0]
    )
    with pytest.raises(MisconfigurationException, match=r"task labels \[0\], whose columns exist already"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[pnn]).fit(
            module, datamodule=class_incremental.train_stream[1]
        )
    with pytest.raises(ValueError, match="adapter must be one of"):
        ProgressiveNetwork(adapter="conv")
    with pytest.raises(ValueError, match="hidden_layers must be a positive int"):
        ProgressiveNetwork(hidden_layers=0)


@pytest.mark.parametrize(
    ("callbacks", "match"),
    [
        (lambda: [PNN(), FromScratch()], "PNN cannot be combined with FromScratch"),
        (lambda: [FromScratch(), PNN()], "FromScratch cannot be combined with PNN"),
        (lambda: [PNN(), GDumb(mem_size=20)], "PNN cannot be combined with GDumb"),
    ],
)
def test_methods_that_re_initialise_the_model_are_refused(callbacks, match: str) -> None:  # type: ignore[no-untyped-def]
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module = _pnn_module()
    with pytest.raises(MisconfigurationException, match=f"{match}.*wipe the frozen columns"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=callbacks()).fit(
            module, datamodule=bench.train_stream[0]
        )
    assert module.model.tasks == []  # refused before a column was added


def test_an_experience_fitted_again_is_named_as_such() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module, pnn = _pnn_module(), PNN()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[pnn]).fit(module, datamodule=bench.train_stream[0])
    with pytest.raises(MisconfigurationException, match=r"experience 0 \(fitted again\?\)") as refused:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[pnn]).fit(module, datamodule=bench.train_stream[0])
    assert "use a task-incremental stream" not in str(refused.value)


def test_two_instances_are_refused_by_name() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    # Built with both, the Trainer refuses (Lightning's check, which names the type and state_key).
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `PNN`"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[PNN(), PNN()])
    # Added later, lightning_cl's set-up refuses before a column is added.
    trainer, module = L.Trainer(**quiet_trainer_kwargs(), callbacks=[PNN()]), _pnn_module()
    trainer.callbacks.append(PNN())
    with pytest.raises(ValueError, match="2 callbacks of the trainer share the state_key 'PNN' of PNN"):
        trainer.fit(module, datamodule=bench.train_stream[0])
    assert module.model.tasks == []
