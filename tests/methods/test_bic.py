"""BiC: a bias-correction layer on the new classes' logits, trained on held-out data; distillation."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import BiC, ContinualCallback, bias_correct
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average


def test_the_layer_changes_only_the_new_classes_logits() -> None:
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    corrected = bias_correct(logits, [3, 4], torch.tensor(0.5), torch.tensor(-2.0))
    assert torch.equal(corrected[:, [0, 1, 2, 5]], logits[:, [0, 1, 2, 5]])
    assert torch.allclose(corrected[:, [3, 4]], 0.5 * logits[:, [3, 4]] - 2.0)
    assert torch.equal(bias_correct(logits, [], 0.5, 1.0), logits)


class _Labels(ContinualCallback):
    def __init__(self) -> None:
        self.labels: list[torch.Tensor] = []

    def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> None:
        self.labels.append(batch[1].cpu())


def test_held_out_samples_are_class_balanced_and_left_out_of_training() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    bic, probe, module = BiC(mem_size=40, val_fraction=0.25, seed=0), _Labels(), digits_module()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[bic]).fit(module, datamodule=bench.train_stream[0])
    assert bic.new_classes == []  # no correction after the first experience
    experience = bench.train_stream[1]
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1), callbacks=[bic, probe])
    bic.on_experience_start(trainer, module, experience)  # the split, as set-up does it
    held = bic.held_out
    targets = experience.dataset.base_targets[held]
    classes, counts = torch.unique(targets, return_counts=True)
    # 25% of the 20 exemplars of each old class, and as many of each new class.
    assert classes.tolist() == sorted(
        bench.train_stream[0].classes_in_this_experience + experience.classes_in_this_experience
    )
    assert counts.tolist() == [5, 5, 5, 5]
    loader = bic.current_dataloader(experience)
    assert loader is not None
    trained = torch.cat([b[1] for b in loader])
    assert len(trained) == len(experience) + 40 - 20  # data and memory without the held-out samples


def test_after_an_experience_evaluation_uses_the_corrected_logits() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    bic, module = BiC(mem_size=40, seed=0), digits_module()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[bic]).fit(module, datamodule=experience)
    assert bic.new_classes == bench.train_stream[1].classes_in_this_experience
    assert (float(bic.alpha), float(bic.beta)) != (1.0, 0.0)  # the layer was fitted
    x = bench.test_stream[0].dataset.__getitems__(torch.arange(8))[0]
    module.eval()
    with torch.no_grad():
        raw, corrected = module(x), bic.eval_logits(module, x, torch.zeros(8, dtype=torch.long))
    assert corrected is not None
    old = [c for c in range(10) if c not in bic.new_classes]
    assert torch.equal(corrected[:, old], raw[:, old])
    assert torch.allclose(corrected[:, bic.new_classes], bic.alpha * raw[:, bic.new_classes] + bic.beta)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="val_fraction must be a number in"):
        BiC(val_fraction=1.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        BiC(temperature=0)
    with pytest.raises(ValueError, match="bias_lr must be a finite number > 0, got inf"):
        BiC(bias_lr=float("inf"))
    with pytest.raises(ValueError, match="bias_steps must be an int >= 1"):
        BiC(bias_steps=0)


@pytest.mark.slow
def test_bic_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    ours = split_digits_average([BiC(mem_size=200, seed=0)])
    assert naive < 0.25
    assert ours > naive + 0.4, (naive, ours)


def test_a_multi_head_model_is_refused_at_set_up() -> None:
    # It failed at the first test after experience 1 with an IndexError in bias_correct.
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, head="multihead"))
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    trainer = L.Trainer(callbacks=[BiC(mem_size=50)], **quiet_trainer_kwargs())
    with pytest.raises(MisconfigurationException, match=r"BiC .* MultiHeadClassifier"):
        trainer.fit(module, datamodule=bench.train_stream[0])


def test_a_small_memory_keeps_an_exemplar_per_class_for_training() -> None:
    # 2 exemplars per old class: one held out for the bias layer, one left to train on (it held
    # out both before, so the new classes trained on nothing of the old).
    bench = SplitDigits(n_experiences=5, seed=1)
    bic, module = BiC(mem_size=4, seed=0), digits_module()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[bic]).fit(module, datamodule=bench.train_stream[0])
    experience = bench.train_stream[1]
    bic.on_experience_start(L.Trainer(**quiet_trainer_kwargs()), module, experience)
    memory = bic.buffer.dataset(experience.dataset)
    assert memory is not None
    train_old, val_old = bic._split(memory)
    assert (
        torch.bincount(val_old.targets, minlength=10).tolist()
        == torch.bincount(train_old.targets, minlength=10).tolist()
    )
    assert sorted(train_old.targets.tolist()) == sorted(bench.train_stream[0].classes_in_this_experience)


def test_one_exemplar_per_class_is_refused_naming_the_sizes() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    bic, module = BiC(mem_size=2, seed=0), digits_module()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[bic]).fit(module, datamodule=bench.train_stream[0])
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[bic])
    message = r"mem_size=2\) holds 1 exemplar of class \d over 2 old classes: use mem_size >= 4"
    with pytest.raises(ValueError, match=message):
        trainer.fit(module, datamodule=bench.train_stream[1])


def test_an_experience_fitted_again_is_not_distilled_from_itself() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    bic, module = BiC(mem_size=40), digits_module()
    experience = bench.train_stream[0]
    L.Trainer(**quiet_trainer_kwargs(limit_train_batches=2), callbacks=[bic]).fit(
        module, datamodule=experience
    )
    assert bic.old_classes == experience.classes_in_this_experience and bic.teacher_state is not None
    # module.trainer's experience is experience 0 again: its classes are new, no old class is left,
    # so the loss is the plain cross-entropy (None), not lambda = 1 distillation from itself.
    x, y, t = next(iter(experience.train_dataloader()))
    assert bic.task_loss(module, (x, y, t), module(x, t), {"current": slice(0, len(y))}) is None
