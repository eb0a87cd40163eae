"""Expert Gate: held-out samples of task k go to expert k; new experts start from the most related one."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ExpertGate
from lightning_cl.methods.lwf import distillation_loss
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
    with pytest.raises(ValueError, match="gate_weight must be a finite number > 0"):
        ExpertGate(gate_weight=0)
    with pytest.raises(ValueError, match=r"lwf_threshold=0\.85 needs gate_epochs > 0"):
        ExpertGate(gate_epochs=0)
    with pytest.raises(ValueError, match="gate_epochs must be an int >= 0"):
        ExpertGate(gate_epochs=-1)
    with pytest.raises(ValueError, match="code_size must be smaller than input_size"):
        ExpertGateNetwork(input_size=4, code_size=4)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: ExpertGate(lwf_threshold=float("nan")),
            "lwf_threshold must be a finite number or None, got nan",
        ),
        (
            lambda: ExpertGate(lwf_threshold=float("inf")),
            "lwf_threshold must be a finite number or None, got inf",
        ),
        (lambda: ExpertGate(seed="a"), "seed must be an int or None, got 'a'"),
        (lambda: ExpertGate(seed=1.5), "seed must be an int or None, got 1.5"),
        (lambda: ExpertGate(gate_lr=float("inf")), "gate_lr must be a finite number > 0, got inf"),
        (lambda: ExpertGate(lwf_alpha=float("nan")), "lwf_alpha must be a finite number >= 0, got nan"),
        (
            lambda: ExpertGateNetwork(input_size=8, code_size=2, hidden_layers=0),
            "hidden_layers must be an int >= 1",
        ),
        (
            lambda: ExpertGateNetwork(input_size=8, code_size=2, hidden_layers=-1),
            "hidden_layers must be an int >= 1",
        ),
    ],
)
def test_bad_arguments_are_refused(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        make()


def test_an_input_size_other_than_the_datas_is_named_at_set_up() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module = ContinualModule(ExpertGateNetwork(input_size=784, hidden_size=8, code_size=4))
    with pytest.raises(
        ValueError, match=r"input_size=784\) got inputs of shape \(1, 1, 8, 8\), 64 features .* input_size=64"
    ):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[ExpertGate()]).fit(
            module, datamodule=bench.train_stream[0]
        )
    assert module.model.tasks == []  # nothing added


def test_testing_before_any_fit_records_the_untrained_networks_accuracy() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module = _module()
    result = L.Trainer(**quiet_trainer_kwargs()).test(module, datamodule=bench.test_stream, verbose=False)[0]
    # No expert: every sample gets the same (masked) logits, predicting class 0, as an untrained
    # incremental head does; class 0 is one of the two classes of one experience.
    accuracies = sorted(result[f"test/acc/exp{k}"] for k in range(5))
    assert accuracies[:4] == [0.0] * 4 and 0.3 < accuracies[4] < 0.7
    with pytest.raises(ValueError, match="has no expert yet"):
        module.model.route(torch.zeros(2, 64))


class _FirstBatches(L.Callback):
    """Records, at the first training batches of a fit, the experts' weights and ExpertGate's penalty."""

    def __init__(self, gate: ExpertGate) -> None:
        self.gate, self.start, self.penalties, self.by_hand = gate, {}, [], []

    def on_train_start(self, trainer: L.Trainer, pl_module: ContinualModule) -> None:
        self.start = {
            t: {k: v.clone() for k, v in e.state_dict().items()} for t, e in pl_module.model.experts.items()
        }

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: ContinualModule, batch, batch_idx: int
    ) -> None:
        if batch_idx not in (0, 3):
            return
        x, y, t = batch
        with torch.no_grad():
            logits = pl_module(x, t)
            self.penalties.append(self.gate.penalty(pl_module, (x, y, t), logits))
            teacher = self.gate.lwf_from.get(int(t[0]))
            if teacher is not None:
                columns = self.gate.task_classes[teacher]
                old = pl_module.model.experts[str(teacher)].eval()(x)
                pl_module.model.experts[str(teacher)].train()
                self.by_hand.append(distillation_loss(logits[:, columns], old[:, columns], 2.0))


@pytest.mark.parametrize("threshold", [-10.0, 10.0])
def test_a_related_task_learns_with_lwf_from_the_most_related_expert(threshold: float) -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module, gate = _module(), ExpertGate(gate_epochs=5, lwf_threshold=threshold, lwf_alpha=0.5)
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[gate]).fit(
        module, datamodule=bench.train_stream[0]
    )
    net = module.model
    gate_0 = {k: v.clone() for k, v in net.gates["0"].state_dict().items()}
    probe = _FirstBatches(gate)
    second = bench.train_stream[1]
    L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[gate, probe]).fit(module, datamodule=second)
    # The new gate was trained before the expert; the relatedness is Eq. 2's, by hand.
    x = second.dataset.__getitems__(list(range(len(second.dataset))))[0]
    with torch.no_grad():
        er_0, er_1 = float(net.gates["0"].error(x).mean()), float(net.gates["1"].error(x).mean())
    assert gate.relatedness[1] == pytest.approx(1 - (er_0 - er_1) / er_1, rel=1e-4)
    assert er_1 < er_0 and all(torch.equal(v, net.gates["0"].state_dict()[k]) for k, v in gate_0.items())
    # The new expert started as a copy of the most related (here, the only) expert.
    assert gate.initialised_from[1] == 0
    start_0, start_1 = probe.start["0"], probe.start["1"]
    assert all(torch.equal(start_0[k], start_1[k]) for k in start_0 if not k.startswith("head"))
    if threshold < 0:  # related: LwF, the distillation term on task 0's classes, weighted by lwf_alpha
        assert gate.lwf_from[1] == 0
        assert float(probe.penalties[0]) == pytest.approx(0.0, abs=1e-6)  # student = teacher at first
        assert float(probe.penalties[1]) == pytest.approx(0.5 * float(probe.by_hand[1]), rel=1e-5)
        assert float(probe.penalties[1]) > 0
    else:  # fine-tuned: no term at all (the gate trained before, so no reconstruction term either)
        assert gate.lwf_from[1] is None and probe.penalties == [None, None]
