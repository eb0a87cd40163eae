"""The contract every continual-learning method keeps: a Lightning ``Callback`` with CL hooks."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data.batch import Batch
from lightning_cl.data.experience import Experience
from lightning_cl.data.train_data_source import TrainDataSource
from lightning_cl.models.loss_term import LossTerm
from lightning_cl.models.module import ContinualModule, check_new_trainer

__all__ = [
    "EXPERIENCE_SEED_STRIDE",
    "STEP_SEED_STRIDE",
    "Batch",
    "ContinualCallback",
    "experience_generator",
    "step_generator",
    "stream_seed",
    "torch_seed",
]

EXPERIENCE_SEED_STRIDE = 1_000_003
"""Distance between the seeds of successive experiences (a prime, so experience and step seeds never meet)."""
STEP_SEED_STRIDE = 7919
"""Distance between the seeds of successive optimizer steps."""

_TORCH_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def torch_seed(value: int) -> int:
    """``value`` as a seed ``torch.Generator.manual_seed`` accepts.

    A seed in torch's range (``[-2**63, 2**64 - 1]``) is returned as it is, so it draws what it
    always drew; any other int (a large user seed plus the strides above) is taken modulo
    ``2**64``. Every rank maps one value to the same seed.

    Example:
        >>> torch_seed(5), torch_seed(2**64 + 5)
        (5, 5)
    """
    value = int(value)
    low, high = _TORCH_SEEDS
    return value if low <= value <= high else value % 2**64


class ContinualCallback(L.Callback, TrainDataSource, LossTerm):
    """Base class of the CL methods: a Lightning ``Callback`` with the continual-learning hooks.

    A method overrides what it needs:

    - :meth:`penalty` (from :class:`~lightning_cl.models.LossTerm`): a term added to the training
      loss; :class:`~lightning_cl.models.ContinualModule` sums the terms of all its trainer's
      callbacks in ``training_step``.
    - :meth:`train_dataloaders` (from :class:`~lightning_cl.data.TrainDataSource`): extra training
      data (a replay memory), fed by further loaders next to the experience's own; the module
      concatenates the batches.
    - :meth:`task_loss` (from ``LossTerm``), :meth:`current_dataloader` (from ``TrainDataSource``)
      and, for a class that also subclasses :class:`~lightning_cl.models.EvalClassifier`,
      ``eval_logits``: the task loss, the experience's training data and the classifier at
      evaluation put in place of the module's own (ER-ACE, GDumb, iCaRL); at most one callback
      of a trainer may replace each, a second is refused at set-up.
    - :meth:`on_experience_start` / :meth:`on_experience_end`: once per experience, from
      ``setup("fit")`` and ``on_fit_end``. ``on_fit_end`` runs only when the fit finished, so an
      interrupted experience leaves the method's state as it was.
    - :meth:`on_state_restored`: after Lightning loaded this callback's ``state_dict`` from a
      checkpoint inside an experience (``trainer.fit(..., ckpt_path=...)``), before the first
      training batch. Lightning restores callback state *after* ``setup``, so whatever a method
      derives from its state for the running experience (a view of its memory over the
      experience's data, a network rebuilt from saved weights) is rebuilt here. This is the one
      place for it: state itself holds no live objects (a memory is indices, not a dataset).
    - ``state_dict`` / ``load_state_dict``: the method's whole state, in tensors and Python
      values, so it round-trips through a Lightning checkpoint (``torch.load(weights_only=True)``).
      Give the class a :attr:`state_key` when two instances with other settings may share a
      trainer. Two callbacks of a trainer with one ``state_key`` (two ``RAR()``, or one instance
      listed twice) are refused at set-up with a ``ValueError``: a checkpoint holds one state per
      key, so one would silently take the other's. (A ``Trainer(callbacks=[...])`` built with
      both already fails in Lightning's own check; set-up also catches callbacks added later or
      from ``configure_callbacks``.) A method meant to be stacked puts what tells its instances
      apart into its ``state_key``.

    Any Lightning hook (``on_before_optimizer_step`` for gradient surgery, ...) works as in any
    callback. Subclasses that override ``setup``, ``on_fit_start``, ``on_train_start``,
    ``on_fit_end`` or ``on_load_checkpoint`` call ``super()``. Methods combine freely in one callbacks list.

    Example:
        A penalty pulling the weights towards those at the end of the previous experience
        (the model's shape is fixed here; a growing head needs :func:`~lightning_cl.models.slice_to`):

        >>> class L2ToOld(ContinualCallback):
        ...     def __init__(self, strength: float = 1.0):
        ...         self.strength, self.old = strength, {}
        ...     def on_experience_end(self, trainer, module, experience):
        ...         self.old = {n: p.detach().clone() for n, p in module.named_parameters()}
        ...     def penalty(self, module, batch, logits):
        ...         if not self.old:
        ...             return None
        ...         terms = [((p - self.old[n]) ** 2).sum() for n, p in module.named_parameters()]
        ...         return self.strength * sum(terms)
        ...     def state_dict(self):
        ...         return {"old": self.old}
        ...     def load_state_dict(self, state_dict):
        ...         self.old = state_dict["old"]
        >>> L2ToOld().name
        'l2toold'
    """

    _state_restored = False

    needs_optimizer_step: str | None = None
    """What the method does in Lightning's optimizer step (``on_before_optimizer_step``), or ``None``.

    A method that reads or changes the gradient the optimizer uses there (SI's and RWalk's path
    integrals, GEM's and A-GEM's projections) states it here; beside an owner of the
    optimisation step that writes the weights itself (MER, La-MAML without ``sync_update``) it
    would silently do nothing, so that combination is refused at set-up with this text.
    """

    def on_experience_start(
        self, trainer: L.Trainer, module: ContinualModule, experience: Experience
    ) -> None:
        """Called before training on ``experience`` (from ``setup("fit")``, before the optimizer exists)."""

    def on_experience_end(self, trainer: L.Trainer, module: ContinualModule, experience: Experience) -> None:
        """Called after training on ``experience`` finished (from ``on_fit_end``)."""

    def on_state_restored(self, trainer: L.Trainer, module: ContinualModule, experience: Experience) -> None:
        """Called once after Lightning restored this callback's state inside ``experience``.

        Runs in ``on_fit_start`` (or, for strategies that restore after their own set-up, in
        ``on_train_start``): the weights and every callback's state are restored, no batch has
        run. The default does nothing.
        """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        _check_unique_state_key(self, trainer)
        if stage != "fit":
            return
        if not isinstance(pl_module, ContinualModule):
            raise MisconfigurationException(
                f"{type(self).__name__} is a continual-learning callback and needs a ContinualModule, "
                f"got {type(pl_module).__name__}"
            )
        check_new_trainer(trainer)
        self._state_restored = False
        self.on_experience_start(trainer, pl_module, _experience_of(trainer))

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls this right before `load_state_dict` when it restores a checkpoint.
        self._state_restored = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dispatch_restored(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Strategies that restore checkpoints after their own set-up do so after `on_fit_start`.
        self._dispatch_restored(trainer, pl_module)

    def _dispatch_restored(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._state_restored:
            self._state_restored = False
            self.on_state_restored(trainer, pl_module, _experience_of(trainer))  # type: ignore[arg-type]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_experience_end(trainer, pl_module, _experience_of(trainer))  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise ``ValueError`` if ``state_dict`` (from a checkpoint) cannot be loaded into this callback.

        Called on resume before anything is restored, so a state that does not fit is refused
        with nothing changed. The default accepts every state.
        """


def stream_seed(trainer: L.Trainer, seed: int | None) -> int:
    """One base seed for a method's random choices over the whole stream, the same on every rank.

    The user's ``seed``, else torch's initial seed (the one ``seed_everything`` sets), as rank 0
    has it, broadcast to the other ranks. Methods keep it in their state, so a resumed run
    reuses it.
    """
    value = seed if seed is not None else torch.initial_seed() % (2**31)
    return int(trainer.strategy.broadcast(value, src=0))


def experience_generator(seed: int, experience_index: int) -> torch.Generator:
    """A CPU generator for a method's random choices at the end of one experience.

    Every rank that passes the same ``seed`` (from :func:`stream_seed`) and experience draws the
    same numbers, and each experience draws its own.

    Example:
        >>> a = torch.rand(2, generator=experience_generator(1, 3))
        >>> torch.equal(a, torch.rand(2, generator=experience_generator(1, 3)))
        True
    """
    return torch.Generator().manual_seed(torch_seed(seed + EXPERIENCE_SEED_STRIDE * int(experience_index)))


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one training batch's draws (a memory sample), the same on every rank.

    ``step`` numbers the batches over the whole stream (``ContinualModule.draw_index``: the
    optimizer steps, ``global_step_all``, without gradient accumulation), so a resumed run draws
    what the uninterrupted one drew.
    """
    return torch.Generator().manual_seed(torch_seed(seed + STEP_SEED_STRIDE * (int(step) + 1)))


def _check_unique_state_key(callback: ContinualCallback, trainer: L.Trainer) -> None:
    key = callback.state_key
    same = [c for c in trainer.callbacks if c.state_key == key]  # type: ignore[attr-defined]
    if len(same) > 1:
        name = type(callback).__name__
        if all(c is callback for c in same):
            what = f"{name} is listed {len(same)} times in the trainer's callbacks"
        else:
            what = f"{len(same)} callbacks of the trainer share the state_key {key!r} of {name}"
        raise ValueError(
            f"{what}: a checkpoint holds one state per key, so one would take the other's. Pass one {name} "
            "per trainer (instances with other settings get other keys), or, for a method meant to be "
            "stacked, put what tells its instances apart into its state_key"
        )


def _experience_of(trainer: L.Trainer) -> Experience:
    datamodule = getattr(trainer, "datamodule", None)
    if not isinstance(datamodule, Experience):
        raise MisconfigurationException(
            "continual-learning callbacks train on one experience at a time: call "
            f"trainer.fit(module, datamodule=experience) with an Experience, got {type(datamodule).__name__}"
        )
    return datamodule
