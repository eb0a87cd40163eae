"""Continual-learning methods, each a Lightning ``Callback``; combine them in one callbacks list.

Naive fine-tuning is a :class:`~lightning_cl.models.ContinualModule` with no CL callback.
"""

from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.buffers import BUFFER_POLICIES, ReplayBuffer
from lightning_cl.methods.ewc import EWC, fisher_information
from lightning_cl.methods.replay import Replay

__all__ = ["BUFFER_POLICIES", "EWC", "ContinualCallback", "Replay", "ReplayBuffer", "fisher_information"]
