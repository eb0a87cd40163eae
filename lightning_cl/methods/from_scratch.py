"""From-scratch training: the model re-initialised before every experience (a lower bound)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import EXPERIENCE_SEED_STRIDE, ContinualCallback, stream_seed
from lightning_cl.models.heads import slice_to

__all__ = ["FROM_SCRATCH_INITS", "FromScratch"]

FROM_SCRATCH_INITS = ("initial", "reset")


def _reset_parameters(model: nn.Module, seed: int) -> None:
    """Every layer's own ``reset_parameters()``, drawing from a generator seeded by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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
    its data plus the memory.

    Args:
        init: ``"initial"`` or ``"reset"``.
        seed: seed of the fresh initialisations (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for an unknown ``init``.

    Example:
        >>> FromScratch().init
        'initial'
    """

    def __init__(self, init: str = "initial", seed: int | None = None):
        if init not in FROM_SCRATCH_INITS:
            raise ValueError(f"init must be one of {FROM_SCRATCH_INITS}, got {init!r}")
        self.init = init
        self.seed = seed
        self.initial_state: dict[str, Tensor] | None = None
        self._seed: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(init=self.init)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
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
