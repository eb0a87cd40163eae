"""Experience replay: rehearse a memory of past samples in every training batch."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import Any

import lightning as L

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback, experience_generator, stream_seed
from lightning_cl.methods.buffers import BUFFER_POLICIES, ReplayBuffer

__all__ = ["Replay"]


class Replay(ContinualCallback):
    """Experience replay with a fixed-size memory (Avalanche's ``ReplayPlugin``).

    Each training batch of an experience after the first holds ``batch_size`` current samples
    plus ``mem_batch_size`` samples drawn from the memory: the memory has its own loader,
    whose sampler draws as many memory batches as the experience has batches (cycling through
    the memory in reshuffled passes), and Lightning iterates both loaders together. The
    memory is updated when the experience ends, from that experience's data only.

    The memory holds indices into the stream's dataset, not copies of the samples, so its
    checkpointed state is a few integer tensors.

    Args:
        mem_size: memory size in samples (0 disables replay).
        policy: selection policy, one of ``"experience_balanced"`` (default), ``"class_balanced"``,
            ``"reservoir"``; see :class:`~lightning_cl.methods.buffers.ReplayBuffer`.
        mem_batch_size: memory samples per training step (default: the experience's batch size).
        seed: seed of the memory's selection; ``None`` takes torch's initial seed (the one
            ``seed_everything`` sets) on rank 0, so the memory is the same on every DDP rank and
            for any number of devices.

    Raises:
        ValueError: for ``mem_size`` not an int >= 0, an unknown policy, ``mem_batch_size < 1``
            or a ``seed`` that is not an int.

    Example:
        >>> replay = Replay(mem_size=200)
        >>> len(replay.buffer)
        0
    """

    def __init__(
        self,
        mem_size: int = 200,
        policy: str = "experience_balanced",
        mem_batch_size: int | None = None,
        seed: int | None = None,
    ):
        if not isinstance(mem_size, int) or isinstance(mem_size, bool) or mem_size < 0:
            raise ValueError(f"mem_size must be an int >= 0, got {mem_size!r}")
        if policy not in BUFFER_POLICIES:
            raise ValueError(f"policy must be one of {BUFFER_POLICIES}, got {policy!r}")
        if mem_batch_size is not None and mem_batch_size < 1:
            raise ValueError(f"mem_batch_size must be a positive int or None, got {mem_batch_size!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.buffer = ReplayBuffer(mem_size, policy)
        self.mem_batch_size = mem_batch_size
        self.seed = seed
        self._seed: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.buffer.mem_size, policy=self.buffer.policy)

    def train_dataloaders(self, experience: Experience, current: Sized) -> dict[str, Iterable[Any]]:
        memory = self.buffer.dataset(experience.dataset)
        if memory is None:
            return {}
        batch_size = self.mem_batch_size or experience.batch_size
        # As many memory batches as the experience has, drawn in whole reshuffled passes.
        draws = max(1, len(current)) * batch_size * experience.trainer.world_size  # type: ignore[union-attr]
        return {"replay": experience.loader(memory, train=True, batch_size=batch_size, num_samples=draws)}

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        generator = experience_generator(self._seed, experience.index)
        self.buffer.update(experience.dataset, experience.index, generator)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "seed": self._seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
        self._seed = state_dict.get("seed")
