from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_cl.data import DatasetView, TensorClassificationDataset
from lightning_cl.methods import (
    ClosestToCenterSelection,
    HerdingSelection,
    RandomSelection,
    experience_generator,
)
from lightning_cl.models import MLP, ContinualModule


def _view(x: torch.Tensor) -> DatasetView:
    return DatasetView(TensorClassificationDataset(x, torch.zeros(len(x), dtype=torch.long)), range(len(x)))


class _Identity(nn.Module):
    """A model whose layer ``features`` outputs its input: the features are the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_herding_first_picks_the_sample_nearest_the_mean() -> None:
    # Mean (2, 1); sample 3 is at distance 0.1 of it, the others much further.
    features = torch.tensor([[0.0, 0.0], [4.0, 2.0], [0.5, 0.0], [2.1, 1.0], [3.4, 2.0]])
    order = HerdingSelection(normalize=False).select_features(features, 5)
    assert order[0] == 3
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]


def test_herding_keeps_the_running_mean_near_the_class_mean() -> None:
    # Two clusters, 8 samples at 0 and 2 at 10: the mean is 2. Herding picks 0, 0 (running
    # means 0 and 0 beat 10 and 5), then a 10 (10/3 is nearer 2 than 0), then 0, 0: the five
    # chosen have mean 2 exactly. Closest-to-center never picks a 10 before all the 0s.
    features = torch.tensor([[0.0]] * 8 + [[10.0]] * 2)
    herding = HerdingSelection(normalize=False).select_features(features, 5).tolist()
    assert herding == [0, 1, 8, 2, 3]
    assert float(features[herding].mean()) == 2.0
    center = ClosestToCenterSelection().select_features(features, 8).tolist()
    assert center == list(range(8))


def test_herding_normalises_features_as_the_paper() -> None:
    # After L2 normalisation, [10, 0] and [1, 0] are the same point.
    features = torch.tensor([[10.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    normalised = HerdingSelection(normalize=True).select_features(features, 4)
    assert normalised[0] in (0, 2, 3)
    assert HerdingSelection(normalize=False).select_features(features, 1)[0] == 2


def test_closest_to_center_orders_by_distance() -> None:
    features = torch.tensor([[5.0], [1.0], [2.5], [3.2], [-4.0]])  # mean 1.54
    order = ClosestToCenterSelection().select_features(features, 5).tolist()
    distances = (features.flatten() - features.mean()).abs()
    assert order == distances.argsort().tolist() == [1, 2, 3, 0, 4]
    assert ClosestToCenterSelection().select_features(features, 2).tolist() == [1, 2]


def test_feature_strategies_read_the_named_layer() -> None:
    x = torch.tensor([[0.0, 0.0], [4.0, 2.0], [0.5, 0.0], [2.1, 1.0], [3.4, 2.0]])
    model = _Identity()
    assert HerdingSelection(normalize=False).select(_view(x), 2, module=model)[0] == 3
    assert ClosestToCenterSelection().select(_view(x), 1, module=model).tolist() == [3]
    # A ContinualModule: the layer is named in its model, the module's mode is kept.
    module = ContinualModule(MLP(num_classes=3, input_size=2, hidden_size=4))
    module.train()
    order = HerdingSelection(layer="features").select(_view(x), 5, module=module)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4] and module.training
    with pytest.raises(ValueError, match="no layer 'penultimate'"):
        HerdingSelection(layer="penultimate").select(_view(x), 2, module=model)
    with pytest.raises(ValueError, match="pass module="):
        HerdingSelection().select(_view(x), 2)


def test_random_is_seeded_and_ordered() -> None:
    data = _view(torch.zeros(50, 2))
    a = RandomSelection().select(data, 50, generator=experience_generator(3, 1))
    b = RandomSelection().select(data, 20, generator=experience_generator(3, 1))
    c = RandomSelection().select(data, 50, generator=experience_generator(3, 2))
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a[:20], b)  # a smaller choice is the front of the larger one
    assert not torch.equal(a, c)


@pytest.mark.parametrize("strategy", [RandomSelection(), HerdingSelection(), ClosestToCenterSelection()])
def test_k_larger_than_data_and_bad_k(strategy: object) -> None:
    features = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    if isinstance(strategy, RandomSelection):
        assert len(strategy.select(_view(features), 10, generator=torch.Generator())) == 4
    else:
        assert len(strategy.select_features(features, 10)) == 4  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="k must be an int >= 0, got -1"):
        strategy.select(_view(features), -1, module=_Identity())  # type: ignore[attr-defined]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="layer must be a non-empty layer name"):
        HerdingSelection(layer="")
    with pytest.raises(ValueError, match="normalize must be True or False, got 'no'"):
        HerdingSelection(normalize="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ClosestToCenterSelection(batch_size=0)
