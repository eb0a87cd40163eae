"""PNN (Rusu et al., 2016): a new column per task label, the older columns frozen."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.from_scratch import FromScratch, refuse_beside
from lightning_cl.methods.gdumb import GDumb
from lightning_cl.models.pnn import ProgressiveNetwork

__all__ = ["PNN", "progressive_network_of"]


def progressive_network_of(model: nn.Module) -> ProgressiveNetwork:
    """The :class:`~lightning_cl.models.ProgressiveNetwork` in ``model`` (itself or a submodule).

    Raises:
        ValueError: if ``model`` holds none, or more than one.

    Example:
        >>> from lightning_cl.models import ProgressiveNetwork
        >>> net = ProgressiveNetwork(input_size=4, hidden_size=3)
        >>> progressive_network_of(net) is net
        True
    """
    found = [m for m in model.modules() if isinstance(m, ProgressiveNetwork)]
    if len(found) != 1:
        raise ValueError(
            f"PNN needs a model with one lightning_cl.models.ProgressiveNetwork, got {type(model).__name__} "
            f"with {len(found)}: build ContinualModule(ProgressiveNetwork(input_size=..., hidden_size=...))"
        )
    return found[0]


class PNN(ContinualCallback):
    """Progressive neural networks: a column for each new task label, the older columns frozen.

    Before each experience (in ``setup``, before the optimizer exists and before DDP wraps the
    model), every task label of the experience without a column gets one in the model's
    :class:`~lightning_cl.models.ProgressiveNetwork`, and every older column (its output layer
    included) is frozen (``requires_grad=False``). The new column reads the older ones through
    its lateral adapters (Rusu et al., 2016, Sec. 2-3). An earlier task's samples go through its
    own column and the older ones only, whose weights no longer change: the network forgets
    nothing by construction (for task-incremental streams, where the task label is known at
    test time).

    Choices, stated:

    - A task label seen before keeps its column, frozen: an experience that brings no new task
      label has nothing to train and is refused at set-up (the paper trains each column on its
      own task only; Avalanche's ``PNNStrategy`` refuses a class- or domain-incremental stream
      likewise).
    - The state is the model's (its columns); the callback keeps none. A checkpoint restores
      into a fresh ``ProgressiveNetwork``, which creates the saved columns as it loads.

    Raises:
        ValueError: at set-up, for a model without a ``ProgressiveNetwork``.
        MisconfigurationException: at set-up, for an experience whose task labels all have
            columns already, or beside ``FromScratch`` or ``GDumb`` (they re-initialise the model).

    Example:
        >>> PNN().name
        'pnn'
    """

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        refuse_beside(
            trainer,
            self,
            (FromScratch, GDumb),
            "re-initialising the model would wipe the frozen columns of the earlier tasks",
        )
        net = progressive_network_of(module.model)
        tasks = [int(t) for t in experience.task_labels]
        new = [t for t in tasks if t not in net.tasks]
        if not new:
            if experience.index < len(net.tasks):  # an experience of this stream fitted again
                raise MisconfigurationException(
                    f"PNN trained the columns of task labels {tasks} already and froze them; experience "
                    f"{experience.index} (fitted again?) would have nothing to train: fit each experience "
                    "of a task-incremental stream once, in order"
                )
            raise MisconfigurationException(
                f"PNN adds one column per new task label, but experience {experience.index} has task "
                f"labels {tasks}, whose columns exist already (and are frozen): PNN needs a "
                "task-incremental stream (a new task label per experience, e.g. "
                "SplitDigits(task_labels=True))"
            )
        for i, task in enumerate(new):
            net.add_column(task, freeze_old=i == 0)  # the new columns of one experience train together
