"""The protocol every continual-learning method keeps: a Lightning ``Callback`` with CL hooks."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_cl.data.experience import Experience

if TYPE_CHECKING:
    from lightning_cl.models.module import ContinualModule

__all__ = ["Batch", "ContinualCallback", "stream_seed"]

Batch = tuple[Tensor, Tensor, Tensor]


class ContinualCallback(L.Callback):
    """Base class of the CL methods: a Lightning ``Callback`` plus three extension points.

    - :meth:`penalty`: a term added to the training loss. Callbacks cannot change the loss
      Lightning computes, so :class:`~lightning_cl.models.ContinualModule` sums the penalties
      of all CL callbacks in ``training_step``.
    - :meth:`train_dataloaders`: extra training data (a replay buffer), fed by further loaders
      next to the experience's own; the module concatenates the batches.
    - :meth:`on_experience_start` / :meth:`on_experience_end`: called once per experience, from
      ``setup("fit")`` and ``on_fit_end``. ``on_fit_end`` runs only when the fit finished, so an
      interrupted experience leaves the method's state as it was.

    Subclasses that override ``setup`` or ``on_fit_end`` must call ``super()``. Methods combine
    freely in one callbacks list; each keeps its state in ``state_dict()``.
    """

    @property
    def name(self) -> str:
        """Short name used in logged keys (``train/penalty/<name>``)."""
        return type(self).__name__.lower()

    def penalty(self, module: ContinualModule, batch: Batch, logits: Tensor) -> Tensor | None:
        """A term to add to the training loss of this step, or ``None``.

        Args:
            module: the module being trained.
            batch: the (merged) training batch ``(x, y, t)``.
            logits: the module's output on ``x``.
        """
        return None

    def train_dataloaders(self, experience: Experience, current: Sized) -> dict[str, Iterable[Any]]:
        """Extra training loaders, by name, to iterate next to ``current`` (default: none).

        Lightning combines them in ``max_size_cycle`` mode, so a loader with as many batches as
        ``current`` adds one batch to every training step.
        """
        return {}

    def on_experience_start(
        self, trainer: L.Trainer, module: ContinualModule, experience: Experience
    ) -> None:
        """Called before training on ``experience`` (from ``setup("fit")``)."""

    def on_experience_end(self, trainer: L.Trainer, module: ContinualModule, experience: Experience) -> None:
        """Called after training on ``experience`` finished (from ``on_fit_end``)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from lightning_cl.models.module import ContinualModule

        if not isinstance(pl_module, ContinualModule):
            raise MisconfigurationException(
                f"{type(self).__name__} is a continual-learning callback and needs a ContinualModule, "
                f"got {type(pl_module).__name__}"
            )
        experience = _experience_of(trainer)
        self.on_experience_start(trainer, pl_module, experience)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_experience_end(trainer, pl_module, _experience_of(trainer))  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def stream_seed(trainer: L.Trainer, seed: int | None) -> int:
    """One base seed for a method's random choices over the whole stream, the same on every rank.

    The user's ``seed``, else torch's initial seed (the one ``seed_everything`` sets), as rank 0
    has it, broadcast to the other ranks. Methods keep it in their state, so a resumed run
    reuses it.
    """
    value = seed if seed is not None else torch.initial_seed() % (2**31)
    return int(trainer.strategy.broadcast(value, src=0))


def _experience_of(trainer: L.Trainer) -> Experience:
    datamodule = getattr(trainer, "datamodule", None)
    if not isinstance(datamodule, Experience):
        raise MisconfigurationException(
            "continual-learning callbacks train on one experience at a time: call "
            f"trainer.fit(module, datamodule=experience) with an Experience, got {type(datamodule).__name__}"
        )
    return datamodule
