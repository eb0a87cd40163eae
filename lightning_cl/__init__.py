"""lightning_cl: continual learning, Lightning-native.

Experiences are ``LightningDataModule`` objects, the model is a ``LightningModule``
(:class:`ContinualModule`), and each continual-learning method is a Lightning ``Callback``.
"""

from lightning_cl.data import Benchmark, Experience, LoaderSettings, SplitDigits, SplitMNIST, Stream
from lightning_cl.evaluation import ContinualResults
from lightning_cl.methods import (
    AGEM,
    DER,
    EWC,
    GEM,
    LFL,
    MAS,
    SI,
    ContinualCallback,
    FromScratch,
    LwF,
    Replay,
    RWalk,
)
from lightning_cl.models import CNN, MLP, ContinualModule, IncrementalClassifier, MultiHeadClassifier
from lightning_cl.training import fit_stream

__version__ = "0.1.0"

__all__ = [
    "AGEM",
    "CNN",
    "DER",
    "EWC",
    "GEM",
    "LFL",
    "MAS",
    "MLP",
    "SI",
    "Benchmark",
    "ContinualCallback",
    "ContinualModule",
    "ContinualResults",
    "Experience",
    "FromScratch",
    "IncrementalClassifier",
    "LoaderSettings",
    "LwF",
    "MultiHeadClassifier",
    "RWalk",
    "Replay",
    "SplitDigits",
    "SplitMNIST",
    "Stream",
    "__version__",
    "fit_stream",
]
