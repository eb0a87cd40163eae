"""Models: the ``ContinualModule``, dynamic heads, reference backbones and the loss-term extension point."""

from lightning_cl.models.backbones import CNN, MLP, make_head
from lightning_cl.models.heads import (
    MASK_VALUE,
    DynamicModule,
    IncrementalClassifier,
    MultiHeadClassifier,
    copy_at_state,
    pad_to,
    slice_to,
)
from lightning_cl.models.loss_term import LossTerm
from lightning_cl.models.module import (
    ON_NONFINITE,
    OPTIMIZER_POLICIES,
    ContinualModule,
    NonFiniteLossError,
    check_new_trainer,
    merge_batch,
)

__all__ = [
    "CNN",
    "MASK_VALUE",
    "MLP",
    "ON_NONFINITE",
    "OPTIMIZER_POLICIES",
    "ContinualModule",
    "DynamicModule",
    "IncrementalClassifier",
    "LossTerm",
    "MultiHeadClassifier",
    "NonFiniteLossError",
    "check_new_trainer",
    "copy_at_state",
    "make_head",
    "merge_batch",
    "pad_to",
    "slice_to",
]
