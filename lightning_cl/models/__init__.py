"""Models: the ``ContinualModule``, dynamic heads and reference backbones."""

from lightning_cl.models.backbones import CNN, MLP, make_head
from lightning_cl.models.heads import (
    MASK_VALUE,
    DynamicModule,
    IncrementalClassifier,
    MultiHeadClassifier,
    copy_at_state,
)
from lightning_cl.models.module import OPTIMIZER_POLICIES, ContinualModule, merge_batch

__all__ = [
    "CNN",
    "MASK_VALUE",
    "MLP",
    "OPTIMIZER_POLICIES",
    "ContinualModule",
    "DynamicModule",
    "IncrementalClassifier",
    "MultiHeadClassifier",
    "copy_at_state",
    "make_head",
    "merge_batch",
]
