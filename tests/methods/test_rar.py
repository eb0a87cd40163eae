"""RAR: memory samples perturbed towards the nearest current sample, replayed beside the clean ones."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import (
    ERACE,
    MIR,
    RAR,
    Replay,
    feature_attack,
    mixup_batch,
    nearest_other_class,
    virtual_parameters,
)
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average


def test_the_attack_stays_in_the_ball_and_approaches_the_target_features() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    x = torch.rand(5, 6, generator=g)
    target = torch.randn(5, 4, generator=g)
    eps = 0.05
    adv = feature_attack(lambda z: z @ w, x, target, epsilon=eps, step_size=0.02, steps=6)
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float((adv - x).abs().max()) == pytest.approx(eps, abs=1e-6)  # the budget is used
    before = (x @ w - target).pow(2).sum(1)
    after = (adv @ w - target).pow(2).sum(1)
    assert (after < before).all()
    # The range is respected and the input is untouched.
    clamped = feature_attack(lambda z: z @ w, x, target, 0.5, 0.5, 3, clamp=(0.0, 1.0))
    assert float(clamped.min()) >= 0.0 and float(clamped.max()) <= 1.0
    assert float((clamped - x).abs().max()) <= 0.5 + 1e-6


def test_mi_fgsm_by_hand() -> None:
    # Two steps on a linear feature map: normalised gradients, momentum 1, sign steps, clipping.
    w = torch.tensor([[1.0, 0.0], [0.0, -3.0]])
    x, target = torch.zeros(1, 2), torch.tensor([[2.0, 2.0]])
    adv = feature_attack(lambda z: z @ w, x, target, epsilon=0.15, step_size=0.1, steps=2)
    # Gradient of mean((xW - t)^2) at 0 is -W t: (-2, 6)/2 -> sign (-, +) -> step (+0.1, -0.1),
    # the second step overshoots the ball and is clipped to 0.15.
    assert adv.tolist() == [[pytest.approx(0.15), pytest.approx(-0.15)]]


def test_the_target_is_the_nearest_current_sample_of_another_class() -> None:
    memory = torch.tensor([[0.0, 0.0], [10.0, 0.0], [3.0, 3.0]])
    current = torch.tensor([[0.5, 0.0], [2.0, 0.0], [9.0, 0.0], [3.0, 2.0]])
    chosen = nearest_other_class(memory, torch.tensor([0, 1, 2]), current, torch.tensor([0, 1, 1, 2]))
    # Sample 0 (class 0) skips its own class at 0.5; sample 1 (class 1) skips both of class 1;
    # sample 2 (class 2) skips (3, 2) right next to it.
    assert chosen.tolist() == [1, 3, 1]
    alone = nearest_other_class(memory[:1], torch.tensor([0]), current[:1], torch.tensor([0]))
    assert alone.tolist() == [-1]


def test_mixup_mixes_inputs_and_labels_with_one_lambda() -> None:
    x = torch.arange(8.0).view(4, 2)
    y = torch.tensor([0, 1, 2, 3])
    mixed, soft = mixup_batch(x, y, 5, torch.Generator().manual_seed(3))
    assert torch.allclose(soft.sum(1), torch.ones(4))
    lam = float(soft[torch.arange(4), y].min())  # each row keeps at least lambda of its own class
    partner = soft.clone()
    partner[torch.arange(4), y] -= lam
    pairing = partner.argmax(1)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[pairing], atol=1e-6) or lam == 1.0


def _trained_two_class_module() -> ContinualModule:
    # A model that tells two blobs apart: class 0 around (-1, -1), class 1 around (1, 1).
    torch.manual_seed(0)
    module = ContinualModule(MLP(num_classes=2, input_size=2, hidden_size=8, drop_rate=0.0))
    x = torch.cat([torch.randn(64, 2) * 0.3 - 1, torch.randn(64, 2) * 0.3 + 1])
    y = torch.cat([torch.zeros(64), torch.ones(64)]).long()
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(module(x, y * 0), y).backward()
        opt.step()
    return module


def test_perturbed_memory_samples_move_towards_the_current_class_and_their_loss_rises() -> None:
    module = _trained_two_class_module()
    memory = (
        torch.tensor([[-1.0, -1.0], [-0.8, -1.2]]),
        torch.tensor([0, 0]),
        torch.zeros(2, dtype=torch.long),
    )
    current = (torch.tensor([[1.0, 1.0], [1.2, 0.9]]), torch.tensor([1, 1]), torch.zeros(2, dtype=torch.long))
    rar = RAR(epsilon=0.5, step_size=0.25, steps=4)
    adv = rar.perturb(module, current, memory, lr=0.01)
    assert float((adv - memory[0]).abs().max()) <= 0.5 + 1e-6
    with torch.no_grad():
        before = F.cross_entropy(module(memory[0], memory[2]), memory[1], reduction="none")
        after = F.cross_entropy(module(adv, memory[2]), memory[1], reduction="none")
        p_current = F.softmax(module(adv, memory[2]), 1)[:, 1]
        p_before = F.softmax(module(memory[0], memory[2]), 1)[:, 1]
    assert (after > before).all()  # towards the boundary with the current class
    assert (p_current > p_before).all()
    assert (adv - memory[0]).sum(1).gt(0).all()  # towards (1, 1)


def test_the_lookahead_is_one_sgd_step_on_the_current_rows() -> None:
    module = _trained_two_class_module()
    module.zero_grad(set_to_none=True)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    virtual = virtual_parameters(module, (x, y, y * 0), lr=0.3)
    grads = torch.autograd.grad(F.cross_entropy(module(x, y * 0), y), list(module.parameters()))
    for (name, p), g in zip(module.named_parameters(), grads):
        assert torch.allclose(virtual[name], p - 0.3 * g, atol=1e-6)
        assert p.grad is None  # the model's gradients are left alone


class _IdentityFeatures(torch.nn.Module):
    """2-d inputs are the features; three classes scored by fixed rows (1, 0), (0, 1), (1, -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Identity()
        self.head = torch.nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x))


def test_the_authors_attack_and_avalanches_move_a_sample_apart_on_a_hand_built_case() -> None:
    module = ContinualModule(_IdentityFeatures())
    memory = (torch.zeros(1, 2), torch.tensor([0]), torch.zeros(1, dtype=torch.long))
    # Current rows: one of the memory sample's own class (nearest overall), the nearest of
    # another class (class 1 at (1, 1)), the farthest of another class (class 2 at (-3, 0)).
    current = (
        torch.tensor([[0.5, 0.0], [1.0, 1.0], [-3.0, 0.0]]),
        torch.tensor([0, 1, 2]),
        torch.zeros(3, dtype=torch.long),
    )
    ours = RAR(epsilon=0.1, step_size=0.1, steps=2).perturb(module, current, memory, lr=1e-6)
    # The features (the input itself) approach the nearest other-class row (1, 1): sign steps (+, +).
    assert ours.tolist() == [[pytest.approx(0.1), pytest.approx(0.1)]]
    theirs = RAR(epsilon=0.1, steps=2, attack="avalanche").perturb(module, current, memory, lr=1e-6)
    # Avalanche: the label of the farthest other-class row (2), the input moved up CE(f(x), 2):
    # at x = 0 the scores are equal, grad = mean(W) - W_2 = (2/3, 0) - (1, -1) = (-1/3, 1); one
    # step (steps - 1) of epsilon / steps = 0.05 along its sign. (The nearest's label, 1, would
    # give grad (2/3, -1), the opposite move.)
    assert theirs.tolist() == [[pytest.approx(-0.05), pytest.approx(0.05)]]
    one_step = RAR(epsilon=0.1, steps=1, attack="avalanche").perturb(module, current, memory, lr=1e-6)
    assert torch.equal(one_step, memory[0])  # Avalanche's loop runs steps - 1 times
    # No row of another class: Avalanche's target stays class 0, the sample's own here.
    alone = (current[0][:1], current[1][:1], current[2][:1])
    own = RAR(epsilon=0.1, steps=2, attack="avalanche").perturb(module, alone, memory, lr=1e-6)
    # grad of CE(f(x), 0) at 0 = (2/3, 0) - (1, 0) = (-1/3, 0): sign (-, 0).
    assert own.tolist() == [[pytest.approx(-0.05), pytest.approx(0.0)]]


def _counting_run(callbacks: list[Any]) -> tuple[int, dict[str, torch.Tensor]]:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    calls = [0]
    module.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=6), callbacks=callbacks)
        trainer.fit(module, datamodule=experience)
    return calls[0], {k: v.clone() for k, v in module.state_dict().items()}


def test_with_the_attack_off_rar_costs_nothing_and_changes_nothing() -> None:
    plain_calls, plain = _counting_run([Replay(mem_size=40, seed=0)])
    off_calls, off = _counting_run([Replay(mem_size=40, seed=0), RAR(adversarial=False)])
    assert off_calls == plain_calls
    assert all(torch.equal(plain[k], off[k]) for k in plain)
    on_calls, on = _counting_run([Replay(mem_size=40, seed=0), RAR(steps=2)])
    # Experience 1's 6 steps each run the look-ahead (1), the features (2), 2 attack steps, the replay (1).
    assert on_calls == plain_calls + 6 * 6
    assert not all(torch.equal(plain[k], on[k]) for k in plain)
    avalanche_calls, avalanche = _counting_run(
        [Replay(mem_size=40, seed=0), RAR(steps=2, attack="avalanche")]
    )
    # Avalanche's attack: the look-ahead (1), the features (2), one gradient (1), the replay (1).
    assert avalanche_calls == plain_calls + 6 * 5
    assert not all(torch.equal(on[k], avalanche[k]) for k in plain)


def test_rar_needs_a_replay_method_in_the_callbacks() -> None:
    experience = SplitDigits(n_experiences=5, seed=1).train_stream[0]
    for others in ([], [MIR(mem_size=20, subsample=10, mem_batch_size=5)]):
        trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[RAR(), *others])
        with pytest.raises(MisconfigurationException, match=r"RAR perturbs the memory samples .* add Replay"):
            trainer.fit(digits_module(), datamodule=experience)
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[Replay(mem_size=20), RAR(feature_layer="nope")])
    with pytest.raises(ValueError, match="the model has no layer 'nope'"):
        trainer.fit(digits_module(), datamodule=experience)


def test_rar_combines_with_er_ace_and_mixup() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    rar = RAR(mixup=True, seed=0)
    for experience in bench.train_stream[:2]:
        L.Trainer(
            **quiet_trainer_kwargs(limit_train_batches=6), callbacks=[ERACE(mem_size=40, seed=0), rar]
        ).fit(module, datamodule=experience)
    assert torch.isfinite(torch.cat([p.flatten() for p in module.parameters()])).all()
    restored = RAR(mixup=True)
    restored.load_state_dict(rar.state_dict())
    assert restored.state_dict() == rar.state_dict() and rar.state_dict()["seed"] is not None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        RAR(beta=-1)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0 or None, got 0"):
        RAR(step_size=0)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        RAR(steps=0)
    with pytest.raises(ValueError, match=r"clamp must be None or \(low, high\)"):
        RAR(clamp=(1.0, 0.0))
    with pytest.raises(ValueError, match="mixup must be True or False"):
        RAR(mixup="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"feature_layer must be a non-empty layer name .*, got 3"):
        RAR(feature_layer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"attack must be one of \('features', 'avalanche'\), got 'fgsm'"):
        RAR(attack="fgsm")


_SPLIT_MNIST = dict(beta=0.3, epsilon=0.3, step_size=0.075, steps=5, clamp=(0.0, 1.0))
"""The authors' Split-MNIST settings (inputs in [0, 1], as SplitDigits' are)."""


@pytest.mark.slow
def test_rar_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    replay = split_digits_average([Replay(mem_size=100, seed=0)])
    ours = split_digits_average([Replay(mem_size=100, seed=0), RAR(**_SPLIT_MNIST)])  # type: ignore[arg-type]
    print(
        f"SplitDigits final average accuracy: naive {naive:.4f}, replay {replay:.4f}, replay+RAR {ours:.4f}"
    )
    assert naive < 0.25
    assert ours > naive + 0.4, (naive, ours)
    # Measured (2 epochs, mem_size=100): naive 0.142, Replay 0.655, Replay + RAR 0.791.
    assert ours > replay + 0.05, (replay, ours)
