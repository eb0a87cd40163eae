from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl.data import LoaderSettings, SplitDigits, split_online
from lightning_cl.methods import GSSGreedy, gss_greedy_replace, gss_scores
from lightning_cl.methods.gss import sample_gradients
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs


def test_score_is_the_largest_cosine_plus_one() -> None:
    reference = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    gradients = torch.tensor([[3.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [-2.0, 0.0]])
    scores = gss_scores(gradients, reference)
    expected = torch.tensor([2.0, 1.0 + 0.0, 1.0 + 2**-0.5, 1.0])  # [-1,-1]: both cosines -0.707 -> max
    expected[1] = 1.0 - 2**-0.5
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.equal(gss_scores(gradients, torch.zeros(0, 2)), torch.ones(4))


def test_a_full_memory_takes_only_samples_with_a_negative_cosine() -> None:
    held = torch.tensor([1.2, 0.4, 1.9])
    for seed in range(50):
        slots, scores = gss_greedy_replace(
            held, torch.tensor([1.0, 1.5, 2.0]), 3, torch.Generator().manual_seed(seed)
        )
        assert slots.tolist() == [-1, -1, -1] and torch.equal(scores, held)


def test_memory_fills_first() -> None:
    slots, scores = gss_greedy_replace(
        torch.tensor([0.3]), torch.tensor([1.7, 0.2, 0.9]), 3, torch.Generator()
    )
    assert slots.tolist()[:2] == [1, 2] and scores.tolist()[:3] == pytest.approx([0.3, 1.7, 0.2])


def test_replacement_follows_the_papers_probabilities() -> None:
    # Full memory with scores C = [1.9, 0.1] and a sample with c = 0.5: slot 0 is drawn with
    # probability 0.95 and replaced with probability 1.9 / 2.4; slot 1 with 0.05 and 0.1 / 0.6.
    # Over 4000 seeded draws: slot 0 about 0.752 (sd 0.007), slot 1 about 0.0083 (sd 0.0014).
    held, incoming = torch.tensor([1.9, 0.1]), torch.tensor([0.5])
    counts = torch.zeros(3)
    for seed in range(4000):
        slots, scores = gss_greedy_replace(held, incoming, 2, torch.Generator().manual_seed(seed))
        counts[int(slots[0])] += 1  # index -1: kept out
        if slots[0] >= 0:
            assert scores[int(slots[0])] == 0.5
    freq = counts / 4000
    assert abs(float(freq[0]) - 0.95 * 1.9 / 2.4) < 0.04
    assert abs(float(freq[1]) - 0.05 * 0.1 / 0.6) < 0.008


def test_sample_gradients_match_autograd_and_leave_the_module_as_it_was() -> None:
    module = digits_module()
    module.train()
    x, y, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long)
    rows = sample_gradients(module, x, y, t)
    module.eval()
    loss = torch.nn.functional.cross_entropy(module(x[1:2], t[1:2]), y[1:2])
    loss.backward()
    flat = torch.cat([p.grad.flatten() for p in module.parameters()])  # type: ignore[union-attr]
    assert torch.allclose(rows[1], flat, atol=1e-6)


def test_gss_memory_fills_with_diverse_gradients_and_round_trips() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=16))
    gss, module = GSSGreedy(mem_size=40, seed=1), digits_module()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[gss]).fit(module, datamodule=experience)
    assert len(gss) == 40 and len(set(gss.indices.tolist())) == 40
    assert torch.equal(bench.train_stream[0].dataset.base_targets[gss.indices], gss.targets)
    assert bool(((gss.scores >= 0) & (gss.scores <= 2)).all())
    # Both experiences' classes are held.
    held = set(gss.targets.tolist())
    assert held & set(bench.train_stream[1].classes_in_this_experience)
    restored = GSSGreedy(mem_size=40)
    restored.load_state_dict(gss.state_dict())
    assert torch.equal(restored.indices, gss.indices) and torch.equal(restored.scores, gss.scores)


def test_bad_arguments() -> None:
    for kwargs, match in (
        (dict(mem_size=0), "mem_size must be an int >= 1, got 0"),
        (dict(n_reference=-1), "n_reference must be a positive int, got -1"),
        (dict(mem_batch_size=True), "mem_batch_size must be a positive int, got True"),
        (dict(seed=1.5), "seed must be an int or None, got 1.5"),
    ):
        with pytest.raises(ValueError, match=match):
            GSSGreedy(**kwargs)  # type: ignore[arg-type]


def _train_online(callbacks: list[Any]) -> Any:
    L.seed_everything(1)
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=10))
    online = split_online(bench.train_stream, 100, seed=0)
    module = ContinualModule(
        MLP(num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )
    for mini in online:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=callbacks).fit(module, datamodule=mini)
        if mini.online.is_last_subexp:
            L.Trainer(**quiet_trainer_kwargs()).test(module, datamodule=bench.test_stream, verbose=False)
    return module.results


@pytest.mark.slow
def test_gss_beats_naive_on_an_online_split_digits_stream() -> None:
    naive = _train_online([])
    gss = _train_online([GSSGreedy(mem_size=200, n_reference=10, mem_batch_size=10)])
    assert gss.average_accuracy > naive.average_accuracy + 0.25
    assert gss.forgetting < naive.forgetting - 0.25
