from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_cl.data import DatasetView, SplitDigits, TensorClassificationDataset
from lightning_cl.methods import EWC, fisher_information
from lightning_cl.models import CNN, MLP, ContinualModule
from lightning_cl.models.heads import slice_to
from tests.conftest import quiet_trainer_kwargs


def _tiny_module(head: str = "linear") -> ContinualModule:
    torch.manual_seed(0)
    return ContinualModule(MLP(num_classes=3, input_size=4, hidden_size=5, drop_rate=0.0, head=head))  # type: ignore[arg-type]


def _tiny_data(n: int = 10) -> DatasetView:
    g = torch.Generator().manual_seed(1)
    base = TensorClassificationDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 3)
    return DatasetView(base, torch.arange(n), 0)


def _manual_grads(
    module: ContinualModule, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
) -> list[torch.Tensor]:
    params = [p for p in module.parameters() if p.requires_grad]
    loss = F.cross_entropy(module(x, t), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)  # a head of another task is unused
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def _model_for(kind: str) -> ContinualModule:
    torch.manual_seed(0)
    if kind == "cnn":  # convolutions: the vmap path
        return ContinualModule(CNN(num_classes=3, in_channels=1, channels=(2,), drop_rate=0.0))
    module = _tiny_module(
        head={"mlp": "linear", "incremental": "incremental", "multihead": "multihead"}[kind]
    )
    head = module.model.head
    if kind == "incremental":
        head.adaptation([0, 1, 2], torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2]))
    if kind == "multihead":  # two task labels in one batch
        head.adaptation([0, 1, 2], torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2]))
    return module


@pytest.mark.parametrize("kind", ["mlp", "incremental", "multihead", "cnn"])
def test_per_sample_fisher_matches_a_loop_over_samples(kind: str) -> None:
    module = _model_for(kind)
    g = torch.Generator().manual_seed(1)
    shape = (10, 1, 4, 4) if kind == "cnn" else (10, 4)
    base = TensorClassificationDataset(torch.randn(shape, generator=g), torch.arange(10) % 3)
    data = DatasetView(base, torch.arange(10), (base.targets == 1).long() if kind == "multihead" else 0)
    sums, count = fisher_information(module, data, torch.arange(len(data)), batch_size=4)
    assert count == len(data)
    expected = [torch.zeros_like(p) for p in module.parameters()]
    for i in range(len(data)):
        x, y, t = data.__getitems__([i])
        for e, g_ in zip(expected, _manual_grads(module, x, y, t)):
            e += g_.pow(2)
    for (name, _), e in zip(module.named_parameters(), expected):
        assert torch.allclose(sums[name], e, atol=1e-6, rtol=1e-4), name


def test_minibatch_fisher_squares_batch_gradients() -> None:
    module, data = _tiny_module(), _tiny_data(8)
    sums, count = fisher_information(module, data, torch.arange(8), batch_size=4, estimator="minibatch")
    assert count == 2
    expected = [torch.zeros_like(p) for p in module.parameters()]
    for chunk in torch.arange(8).split(4):
        for e, g in zip(expected, _manual_grads(module, *data.__getitems__(chunk))):
            e += g.pow(2)
    for (name, _), e in zip(module.named_parameters(), expected):
        assert torch.allclose(sums[name], e, atol=1e-6), name


def test_fisher_works_with_a_multihead_model() -> None:
    module = _tiny_module(head="multihead")
    data = _tiny_data()
    module.model.head.adaptation([0, 1, 2], data.task_labels, data.targets)
    sums, count = fisher_information(module, data, torch.arange(len(data)), batch_size=3)
    assert count == len(data) and all(torch.isfinite(v).all() for v in sums.values())
    assert sum(float(v.sum()) for v in sums.values()) > 0


def test_penalty_is_half_lambda_times_fisher_weighted_distance() -> None:
    module = _tiny_module()
    ewc = EWC(ewc_lambda=4.0)
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    fisher = {n: torch.rand_like(p) for n, p in module.named_parameters()}
    ewc.anchors = {0: {"params": params, "fisher": fisher}}
    batch = (torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    assert float(ewc.penalty(module, batch, torch.zeros(1, 3)).detach()) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5)
    expected = 0.5 * 4.0 * sum(float((f * 0.25).sum()) for f in fisher.values())
    assert float(ewc.penalty(module, batch, torch.zeros(1, 3)).detach()) == pytest.approx(expected, rel=1e-5)


def test_penalty_covers_the_old_slice_of_a_grown_head() -> None:
    module = _tiny_module(head="incremental")
    head = module.model.head
    head.adaptation([0, 1], torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    ewc = EWC(ewc_lambda=2.0)
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    ewc.anchors = {0: {"params": params, "fisher": {n: torch.ones_like(p) for n, p in params.items()}}}
    head.adaptation([2, 3], torch.zeros(2, dtype=torch.long), torch.tensor([2, 3]))
    with torch.no_grad():
        head.classifier.weight[2:] += 10.0  # new units: free
    batch = (torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    assert float(ewc.penalty(module, batch, torch.zeros(1, 4)).detach()) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        head.classifier.weight[:2] += 1.0  # old units: anchored
    assert float(ewc.penalty(module, batch, torch.zeros(1, 4)).detach()) == pytest.approx(2.0 / 2 * 2 * 5)


def test_online_mode_keeps_one_decayed_term() -> None:
    bench = SplitDigits(n_experiences=5)
    module = ContinualModule(MLP(input_size=64, hidden_size=16, drop_rate=0.0))
    ewc = EWC(ewc_lambda=1.0, mode="online", decay_factor=0.5)
    fishers = []
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[ewc]).fit(module, datamodule=experience)
        fishers.append({n: f.clone() for n, f in next(iter(ewc.anchors.values()))["fisher"].items()})
    assert list(ewc.anchors) == [1]
    # F_1 = 0.5 F_0 + F_new, so F_1 - 0.5 F_0 is a Fisher of its own: non-negative.
    for name, f1 in fishers[1].items():
        assert torch.all(f1 - 0.5 * fishers[0][name] >= -1e-7)


def test_ewc_keeps_important_weights_near_the_anchor() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    drift = {}
    for lam in (0.0, 100.0):
        L.seed_everything(0)
        module = ContinualModule(
            MLP(input_size=64, hidden_size=64, drop_rate=0.0), optimizer=partial(torch.optim.SGD, lr=0.01)
        )
        ewc = EWC(ewc_lambda=lam)
        L.Trainer(**quiet_trainer_kwargs(max_epochs=3), callbacks=[ewc]).fit(
            module, datamodule=bench.train_stream[0]
        )
        anchor, fisher = ewc.anchors[0]["params"], ewc.anchors[0]["fisher"]
        L.Trainer(**quiet_trainer_kwargs(max_epochs=3), callbacks=[ewc]).fit(
            module, datamodule=bench.train_stream[1]
        )
        drift[lam] = sum(
            float((fisher[n] * (p.detach() - anchor[n]).pow(2)).sum()) for n, p in module.named_parameters()
        )
    # What EWC minimises, the Fisher-weighted distance to the anchor, shrinks several times.
    assert drift[100.0] < 0.3 * drift[0.0]


def test_fisher_snapshot_is_a_copy() -> None:
    bench = SplitDigits(n_experiences=5)
    module = ContinualModule(MLP(input_size=64, hidden_size=16))
    ewc = EWC(ewc_lambda=1.0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[ewc]).fit(module, datamodule=bench.train_stream[0])
    saved = {n: p.clone() for n, p in ewc.anchors[0]["params"].items()}
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[ewc]).fit(module, datamodule=bench.train_stream[1])
    assert all(torch.equal(saved[n], p) for n, p in ewc.anchors[0]["params"].items())
    assert any(not torch.equal(saved[n], p.detach()) for n, p in module.named_parameters())


def test_state_dict_round_trip() -> None:
    bench = SplitDigits(n_experiences=5)
    module = ContinualModule(MLP(input_size=64, hidden_size=16))
    ewc = EWC(ewc_lambda=1.0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[ewc]).fit(module, datamodule=bench.train_stream[0])
    restored = EWC(ewc_lambda=1.0)
    restored.load_state_dict(ewc.state_dict())
    batch = (torch.zeros(1, 64), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1)
    assert float(restored.penalty(module, batch, torch.zeros(1, 10))) == float(
        ewc.penalty(module, batch, torch.zeros(1, 10))
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ewc_lambda=-1.0), "ewc_lambda must be a finite number >= 0, got -1.0"),
        (dict(ewc_lambda=float("nan")), "ewc_lambda must be a finite number >= 0, got nan"),
        (dict(ewc_lambda=True), "ewc_lambda must be a finite number >= 0, got True"),
        (dict(mode="both"), "mode must be one of"),
        (dict(fisher="exact"), "fisher must be one of"),
        (dict(decay_factor=1.5), "decay_factor"),
        (dict(fisher_batch_size=0), "fisher_batch_size"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EWC(**kwargs)


def test_consolidated_penalty_equals_the_sum_over_experiences() -> None:
    module = _tiny_module(head="incremental")
    head = module.model.head
    g = torch.Generator().manual_seed(0)
    ewc = EWC(ewc_lambda=3.0)
    batch = (torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    for k, classes in enumerate(([0, 1], [2, 3], [4])):
        head.adaptation(classes, torch.zeros(len(classes), dtype=torch.long), torch.tensor(classes))
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        anchor = {
            "params": {n: p.detach().clone() for n, p in module.named_parameters()},
            "fisher": {n: torch.rand(p.shape, generator=g) for n, p in module.named_parameters()},
        }
        ewc.anchors = {**ewc.anchors, k: anchor}
        ewc.penalty(module, batch, torch.zeros(1, 5))  # the consolidated form is cached, then rebuilt
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    expected = torch.zeros((), dtype=torch.float64)
    for anchor in ewc.anchors.values():
        for name, p in module.named_parameters():
            old = anchor["params"][name]
            current = slice_to(p.detach(), old.shape).double()
            expected += (anchor["fisher"][name].double() * (current - old.double()).pow(2)).sum()
    value = ewc.penalty(module, batch, torch.zeros(1, 5))
    assert float(value) == pytest.approx(0.5 * 3.0 * float(expected), rel=1e-5)
    # The gradient is the separate-mode gradient too.
    value.backward()
    for name, p in module.named_parameters():
        manual = torch.zeros_like(p, dtype=torch.float64)
        for anchor in ewc.anchors.values():
            old, f = anchor["params"][name], anchor["fisher"][name]
            slice_to(manual, old.shape).add_(
                3.0 * f.double() * (slice_to(p.detach(), old.shape).double() - old.double())
            )
        assert torch.allclose(p.grad.double(), manual, rtol=1e-4, atol=1e-5), name


def _separate_sum(ewc: EWC, module: ContinualModule) -> float:
    """The separate-mode penalty written out from the anchors, experience by experience."""
    total = 0.0
    for anchor in ewc.anchors.values():
        for name, p in module.named_parameters():
            old = anchor["params"][name]
            diff = slice_to(p.detach(), old.shape).double() - old.double()
            total += float((anchor["fisher"][name].double() * diff.pow(2)).sum())
    return 0.5 * ewc.ewc_lambda * total


def _moved(module: ContinualModule) -> ContinualModule:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05)
    return module


def test_an_experience_trained_again_replaces_its_anchor_and_the_penalty_follows() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    module = ContinualModule(MLP(input_size=64, hidden_size=16, drop_rate=0.0))
    ewc = EWC(ewc_lambda=10.0)
    batch = (torch.zeros(1, 64), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    first: dict[str, torch.Tensor] = {}
    for step, experience in enumerate(bench.train_stream[:2] + bench.train_stream[:2]):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[ewc]).fit(module, datamodule=experience)
        if step == 0:
            first = {n: p.clone() for n, p in ewc.anchors[0]["params"].items()}
        # After every experience, the one penalty EWC adds is the sum over the anchors it holds.
        value = float(ewc.penalty(_moved(module), batch, torch.zeros(1, 10)).detach())
        assert value == pytest.approx(_separate_sum(ewc, module), rel=1e-4)
    assert sorted(ewc.anchors) == [0, 1]  # experience 0 trained twice: one anchor, the latest
    assert any(not torch.equal(first[n], p) for n, p in ewc.anchors[0]["params"].items())


def test_a_fisher_zeroed_after_the_penalty_was_cached_gives_zero() -> None:
    bench = SplitDigits(n_experiences=5)
    module = ContinualModule(MLP(input_size=64, hidden_size=16, drop_rate=0.0))
    ewc = EWC(ewc_lambda=100.0)
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[ewc]).fit(module, datamodule=bench.train_stream[0])
    batch = (torch.zeros(1, 64), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    assert float(ewc.penalty(_moved(module), batch, torch.zeros(1, 10)).detach()) > 1e-3  # cached now
    # Zeroed through a loaded state (the same experience index, the same keys) ...
    state = ewc.state_dict()
    zeroed = {0: {"params": state["anchors"][0]["params"], "fisher": {}}}
    zeroed[0]["fisher"] = {n: torch.zeros_like(f) for n, f in state["anchors"][0]["fisher"].items()}
    restored = EWC(ewc_lambda=100.0)
    restored.load_state_dict(state)
    assert float(restored.penalty(module, batch, torch.zeros(1, 10)).detach()) > 1e-3
    restored.load_state_dict({"anchors": zeroed})
    assert float(restored.penalty(module, batch, torch.zeros(1, 10)).detach()) == 0.0
    # ... and in place.
    for f in ewc.anchors[0]["fisher"].values():
        f.zero_()
    assert float(ewc.penalty(module, batch, torch.zeros(1, 10)).detach()) == 0.0


def test_anchors_are_replaced_whole_and_checked() -> None:
    module, ewc = _tiny_module(), EWC()
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in params.items()}
    with pytest.raises(TypeError):
        ewc.anchors[0] = {"params": params, "fisher": fisher}  # type: ignore[index]
    with pytest.raises(ValueError, match=r"anchors\[3\] needs a 'params' tensor .*: \['model.head.bias'\]"):
        ewc.anchors = {3: {"params": {**params, "model.head.bias": torch.zeros(7)}, "fisher": fisher}}
    ewc.anchors = {0: {"params": params, "fisher": fisher}}
    batch = (torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    assert float(ewc.penalty(_moved(module), batch, torch.zeros(1, 3)).detach()) == pytest.approx(
        0.5 * sum(0.05**2 * p.numel() for p in params.values()), rel=1e-4
    )
