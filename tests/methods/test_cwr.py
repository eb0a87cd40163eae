"""CWR*: consolidated output weights, the weighted average of the paper, the rest of the model frozen."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lightning_cl.data import SplitDigits
from lightning_cl.methods import CWRStar
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs


def _rows(module: ContinualModule, classes: list[int]) -> torch.Tensor:
    head = module.model.head
    return torch.cat([head.weight, head.bias.unsqueeze(1)], dim=1)[classes].detach().clone()


def test_old_classes_keep_their_consolidated_weights_and_the_body_is_frozen() -> None:
    L.seed_everything(0)
    bench, module, cwr = SplitDigits(n_experiences=5, seed=1), digits_module(), CWRStar()
    first, second = bench.train_stream[0], bench.train_stream[1]
    L.Trainer(**quiet_trainer_kwargs(max_epochs=3), callbacks=[cwr]).fit(module, datamodule=first)
    old = first.classes_in_this_experience
    assert cwr.consolidated is not None
    consolidated = cwr.consolidated[old].clone()
    # The head holds the consolidated rows, centred on the classes' mean row (mean shift).
    torch.testing.assert_close(_rows(module, old).double(), consolidated)
    torch.testing.assert_close(consolidated.mean(0), torch.zeros(consolidated.shape[1], dtype=torch.float64))
    body = module.model.features[1].weight.detach().clone()
    L.Trainer(**quiet_trainer_kwargs(max_epochs=3), callbacks=[cwr]).fit(module, datamodule=second)
    assert torch.equal(cwr.consolidated[old], consolidated)  # experience 1's classes: unchanged
    assert torch.equal(_rows(module, old), consolidated.float())  # and what the model evaluates with
    assert torch.equal(module.model.features[1].weight, body)  # the rest of the model is frozen
    assert module.model.features[1].weight.requires_grad  # ... and given back afterwards
    new = second.classes_in_this_experience
    assert cwr.past[new].tolist() == [int((second.dataset.targets == c).sum()) for c in new]
    assert float(cwr.consolidated[new].abs().sum()) > 0
    # Consolidated heads remember the first classes; fine-tuning would predict only the new ones.
    result = L.Trainer(**quiet_trainer_kwargs()).test(module, datamodule=bench.test_stream[:2], verbose=False)
    assert result[0]["test/acc/exp0"] > 0.5


def test_a_class_seen_again_is_averaged_with_the_weight_of_its_past_samples() -> None:
    cwr = CWRStar(mean_shift="none")
    head = nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [5.0, 5.0]]))
        head.bias.zero_()
    cwr.consolidate(head, [0, 1], torch.tensor([4, 1]))
    with torch.no_grad():
        head.weight[0] = torch.tensor([4.0, -2.0])
    cwr.consolidate(head, [0], torch.tensor([16]))
    # w = sqrt(past / cur) = sqrt(4 / 16) = 0.5: cw = (cw * 0.5 + tw) / 1.5
    expected = (torch.tensor([1.0, 1.0, 0.0]) * 0.5 + torch.tensor([4.0, -2.0, 0.0])) / 1.5
    torch.testing.assert_close(cwr.consolidated[0], expected.double())
    assert cwr.past.tolist() == [20, 1, 0]
    torch.testing.assert_close(cwr.consolidated[1], torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))


def test_mean_shifts() -> None:
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))
        head.bias.copy_(torch.tensor([1.0, -1.0]))
    counts = torch.tensor([1, 1])
    by_class, scalar = CWRStar(), CWRStar(mean_shift="scalar")
    by_class.consolidate(head, [0, 1], counts)
    scalar.consolidate(head, [0, 1], counts)
    assert by_class.consolidated.tolist() == [[-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]]
    assert scalar.consolidated.tolist() == [[-2.0, 0.0, 1.0], [0.0, 2.0, -1.0]]  # the weights' mean, 3


def test_state_round_trips() -> None:
    cwr = CWRStar()
    cwr.consolidate(nn.Linear(2, 2), [0, 1], torch.tensor([2, 3]))
    copy = CWRStar()
    copy.load_state_dict(cwr.state_dict())
    assert torch.equal(copy.consolidated, cwr.consolidated) and torch.equal(copy.past, cwr.past)


def test_bad_arguments_and_heads() -> None:
    with pytest.raises(ValueError, match="init must be one of"):
        CWRStar(init="random")
    with pytest.raises(ValueError, match="mean_shift must be one of"):
        CWRStar(mean_shift="mean")
    module = ContinualModule(MLP(input_size=64, hidden_size=8, head="multihead"))
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    with pytest.raises(ValueError, match=r"must be an nn\.Linear or an IncrementalClassifier"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[CWRStar()]).fit(
            module, datamodule=bench.train_stream[0]
        )


@pytest.mark.parametrize("eval_frozen", [True, False])
def test_the_frozen_body_keeps_its_batch_norm_moments_in_eval_mode(eval_frozen: bool) -> None:
    from functools import partial

    from lightning_cl.models import CNN

    L.seed_everything(0)
    model = CNN(num_classes=10, channels=(4, 8), drop_rate=0.0, batch_norm=True)
    module = ContinualModule(model, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    bench, cwr = SplitDigits(n_experiences=5, seed=1), CWRStar(eval_frozen=eval_frozen)
    states = []
    for k in range(2):
        trainer = L.Trainer(**quiet_trainer_kwargs(limit_train_batches=5), callbacks=[cwr])
        trainer.fit(module, datamodule=bench.train_stream[k])
        states.append({n: v.clone() for n, v in model.features.state_dict().items()})
    moments = [n for n in states[0] if n.endswith("running_mean")]
    assert len(moments) == 4 and all(
        torch.equal(states[0][n], states[1][n]) for n in states[0] if "weight" in n
    )
    unchanged = all(torch.equal(states[0][n], states[1][n]) for n in moments)
    assert unchanged is eval_frozen
    assert all(m.training for m in model.modules())  # the modes were given back
    with pytest.raises(ValueError, match="eval_frozen must be True or False, got 1"):
        CWRStar(eval_frozen=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="freeze_remaining must be True or False, got 'no'"):
        CWRStar(freeze_remaining="no")  # type: ignore[arg-type]
