"""Expert Gate: held-out samples of task k go to expert k; new experts start from the most related one."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ExpertGate
from lightning_cl.models import ContinualModule, ExpertGateNetwork
from tests.conftest import digits_module, quiet_trainer_kwargs


def _module() -> ContinualModule:
    net = ExpertGateNetwork(input_size=64, hidden_size=32, code_size=8)
    return ContinualModule(net, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9))


@pytest.mark.slow  # 3 experiences of 4 epochs: ~10 s on a quiet 2-core machine
def test_held_out_samples_of_each_task_are_routed_to_its_expert() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module, gate = _module(), ExpertGate(gate_weight=200.0)
    for experience in bench.train_stream[:3]:
        L.Trainer(**quiet_trainer_kwargs(max_epochs=4), callbacks=[gate]).fit(module, datamodule=experience)
    net = module.model
    assert net.tasks == [0, 1, 2]
    assert not any(p.requires_grad for p in net.gates["0"].parameters())  # older gates frozen
    net.eval()
    right = []
    for k in range(3):
        test = bench.test_stream[k].dataset
        x, _, _ = test.__getitems__(list(range(len(test))))
        with torch.no_grad():
            right.append(float((net.route(x) == k).float().mean()))
    assert min(right) > 0.7 and sum(right) / 3 > 0.85, right  # chance: 1/3
    # The test stream is classified without task labels, through the gate.
    result = L.Trainer(**quiet_trainer_kwargs()).test(
        module, datamodule=bench.test_stream[:3], verbose=False
    )[0]
    assert min(result[f"test/acc/exp{k}"] for k in range(3)) > 0.6
    assert set(gate.initialised_from) == {0, 1, 2} and gate.initialised_from[0] is None


def test_a_new_expert_is_a_copy_of_the_most_related_one() -> None:
    torch.manual_seed(0)
    net = ExpertGateNetwork(input_size=6, hidden_size=4, code_size=2)
    for task in (0, 1):
        net.add_expert(task)
    x = torch.randn(10, 6)
    with torch.no_grad():
        net.gates["1"].decoder.bias.fill_(-30.0)  # task 1's gate reconstructs nothing: task 0 is closer
    related = ExpertGate.most_related(net, x)
    assert related == 0
    net.add_expert(2, init_from=related)
    first, copied = net.experts["0"].state_dict(), net.experts["2"].state_dict()
    assert all(torch.equal(first[k], copied[k]) for k in first)
    assert all(p.requires_grad for p in net.experts["2"].parameters())
    assert not any(p.requires_grad for p in net.experts["0"].parameters())
    assert net.route(x).tolist() == [net.tasks[i] for i in net.errors(x).argmin(1).tolist()]
    fresh = ExpertGateNetwork(input_size=6, hidden_size=4, code_size=2)
    fresh.load_state_dict(net.state_dict())
    assert fresh.tasks == [0, 1, 2] and torch.equal(fresh.errors(x), net.errors(x))


def test_set_up_errors() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    with pytest.raises(ValueError, match=r"needs a model with one lightning_cl\.models\.ExpertGateNetwork"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[ExpertGate()]).fit(
            digits_module(), datamodule=bench.train_stream[0]
        )
    with pytest.raises(ValueError, match="task label 0 has no expert"):
        L.Trainer(**quiet_trainer_kwargs()).fit(_module(), datamodule=bench.train_stream[0])
    class_incremental = SplitDigits(n_experiences=5, seed=1)
    module, gate = _module(), ExpertGate()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[gate]).fit(
        module, datamodule=class_incremental.train_stream[0]
    )
    with pytest.raises(MisconfigurationException, match=r"task labels \[0\], whose experts exist already"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[gate]).fit(
            module, datamodule=class_incremental.train_stream[1]
        )
    with pytest.raises(ValueError, match="gate_weight must be a number > 0"):
        ExpertGate(gate_weight=0)
    with pytest.raises(ValueError, match="code_size must be smaller than input_size"):
        ExpertGateNetwork(input_size=4, code_size=4)
