"""Selection strategies: which samples of a group a replay memory keeps, best first.

A strategy is an object passed to a buffer (:class:`~lightning_cl.methods.ReplayBuffer`) or
used by a method (iCaRL's exemplars). Every strategy returns an *ordered* choice of positions:
the first ``k`` of a choice of ``n > k`` are the strategy's choice of ``k``, so a memory that
shrinks a group keeps the front of its order and never has to choose again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.methods.features import capture_features, resolve_layer
from lightning_cl.models.module import ContinualModule

__all__ = [
    "ClosestToCenterSelection",
    "FeatureSelection",
    "HerdingSelection",
    "RandomSelection",
    "SelectionStrategy",
]


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")


class SelectionStrategy(ABC):
    """The samples of ``data`` a memory keeps, best first.

    Subclasses implement :meth:`select`. ``needs_model`` says whether :meth:`select` reads the
    model (a buffer passes the module it is given; without one such a strategy raises).
    """

    needs_model: bool = False

    @abstractmethod
    def select(
        self,
        data: DatasetView,
        k: int,
        *,
        module: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Positions in ``data`` of the ``min(k, len(data))`` samples chosen, best first.

        Args:
            data: the candidates.
            k: how many to choose.
            module: the model, for strategies on its features.
            generator: the source of randomness (one seeded the same on every rank, e.g.
                :func:`~lightning_cl.methods.experience_generator`).

        Returns:
            A ``long`` tensor of distinct positions.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomSelection(SelectionStrategy):
    """A uniform random choice: positions ordered by a uniform random priority drawn per sample.

    The order is ``torch.rand(len(data), generator=generator)`` sorted in descending order (stable),
    the rule :class:`~lightning_cl.methods.ReplayBuffer` keeps for its groups, so any prefix is a
    uniform random subset. Deterministic given the generator's seed.

    Example:
        >>> from lightning_cl.data import TensorClassificationDataset
        >>> data = DatasetView(TensorClassificationDataset(torch.zeros(5, 1), torch.arange(5)), range(5))
        >>> a = RandomSelection().select(data, 3, generator=torch.Generator().manual_seed(0))
        >>> b = RandomSelection().select(data, 3, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(a, b), len(a)
        (True, 3)
    """

    def select(
        self,
        data: DatasetView,
        k: int,
        *,
        module: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        _check_k(k)
        priority = torch.rand(len(data), generator=generator)
        return priority.argsort(descending=True, stable=True)[:k]


class FeatureSelection(SelectionStrategy):
    """Base of the strategies on features taken from a named layer of the model.

    :meth:`select` runs the model (eval mode, no gradients, in chunks of ``batch_size``) on the
    candidates, records the output of the layer ``layer`` (flattened to ``(n, D)``, see
    :func:`~lightning_cl.methods.capture_features`) and passes the features to
    :meth:`select_features`, which subclasses implement.

    Args:
        layer: name of the layer whose outputs are the features: a name of
            ``module.model.named_modules()`` for a :class:`~lightning_cl.models.ContinualModule`
            (as LFL names its layer), else of ``module.named_modules()``. The default
            ``"features"`` is the penultimate layer of the reference backbones.
        batch_size: samples per forward pass.

    Raises:
        ValueError: for an empty ``layer`` or ``batch_size < 1``; at :meth:`select`, for a
            missing module or a model without the layer.
    """

    needs_model = True

    def __init__(self, layer: str = "features", batch_size: int = 256):
        check_layer_name(layer)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.layer = layer
        self.batch_size = batch_size

    def features(self, data: DatasetView, module: nn.Module) -> Tensor:
        """The ``(len(data), D)`` float features of ``data`` at :attr:`layer` (CPU)."""
        net = module.model if isinstance(module, ContinualModule) else module
        resolve_layer(net, self.layer)  # a clear error before any forward pass
        device = next(module.parameters()).device
        was_training = module.training
        module.eval()
        chunks = []
        try:
            with torch.no_grad(), capture_features(net, self.layer) as out:
                for positions in torch.arange(len(data)).split(self.batch_size):
                    x, _, t = (v.to(device) for v in data.__getitems__(positions))
                    module(x, t) if isinstance(module, ContinualModule) else module(x)
                    chunks.append(out.pop().float().cpu())
        finally:
            module.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def select(
        self,
        data: DatasetView,
        k: int,
        *,
        module: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        _check_k(k)
        if module is None:
            raise ValueError(f"{type(self).__name__} selects on the model's features: pass module=")
        if len(data) == 0 or k == 0:
            return torch.zeros(0, dtype=torch.long)
        return self.select_features(self.features(data, module), k, generator=generator)

    @abstractmethod
    def select_features(
        self, features: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Positions (rows of ``features``, ``(n, D)``) of the ``min(k, n)`` samples chosen, best first."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r})"


class HerdingSelection(FeatureSelection):
    r"""iCaRL's herding (Rebuffi et al., 2017, Alg. 4): the running mean of the chosen features
    approaches the mean of all.

    With :math:`\mu = \frac1n \sum_i \phi(x_i)`, the ``k``-th choice is

    .. math::
        p_k = \arg\min_{x \notin \{p_1..p_{k-1}\}}
        \Big\| \mu - \frac1k \Big(\phi(x) + \sum_{j<k} \phi(p_j)\Big) \Big\|

    so the first choice is the sample nearest the mean. Ties go to the lowest position.

    Choices, stated:

    - ``normalize=True`` (the paper, Sec. 2.1): features are L2-normalised, and so is
      :math:`\mu`. Avalanche's ``HerdingSelectionStrategy`` uses the raw features: pass
      ``normalize=False``.
    - A sample is chosen at most once (Alg. 4 builds a set of exemplars).

    Args:
        layer: the feature layer (see :class:`FeatureSelection`).
        normalize: L2-normalise the features and their mean.
        batch_size: samples per forward pass.

    Example:
        >>> features = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [2.0, 2.0]])
        >>> HerdingSelection(normalize=False).select_features(features, 4).tolist()
        [1, 3, 0, 2]
    """

    def __init__(self, layer: str = "features", normalize: bool = True, batch_size: int = 256):
        super().__init__(layer, batch_size)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = normalize

    def select_features(
        self, features: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        _check_k(k)
        phi = features.double()
        if self.normalize:
            phi = F.normalize(phi, dim=1)
        n = len(phi)
        k = min(k, n)
        mean = phi.mean(0)
        if self.normalize:
            mean = F.normalize(mean, dim=0)
        chosen: list[int] = []
        running = torch.zeros_like(mean)
        free = torch.ones(n, dtype=torch.bool)
        for step in range(1, k + 1):
            distance = (mean - (running + phi) / step).norm(dim=1)
            distance[~free] = float("inf")
            best = int(distance.argmin())
            chosen.append(best)
            free[best] = False
            running = running + phi[best]
        return torch.tensor(chosen, dtype=torch.long)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r}, normalize={self.normalize})"


class ClosestToCenterSelection(FeatureSelection):
    """The samples whose features lie nearest the mean of all, nearest first (Avalanche's
    ``ClosestToCenterSelectionStrategy``; Euclidean distance, ties to the lowest position).

    Example:
        >>> features = torch.tensor([[0.0], [4.0], [1.0], [3.0]])
        >>> ClosestToCenterSelection().select_features(features, 3).tolist()
        [2, 3, 0]
    """

    def select_features(
        self, features: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        _check_k(k)
        phi = features.double()
        distance = (phi - phi.mean(0)).norm(dim=1)
        return distance.argsort(stable=True)[:k]


def check_layer_name(layer: Any, name: str = "layer") -> str:
    """``layer`` if it is a non-empty string (a ``named_modules()`` name), else a ``ValueError``.

    Example:
        >>> check_layer_name("features")
        'features'
    """
    if not isinstance(layer, str) or not layer:
        raise ValueError(
            f"{name} must be a non-empty layer name (a model.named_modules() name), got {layer!r}"
        )
    return layer


def check_temperature(value: Any, name: str = "temperature") -> float:
    """``value`` if it is a finite number > 0 (a softmax or contrastive temperature), else a ``ValueError``.

    Example:
        >>> check_temperature(0.1)
        0.1
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_selection(selection: Any) -> SelectionStrategy:
    """``selection`` if it is a :class:`SelectionStrategy` (``None``: :class:`RandomSelection`).

    Raises:
        ValueError: for anything else.
    """
    if selection is None:
        return RandomSelection()
    if not isinstance(selection, SelectionStrategy):
        raise ValueError(
            "selection must be a SelectionStrategy (RandomSelection(), HerdingSelection(), "
            f"ClosestToCenterSelection(), or a FeatureSelection subclass), got {selection!r}"
        )
    return selection
