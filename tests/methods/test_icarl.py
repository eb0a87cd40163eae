"""iCaRL: herding exemplars, the distilled binary cross-entropy, the nearest-mean-of-exemplars classifier."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import GDumb, ICaRL, icarl_loss, nearest_mean_scores
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average


def test_nearest_mean_scores_pick_the_nearest_normalised_mean() -> None:
    means = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]), dim=1)
    features = torch.tensor([[3.0, 0.5], [0.1, 5.0], [-2.0, -1.5], [10.0, 9.0]])
    scores = nearest_mean_scores(features, means, [4, 0, 2], width=5)
    assert scores.argmax(1).tolist() == [4, 0, 2, 4]  # the last is nearer (1, 0) by 0.07 rad
    phi = F.normalize(features, dim=1)
    assert float(scores[0, 4]) == pytest.approx(-float((phi[0] - means[0]).pow(2).sum()), abs=1e-6)
    assert scores[:, [1, 3]].eq(-1000.0).all()  # classes without exemplars


def test_the_loss_distils_the_old_classes_and_targets_the_new_ones() -> None:
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([2, 3, 0, 2])  # 0 and 1 old (an exemplar of 0 among them), 2 and 3 new
    loss = icarl_loss(logits, y, [0, 1, 2, 3], [0, 1], teacher)
    q = torch.sigmoid(teacher[:, [0, 1]])
    new = F.one_hot(y, 6).float()[:, [2, 3]]
    target = torch.cat([q, new], 1)  # the exemplar of class 0 gets q, not its label, on the old units
    by_hand = F.binary_cross_entropy_with_logits(logits[:, :4], target, reduction="none").sum(1).mean()
    assert float(loss) == pytest.approx(float(by_hand), abs=1e-6)
    mean = icarl_loss(logits, y, [0, 1, 2, 3], [0, 1], teacher, reduction="mean")
    assert float(mean) == pytest.approx(float(by_hand) / 4, abs=1e-6)


def _features(module: Any, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return F.normalize(module.model.features(x), dim=1)


def test_the_classifier_is_the_nearest_mean_of_exemplars() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    icarl, module = ICaRL(mem_size=40, seed=0), digits_module()
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[icarl])
        trainer.fit(module, datamodule=experience)
    trainer.test(module, datamodule=bench.test_stream, verbose=False)
    seen = bench.train_stream[0].classes_in_this_experience + bench.train_stream[1].classes_in_this_experience
    classes = sorted(icarl.exemplars)
    assert classes == sorted(seen)
    # The means by hand: of the exemplars' normalised features, normalised.
    memory = icarl.memory(bench.train_stream[1].dataset)
    assert memory is not None and len(memory) == 40
    means = []
    for c in classes:
        x = memory.__getitems__((memory.targets == c).nonzero().flatten())[0]
        means.append(F.normalize(_features(module, x).mean(0), dim=0))
    # Predictions by hand on the test experiences: the class of the nearest mean.
    expected = []
    for experience in bench.test_stream:
        x, y, _ = experience.dataset.__getitems__(torch.arange(len(experience.dataset)))
        predicted = torch.tensor(classes)[torch.cdist(_features(module, x), torch.stack(means)).argmin(1)]
        expected.append(float((predicted == y).float().mean()))
    assert module.results.accuracy_matrix[-1] == pytest.approx(expected, abs=1e-6)
    assert expected[0] > 0.8 and expected[1] > 0.8 and expected[2:] == [0.0, 0.0, 0.0]


def test_exemplars_shrink_to_their_first_m_and_training_joins_them_to_the_data() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    icarl, module = ICaRL(mem_size=40, seed=0), digits_module()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[icarl]).fit(module, datamodule=bench.train_stream[0])
    first = {c: v.clone() for c, v in icarl.exemplars.items()}
    assert {c: len(v) for c, v in first.items()} == {
        c: 20 for c in bench.train_stream[0].classes_in_this_experience
    }
    experience = bench.train_stream[1]
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[icarl])
    trainer.fit(module, datamodule=experience)
    assert trainer.global_step == -(
        -(len(experience) + 40) // experience.batch_size
    )  # one pass over the union
    assert {c: len(v) for c, v in icarl.exemplars.items()} == {c: 10 for c in sorted(icarl.exemplars)}
    for c, old in first.items():
        assert torch.equal(icarl.exemplars[c], old[:10])  # Alg. 5: the first m, in herding order
    assert icarl.old_classes == sorted(icarl.exemplars)


def test_gdumb_next_to_icarl_is_refused() -> None:
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[ICaRL(mem_size=20), GDumb(mem_size=20)])
    with pytest.raises(MisconfigurationException, match="replace the experience's training data"):
        trainer.fit(digits_module(), datamodule=SplitDigits(n_experiences=5, seed=1).train_stream[0])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="mem_size must be an int >= 1"):
        ICaRL(mem_size=0)
    with pytest.raises(ValueError, match=r"feature_layer must be a non-empty layer name .*, got ''"):
        ICaRL(feature_layer="")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ICaRL(reduction="sum")
    with pytest.raises(ValueError, match="selection must be a SelectionStrategy"):
        ICaRL(selection="herding")  # type: ignore[arg-type]


@pytest.mark.slow
def test_icarl_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    ours = split_digits_average([ICaRL(mem_size=200, seed=0)])
    assert naive < 0.25
    assert ours > naive + 0.4, (naive, ours)


def test_a_memory_smaller_than_the_classes_seen_is_refused_and_nothing_changes() -> None:
    # mem_size // classes was 0: every exemplar was dropped and the nearest-mean classifier
    # silently fell back to the network's outputs.
    icarl = ICaRL(mem_size=3, seed=0)
    module = digits_module()
    bench = SplitDigits(n_experiences=5, seed=1)
    L.Trainer(callbacks=[icarl], **quiet_trainer_kwargs()).fit(module, datamodule=bench.train_stream[0])
    exemplars = {c: v.clone() for c, v in icarl.exemplars.items()}
    weights = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match="mem_size=3 is smaller than the 4 classes seen after experience 1"):
        L.Trainer(callbacks=[icarl], **quiet_trainer_kwargs()).fit(module, datamodule=bench.train_stream[1])
    assert {c: len(v) for c, v in icarl.exemplars.items()} == {c: len(v) for c, v in exemplars.items()}
    assert all(torch.equal(icarl.exemplars[c], v) for c, v in exemplars.items())
    assert all(torch.equal(p, w) for p, w in zip(module.parameters(), weights, strict=True))


def test_task_aware_set_ups_are_refused_at_set_up() -> None:
    # The nearest mean is over all classes seen: with one head per task it answered with other
    # tasks' classes.
    multi = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, head="multihead"))
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    trainer = L.Trainer(callbacks=[ICaRL(mem_size=50)], **quiet_trainer_kwargs())
    message = r"^iCaRL .*ignores task labels.*MultiHeadClassifier"
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(multi, datamodule=bench.train_stream[0])
    trainer = L.Trainer(callbacks=[ICaRL(mem_size=50)], **quiet_trainer_kwargs())
    with pytest.raises(MisconfigurationException, match=r"experience 1 has task labels \[1\]"):
        trainer.fit(digits_module(), datamodule=bench.train_stream[1])


def test_an_experience_fitted_again_learns_its_classes_from_labels() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    icarl, module = ICaRL(mem_size=40), digits_module()
    experience = bench.train_stream[0]
    L.Trainer(**quiet_trainer_kwargs(limit_train_batches=2), callbacks=[icarl]).fit(
        module, datamodule=experience
    )
    assert icarl.old_classes == experience.classes_in_this_experience and icarl.teacher_state is not None
    # Fitted again (module.trainer's experience is experience 0): its classes are not distilled.
    x, y, t = next(iter(experience.train_dataloader()))
    logits = module(x, t)
    loss = icarl.task_loss(module, (x, y, t), logits, {"current": slice(0, len(y))})
    labels_only = icarl_loss(logits, y, sorted(module.seen_classes), [], None)
    assert loss is not None and torch.allclose(loss, labels_only)
