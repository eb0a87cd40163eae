"""SCR: a supervised contrastive loss on current and memory samples; the nearest class mean classifies."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import SCR, supervised_contrastive_loss
from lightning_cl.models import MLP, ContinualModule
from tests.conftest import digits_module, quiet_trainer_kwargs, split_digits_average


def test_the_contrastive_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 0, 0, 2])  # class 2 has no positive: not an anchor
    tau = 0.5
    z = F.normalize(f, dim=1)
    s = (z @ z.T / tau).tolist()
    terms = []
    for i in range(5):
        positives = [p for p in range(5) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denominator = math.log(sum(math.exp(s[i][a]) for a in range(5) if a != i))
        terms.append(sum(denominator - s[i][p] for p in positives) / len(positives))
    expected = sum(terms) / len(terms)
    assert float(supervised_contrastive_loss(f, y, tau)) == pytest.approx(expected, abs=1e-5)
    lonely = torch.randn(2, 3, requires_grad=True)
    zero = supervised_contrastive_loss(lonely, torch.tensor([0, 1]))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_the_classifier_is_the_nearest_mean_of_the_memorys_features() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    scr, module = SCR(mem_size=40, seed=0), digits_module()
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[scr])
        trainer.fit(module, datamodule=experience)
    trainer.test(module, datamodule=bench.test_stream, verbose=False)
    memory = scr.buffer.dataset(bench.train_stream[1].dataset)
    assert memory is not None
    module.eval()
    with torch.no_grad():
        x, y, _ = memory.__getitems__(torch.arange(len(memory)))
        phi = F.normalize(module.model.features(x), dim=1)
        classes = torch.unique(y).tolist()
        means = torch.stack([F.normalize(phi[y == c].mean(0), dim=0) for c in classes])
        expected = []
        for experience in bench.test_stream:
            xt, yt, _ = experience.dataset.__getitems__(torch.arange(len(experience.dataset)))
            nearest = torch.cdist(F.normalize(module.model.features(xt), dim=1), means).argmin(1)
            expected.append(float((torch.tensor(classes)[nearest] == yt).float().mean()))
    assert module.results.accuracy_matrix[-1] == pytest.approx(expected, abs=1e-6)
    assert min(expected[:2]) > 0.5


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0, got -1\.0"):
        SCR(temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got inf"):
        SCR(temperature=float("inf"))
    with pytest.raises(ValueError, match=r"feature_layer must be a non-empty layer name .*, got 2"):
        SCR(feature_layer=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="augment must be a callable"):
        SCR(augment="flip")  # type: ignore[arg-type]
    # No memory, no class means: the classifier would be an untrained output layer.
    with pytest.raises(ValueError, match=r"mem_size must be an int >= 1, got 0: SCR"):
        SCR(mem_size=0)


@pytest.mark.slow
def test_scr_beats_naive_on_split_digits() -> None:
    naive = split_digits_average([])
    ours = split_digits_average([SCR(mem_size=200, seed=0)])
    assert naive < 0.25
    assert ours > naive + 0.4, (naive, ours)


def test_the_loss_is_on_a_trained_projection_head_and_the_means_on_the_encoder() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    scr, module = SCR(mem_size=40, seed=0), digits_module()
    L.Trainer(**quiet_trainer_kwargs(max_steps=1), callbacks=[scr]).fit(
        module, datamodule=bench.train_stream[0]
    )
    assert scr.head is not None
    widths = [(m.in_features, m.out_features) for m in scr.head if isinstance(m, torch.nn.Linear)]
    assert widths == [(256, 256), (256, 128)]  # D -> D -> 128, D the encoder's width
    first = {k: v.clone() for k, v in scr.head.state_dict().items()}
    # Training moves it.
    L.Trainer(**quiet_trainer_kwargs(max_epochs=1), callbacks=[scr]).fit(
        module, datamodule=bench.train_stream[1]
    )
    assert not torch.equal(first["0.weight"], scr.head.state_dict()["0.weight"])
    assert scr.class_means.shape[1] == 256  # the means: encoder features, not the projection
    restored = SCR(mem_size=40)
    restored.load_state_dict(scr.state_dict())
    assert restored.head is not None
    assert all(torch.equal(v, scr.head.state_dict()[k]) for k, v in restored.head.state_dict().items())
    assert SCR(mem_size=40, projection_dim=None)._projection(torch.ones(2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="projection_dim must be an int >= 1 or None, got 0"):
        SCR(projection_dim=0)


def test_task_aware_set_ups_are_refused_at_set_up() -> None:
    multi = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, head="multihead"))
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    trainer = L.Trainer(callbacks=[SCR(mem_size=50)], **quiet_trainer_kwargs())
    with pytest.raises(MisconfigurationException, match=r"^SCR .*ignores task labels.*MultiHeadClassifier"):
        trainer.fit(multi, datamodule=bench.train_stream[0])
