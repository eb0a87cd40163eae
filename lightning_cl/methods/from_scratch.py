"""From-scratch training: the model re-initialised before every experience (a lower bound)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import EXPERIENCE_SEED_STRIDE, ContinualCallback, stream_seed, torch_seed
from lightning_cl.models.heads import slice_to

__all__ = ["FROM_SCRATCH_INITS", "FromScratch", "refuse_beside"]

FROM_SCRATCH_INITS = ("initial", "reset")


def refuse_beside(trainer: L.Trainer, owner: object, others: tuple[type, ...], why: str) -> None:
    """Refuse, at set-up, the callbacks of ``trainer`` of a type in ``others`` beside ``owner``.

    Raises:
        MisconfigurationException: naming ``owner``'s type, the others' and ``why``.

    Args:
        trainer: the trainer being set up.
        owner: the callback that refuses.
        others: the types it refuses beside it.
        why: what the combination would break.

    Example:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(callbacks=[FromScratch(), FromScratch(seed=1)])
        >>> try:
        ...     refuse_beside(trainer, trainer.callbacks[0], (FromScratch,), "one is enough")
        ... except MisconfigurationException as error:
        ...     print(error)
        FromScratch cannot be combined with FromScratch in one callbacks list: one is enough
    """
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    found = sorted({type(c).__name__ for c in callbacks if c is not owner and isinstance(c, others)})
    if found:
        raise MisconfigurationException(
            f"{type(owner).__name__} cannot be combined with {', '.join(found)} in one callbacks list: {why}"
        )


def _reset_parameters(model: nn.Module, seed: int) -> None:
    """Every layer's own ``reset_parameters()``, drawing from a generator seeded by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(seed))
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


class FromScratch(ContinualCallback):
    """Train every experience from a freshly initialised model (Avalanche's ``FromScratchTraining``).

    Before each experience after the first, the model's weights go back to an initialisation,
    so an experience's training knows nothing of the earlier ones: with the test stream
    evaluated after each experience, it is the lower bound that any method transferring
    knowledge should beat (and, on its own experience, the upper bound of plasticity).

    Choices, stated:

    - ``init="initial"`` (default, Avalanche's choice): the weights the model had before its
      first experience, copied once (from rank 0 under DDP, so every rank holds the same copy).
      Units that a dynamic head grew since (they did not exist then) get the layer's own fresh
      initialisation, seeded. ``init="reset"``: every layer's ``reset_parameters()`` with a
      generator seeded from the stream seed and the experience: a new random initialisation per
      experience.
    - Floating-point buffers (batch-norm statistics) go back with the weights; other buffers
      (a dynamic head's mask of the classes seen) are left as they are.
    - The optimizer starts afresh at each experience (``ContinualModule``'s default
      ``optimizer_policy="reset"``); ``"keep"`` would carry momentum of the old weights into
      the new ones and is refused at set-up.
    - It re-initialises before the experience's heads grow, so the new classes' units are
      initialised by the head as usual.

    It combines with other methods: with ``Replay``, each experience is trained from scratch on
    its data plus the memory. Beside ``PNN``, ``PackNet`` or ``ExpertGate``, which keep the
    earlier tasks in weights they freeze, it is refused at set-up.

    Args:
        init: ``"initial"`` or ``"reset"``.
        seed: seed of the fresh initialisations (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for an unknown ``init`` or a ``seed`` that is neither an int nor ``None``.
        MisconfigurationException: at set-up, beside ``PNN``, ``PackNet`` or ``ExpertGate``, or
            with ``optimizer_policy="keep"``.

    Example:
        >>> FromScratch().init
        'initial'
    """

    def __init__(self, init: str = "initial", seed: int | None = None):
        if init not in FROM_SCRATCH_INITS:
            raise ValueError(f"init must be one of {FROM_SCRATCH_INITS}, got {init!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.init = init
        self.seed = seed
        self.initial_state: dict[str, Tensor] | None = None
        self._seed: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(init=self.init)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        from lightning_cl.methods.expert_gate import ExpertGate
        from lightning_cl.methods.packnet import PackNet
        from lightning_cl.methods.pnn import PNN

        refuse_beside(
            trainer,
            self,
            (PNN, PackNet, ExpertGate),
            "re-initialising the model would wipe the frozen columns, task weights or experts that "
            "keep the earlier tasks (they forget nothing by construction); use them without FromScratch",
        )
        if module.optimizer_policy == "keep":
            raise MisconfigurationException(
                "FromScratch re-initialises the weights at every experience, so "
                "optimizer_policy='keep' would carry the old weights' optimizer state into the new "
                "ones: use ContinualModule(optimizer_policy='reset')"
            )
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        model: nn.Module = module.model
        if self.initial_state is None and module.current_experience is None:
            # The first experience: the model is at its initialisation; keep a copy of it.
            state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            self.initial_state = trainer.strategy.broadcast(state, src=0) if trainer.world_size > 1 else state
            return
        # (Added to a module that has trained already, there is no initial copy: a fresh reset.)
        self.reinitialize(model, experience.index)

    def reinitialize(self, model: nn.Module, experience_index: int) -> None:
        """Re-initialise ``model`` in place as ``init`` says, for experience ``experience_index``."""
        seed = int(self._seed or 0) + EXPERIENCE_SEED_STRIDE * int(experience_index)
        _reset_parameters(model, seed)
        if self.init == "reset" or self.initial_state is None:
            return
        with torch.no_grad():
            for name, value in model.state_dict(keep_vars=True).items():
                saved = self.initial_state.get(name)
                if saved is None or not value.is_floating_point():
                    continue
                # A head that grew: the units that existed get their initial values.
                slice_to(value, saved.shape).copy_(saved.to(value.device))

    def state_dict(self) -> dict[str, Any]:
        return {"initial_state": self.initial_state, "seed": self._seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial_state = state_dict.get("initial_state")
        self._seed = state_dict.get("seed")
