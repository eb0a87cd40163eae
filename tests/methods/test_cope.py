"""CoPE: prototypes moved by momentum, the PPP-loss, nearest-prototype classification."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from lightning_cl.data import SplitDigits
from lightning_cl.methods import CoPE, ppp_loss, update_prototypes
from lightning_cl.models import ContinualModule
from lightning_cl.training import fit_stream
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs


class Identity2d(nn.Module):
    """Embedding = the input itself (layer ``features``), then a linear output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _module() -> ContinualModule:
    module = ContinualModule(Identity2d())
    module.trainer = L.Trainer(**quiet_trainer_kwargs())  # type: ignore[assignment]
    return module


def test_the_update_rule_on_hand_built_embeddings() -> None:
    cope = CoPE(momentum=0.5)
    cope.prototypes = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, -1.0]])
    module = _module()
    # Class 0: two embeddings along +y (their mean, normalised, is (0, 1)); class 1 has no
    # prototype yet; class 2 is absent from the batch.
    x = torch.tensor([[0.0, 3.0], [0.0, 1.0], [2.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    logits = module(x, None)
    cope.task_loss(module, (x, y, torch.zeros(3)), logits, {"current": slice(0, 3)})
    assert torch.equal(cope.prototypes, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, -1.0]]))  # not yet
    cope.on_train_batch_end(None, module, None, None, 0)  # type: ignore[arg-type]
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[r, r], [1.0, 0.0], [0.0, -1.0]])
    assert torch.allclose(cope.prototypes, expected, atol=1e-6)
    assert cope.classes == [0, 1, 2]
    # The function alone, momentum 0.9: 0.9 (1, 0) + 0.1 (0, 1), normalised.
    new, held = update_prototypes(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([2.0]), momentum=0.9
    )
    assert torch.allclose(new, torch.tensor([[0.9, 0.1]]) / math.hypot(0.9, 0.1), atol=1e-6)
    assert held.tolist() == [True]


def _ppp_by_hand(z: Tensor, y: Tensor, protos: dict[int, Tensor], tau: float) -> float:
    z = torch.nn.functional.normalize(z, dim=1)
    total = 0.0
    for c in sorted(set(y.tolist())):
        others = [p for k, p in protos.items() if k != c]
        own = [i for i in range(len(y)) if y[i] == c]
        rest = [j for j in range(len(y)) if y[j] != c]

        def prob(q: Tensor, f: Tensor, others: list[Tensor] = others) -> float:
            num = math.exp(float(q @ f) / tau)
            return num / (num + sum(math.exp(float(p @ f) / tau) for p in others))

        for i in own:
            proxies = [protos[c]] + [z[j] for j in own if j != i]
            total -= math.log(sum(prob(q, z[i]) for q in proxies) / len(own))
        for j in rest:
            for i in own:
                total -= math.log(1 - (prob(protos[c], z[j]) + prob(z[i], z[j])) / 2)
    return total / len(y)


def test_the_ppp_loss_matches_the_formula_and_attracts() -> None:
    z = torch.tensor([[1.0, 0.2], [0.8, -0.3], [0.1, 1.0], [-0.4, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    protos = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.2, 1.0]]), dim=1)
    loss = ppp_loss(z, y, protos, [0, 1], temperature=0.5)
    by_hand = _ppp_by_hand(z, y, {0: protos[0], 1: protos[1]}, 0.5)
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)
    # Swapped labels (every embedding near the other class's prototype) cost far more.
    assert float(ppp_loss(z, 1 - y, protos, [0, 1], temperature=0.5)) > float(loss) + 1.0
    # The prototypes are proxies: no gradient reaches them.
    p = protos.clone().requires_grad_(True)
    features = z.clone().requires_grad_(True)
    ppp_loss(features, y, p, [0, 1], 0.5).backward()
    assert p.grad is None and features.grad is not None and features.grad.abs().sum() > 0


def test_evaluation_picks_the_nearest_prototype() -> None:
    cope = CoPE()
    module = _module()
    x = torch.tensor([[0.1, 1.0], [1.0, -0.2], [0.9, -1.0]])
    assert cope.eval_logits(module, x, torch.zeros(3)) is None  # no prototype yet: the logits
    cope.prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    scores = cope.eval_logits(module, x, torch.zeros(3))
    assert scores is not None and tuple(scores.shape) == (3, 3)
    # Class 2 has no prototype: never predicted, even for the sample far from both others.
    assert scores.argmax(1).tolist() == [1, 0, 0]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        CoPE(momentum=1.5)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        CoPE(temperature=0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got inf"):
        CoPE(temperature=float("inf"))
    with pytest.raises(ValueError, match=r"feature_layer must be a non-empty layer name .*, got None"):
        CoPE(feature_layer=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mem_size must be an int >= 1, got 0: CoPE"):
        CoPE(mem_size=0)
    bench = SplitDigits(n_experiences=5, seed=1)
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[CoPE(feature_layer="nope")])
    with pytest.raises(ValueError, match="the model has no layer 'nope'"):
        trainer.fit(digits_module(), datamodule=bench.train_stream[0])


def test_class_incremental_digits_beats_naive_and_state_round_trips() -> None:
    def run(callbacks: list[CoPE]) -> float:
        L.seed_everything(1)
        bench = SplitDigits(n_experiences=5, seed=1)
        results = fit_stream(
            digits_module(), bench, callbacks=callbacks, trainer_kwargs=stream_trainer_kwargs(max_epochs=2)
        )
        return float(results.average_accuracy)

    cope = CoPE(mem_size=200)
    naive, with_cope = run([]), run([cope])
    print(f"naive {naive:.3f} CoPE {with_cope:.3f}")
    assert with_cope > naive + 0.3
    assert cope.classes == list(range(10))
    assert torch.allclose(cope.prototypes.norm(dim=1), torch.ones(10), atol=1e-5)
    fresh = CoPE(mem_size=200)
    fresh.load_state_dict(cope.state_dict())
    assert torch.equal(fresh.prototypes, cope.prototypes)
    assert torch.equal(fresh.replay.buffer.indices, cope.replay.buffer.indices)


def test_task_aware_set_ups_are_refused_as_for_icarl_and_scr() -> None:
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    cope, module = CoPE(mem_size=20), digits_module()
    L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[cope]).fit(
        module, datamodule=bench.train_stream[0]
    )  # task label 0
    trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=1), callbacks=[cope])
    with pytest.raises(
        MisconfigurationException, match=r"CoPE classifies by .* experience 1 has task labels \[1\]"
    ):
        trainer.fit(module, datamodule=bench.train_stream[1])
