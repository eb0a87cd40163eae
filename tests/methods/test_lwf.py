from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_cl.data import SplitDigits
from lightning_cl.methods import LwF, distillation_loss
from lightning_cl.models import MLP, ContinualModule, IncrementalClassifier
from tests.conftest import quiet_trainer_kwargs
from tests.methods.permuted_digits import run_permuted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(alpha=-0.5), r"alpha must be a number >= 0 or a non-empty list of them, got -0.5"),
        (dict(alpha=[]), r"alpha must be .*, got \[\]"),
        (dict(alpha=None), r"alpha must be a number >= 0 or a non-empty list of them, got None"),
        (dict(alpha="0.5"), r"alpha must be .*, got '0.5'"),
        (dict(alpha=True), r"alpha must be .*, got True"),
        (dict(alpha=[0.5, -1.0]), r"got \[0.5, -1.0\] \(alpha\[1\] = -1.0 is not a finite number >= 0\)"),
        (dict(alpha=[0.0, float("nan")]), r"\(alpha\[1\] = nan is not a finite number >= 0\)"),
        (dict(temperature=0), "temperature must be a finite number > 0, got 0"),
        (
            dict(task_loss_weight="1/N"),
            r"task_loss_weight must be one of \('constant', 'tasks_seen'\), got '1/N'",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LwF(**kwargs)


def test_distillation_loss_is_the_kl_of_softened_outputs() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    q = F.softmax(teacher / 2, dim=1)
    expected = (q * (q.log() - F.log_softmax(student / 2, dim=1))).sum(1).mean()
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)


def _module(head: str) -> ContinualModule:
    return ContinualModule(
        MLP(num_classes=2, input_size=64, hidden_size=32, drop_rate=0.0, head=head),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )


def test_the_teacher_is_a_frozen_copy_of_the_last_experience() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5)
    module, lwf = _module("incremental"), LwF()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[lwf]).fit(
        module, datamodule=bench.train_stream[0]
    )
    after_first = {k: v.clone() for k, v in module.model.state_dict().items()}
    assert lwf.teacher is not None and not lwf.teacher.training
    assert all(not p.requires_grad for p in lwf.teacher.parameters())
    assert lwf.seen_classes == {0: [0, 1]}
    L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[lwf]).fit(
        module, datamodule=bench.train_stream[1]
    )
    assert lwf.seen_classes == {0: [0, 1, 2, 3]}
    # The teacher of experience 2 is the model after experience 1, not a view of the live model.
    state = lwf.teacher.state_dict()
    assert torch.equal(state["head.classifier.weight"], module.model.state_dict()["head.classifier.weight"])
    assert not torch.equal(state["features.1.weight"], after_first["features.1.weight"])


def test_a_restored_teacher_keeps_its_width_and_gives_the_same_penalty() -> None:
    bench = SplitDigits(n_experiences=5)
    module, lwf = _module("incremental"), LwF(alpha=2.0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[lwf]).fit(module, datamodule=bench.train_stream[0])
    restored = LwF(alpha=2.0)
    restored.load_state_dict(lwf.state_dict())
    # The live model grows for the next experience before the restored teacher is rebuilt.
    head = module.model.head
    assert isinstance(head, IncrementalClassifier)
    head.adaptation([2, 3])
    with torch.no_grad():  # and moves away from the teacher, as training would move it
        module.model.features[1].weight.add_(0.1 * torch.randn_like(module.model.features[1].weight))
    x, y, t = bench.train_stream[1].dataset.__getitems__(torch.arange(16))
    logits = module(x, t)
    restored.current_experience = lwf.current_experience = 1
    penalty = restored.penalty(module, (x, y, t), logits)
    assert restored.teacher is not None and restored.teacher.head.out_features == 2
    assert penalty is not None and float(penalty) > 0
    assert float(penalty) == pytest.approx(float(lwf.penalty(module, (x, y, t), logits)))


def _old_head_drift(alpha: float) -> float:
    """KL between task 0's head before and after training task 1, on task 1's data."""
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, task_labels=True)
    module, lwf = _module("multihead"), LwF(alpha=alpha)
    L.Trainer(**quiet_trainer_kwargs(max_epochs=3), callbacks=[lwf]).fit(
        module, datamodule=bench.train_stream[0]
    )
    x, _, t = bench.train_stream[1].dataset.__getitems__(torch.arange(len(bench.train_stream[1])))
    as_task0 = torch.zeros_like(t)
    with torch.no_grad():
        before = module(x, as_task0)[:, :2].clone()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=3), callbacks=[lwf]).fit(
        module, datamodule=bench.train_stream[1]
    )
    with torch.no_grad():
        return float(distillation_loss(module(x, as_task0)[:, :2], before, 2.0))


def test_multi_head_distils_the_old_heads_on_new_data() -> None:
    naive, lwf = _old_head_drift(0.0), _old_head_drift(5.0)
    assert naive > 0.01
    assert lwf < naive / 3


def test_lwf_reduces_forgetting_on_permuted_digits() -> None:
    naive = run_permuted([])
    lwf = run_permuted([LwF(alpha=1.0)])
    assert lwf.matrix[-1, 0] > naive.matrix[-1, 0] + 0.15  # the first permutation, after the last
    assert lwf.average_accuracy > naive.average_accuracy


def test_alpha_per_experience_weighs_the_distillation_of_each_experience() -> None:
    # The published SplitMNIST set-up: one weight per experience, the last one for any later.
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5)
    alphas = [0, 0.5, 1.33, 2.25, 3.2]
    module, lwf = _module("incremental"), LwF(alpha=alphas, temperature=2.0)
    assert lwf.alpha == [0.0, 0.5, 1.33, 2.25, 3.2]
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[lwf])
    trainer.fit(module, datamodule=bench.train_stream[0])
    module.model.head.adaptation(range(10))
    with torch.no_grad():  # the student moves away from its teacher
        weight = module.model.features[1].weight
        weight.add_(0.3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    x, y, t = bench.train_stream[1].dataset.__getitems__(torch.arange(32))
    logits = module(x, t)
    old = lwf.teacher(x)  # type: ignore[misc]
    distillation = float(distillation_loss(logits[:, :2], old[:, :2], 2.0).detach())
    assert distillation > 1e-3
    for k, experience in enumerate(bench.train_stream):
        lwf.on_experience_start(trainer, module, experience)
        value = lwf.penalty(module, (x, y, t), logits)
        if k == 0:
            assert value is None  # weight 0: no term
        else:
            assert value is not None and value.dtype == torch.float32
            assert float(value.detach()) == pytest.approx(alphas[k] * distillation, rel=1e-5)
    assert lwf.alpha_for(4) == lwf.alpha_for(7) == 3.2
    with pytest.raises(ValueError, match="experience_index must be an int >= 0, got -1"):
        lwf.alpha_for(-1)


def test_tasks_seen_weighs_the_task_loss_one_over_n() -> None:
    """van de Ven et al. (2019): criterion / N + alpha KD while training the N-th experience."""
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5)
    alphas = [0.0, 0.5, 1.33, 2.25, 3.2]
    module, lwf = _module("incremental"), LwF(alpha=alphas, temperature=2.0, task_loss_weight="tasks_seen")
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[lwf])
    trainer.fit(module, datamodule=bench.train_stream[0])
    module.model.head.adaptation(range(10))
    with torch.no_grad():
        weight = module.model.features[1].weight
        weight.add_(0.3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    x, y, t = bench.train_stream[1].dataset.__getitems__(torch.arange(32))
    logits = module(x, t)
    criterion = float(module.criterion(logits, y).detach())
    distillation = float(distillation_loss(logits[:, :2], lwf.teacher(x)[:, :2], 2.0).detach())  # type: ignore[misc]
    for k, experience in enumerate(bench.train_stream):
        lwf.on_experience_start(trainer, module, experience)
        value = lwf.penalty(module, (x, y, t), logits)
        if k == 0:
            assert value is None
            continue
        assert value is not None
        total = criterion + float(value.detach())
        assert total == pytest.approx(criterion / (k + 1) + alphas[k] * distillation, rel=1e-5)
    # Its gradient is that of the weighted loss, too.
    lwf.on_experience_start(trainer, module, bench.train_stream[2])
    total_loss = module.criterion(logits, y) + lwf.penalty(module, (x, y, t), logits)
    expected = module.criterion(logits, y) / 3 + 1.33 * distillation_loss(
        logits[:, :2],
        lwf.teacher(x)[:, :2],
        2.0,  # type: ignore[misc]
    )
    (g_total,) = torch.autograd.grad(total_loss, weight, retain_graph=True)
    (g_expected,) = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(g_total, g_expected, rtol=1e-5, atol=1e-6)


def test_tasks_seen_is_refused_beside_a_task_loss_owner() -> None:
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_cl.methods import ERACE

    bench = SplitDigits(n_experiences=5)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(), callbacks=[LwF(task_loss_weight="tasks_seen"), ERACE(mem_size=20)]
    )
    with pytest.raises(
        MisconfigurationException, match="ERACE replaces the task loss: use task_loss_weight='constant'"
    ):
        trainer.fit(_module("linear"), datamodule=bench.train_stream[0])
    # The paper's constant weight combines with it.
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[LwF(), ERACE(mem_size=20)])
    trainer.fit(_module("linear"), datamodule=bench.train_stream[0])
    assert trainer.state.finished
