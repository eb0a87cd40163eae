"""The batch every loader of lightning_cl yields: ``(x, y, t)``."""

from __future__ import annotations

from torch import Tensor

__all__ = ["Batch"]

Batch = tuple[Tensor, Tensor, Tensor]
"""A batch ``(x, y, t)``: inputs, class targets and task labels, one row per sample."""
