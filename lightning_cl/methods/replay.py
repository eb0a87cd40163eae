"""Experience replay: rehearse a memory of past samples in every training batch."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_cl.data.batch_loader import BatchLoader
from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback, experience_generator, step_generator, stream_seed
from lightning_cl.methods.buffers import (
    BUFFER_POLICIES,
    RESERVOIR_ALGORITHMS,
    ReplayBuffer,
    check_memory_size,
)
from lightning_cl.methods.selection import RandomSelection, SelectionStrategy, check_selection

__all__ = ["Replay", "check_one_replay_loader", "step_samples"]


def check_one_replay_loader(trainer: L.Trainer) -> None:
    """Refuse two callbacks of ``trainer`` that each feed the memory loader named ``"replay"``.

    :class:`Replay`, :class:`~lightning_cl.methods.ERACE`, :class:`~lightning_cl.methods.ERAML`,
    :class:`~lightning_cl.methods.SCR` and :class:`~lightning_cl.methods.CoPE` (the classes with
    ``feeds_replay_loader = True``) each add their memory's batches under that name, and a
    training batch holds one loader per name: a second memory would silently replace the first.

    Raises:
        MisconfigurationException: if two or more do; the message names them.
    """
    feeders = [c for c in trainer.callbacks if getattr(c, "feeds_replay_loader", False)]  # type: ignore[attr-defined]
    if len(feeders) > 1:
        names = ", ".join(type(c).__name__ for c in feeders)
        raise MisconfigurationException(
            f"{names} each feed a memory loader named 'replay' (the batch's 'replay' rows); a batch holds "
            "one loader per name, so one memory would silently replace the other: keep one of them (ERACE, "
            "ERAML, SCR and CoPE rehearse a memory of their own; one Replay's mem_size and policy cover what "
            "two would)"
        )


def step_samples(trainer: L.Trainer, batch_idx: int) -> DatasetView | None:
    """The samples of the running training step on every rank, in the order of the pass.

    The experience's own loader (a :class:`~lightning_cl.data.BatchLoader`, the ``"current"``
    loader next to a replay memory's) gives the positions this rank read in batch ``batch_idx``;
    the ranks' positions are gathered and put back in the order of the pass (the loader shards
    it as ``DistributedSampler`` does: rank ``r`` reads every ``world_size``-th position from
    ``r``), and the repeats with which DDP pads the last batch are left out. Every rank gets the
    same view, the one a single process with the same global batch would read.

    Returns:
        A view of the experience's dataset, or ``None`` when the step has no samples.

    Raises:
        MisconfigurationException: if the experience's training loader is not a ``BatchLoader``.
    """
    loaders = trainer.train_dataloader
    current = loaders.get("current") if isinstance(loaders, dict) else loaders
    if not isinstance(current, BatchLoader):
        raise MisconfigurationException(
            "online replay reads the step's samples from the experience's own loader, a "
            f"lightning_cl BatchLoader; the training loader is {type(current).__name__}"
        )
    bs, world = current.batch_size, current.world_size
    order = current.order(current.epoch - 1)
    positions = order[batch_idx * bs : (batch_idx + 1) * bs]
    data = current.dataset
    rank = current.rank
    # Where each position sits in the pass's order before sharding (DDP pads it past `len(data)`).
    slot = (torch.arange(len(positions)) + batch_idx * bs) * world + rank
    rows = torch.stack([data.indices[positions], data.task_labels[positions], slot])
    if world > 1:
        rows = trainer.strategy.all_gather(rows).reshape(world, 3, -1).permute(1, 0, 2).reshape(3, -1).cpu()
    total = current.num_samples if current.num_samples is not None else len(data)
    keep = rows[2] < total
    rows = rows[:, keep][:, rows[2][keep].argsort()]
    if rows.shape[1] == 0:
        return None
    return DatasetView(data.base, rows[0], rows[1], data.base_targets)


class Replay(ContinualCallback):
    """Experience replay with a fixed-size memory (Avalanche's ``ReplayPlugin``; online:
    ``OnlineReplayPlugin`` with its ``ReservoirSamplingBuffer``, as in Chaudhry et al., 2019,
    "On tiny episodic memories in continual learning").

    Each training batch of an experience after the first holds ``batch_size`` current samples
    plus ``mem_batch_size`` samples drawn from the memory: the memory has its own loader,
    whose sampler draws as many memory batches as the experience has batches (cycling through
    the memory in reshuffled passes), and Lightning iterates both loaders together.

    When the memory is updated:

    - ``online=False`` (default): when the experience ends, from that experience's data only.
    - ``online=True`` (task-free): after every training step of each experience's first epoch,
      from that step's samples (all ranks', in stream order; see :func:`step_samples`), with a
      generator seeded from the shared seed and the number of steps offered so far. Memory
      batches of a fit come from the memory as it stood when the fit began; on an online stream
      (:func:`~lightning_cl.data.split_online`) every mini-experience is a fit, so the memory
      is as fresh as the last mini-experience.

    On an online stream, ``"experience_balanced"`` groups by the origin experience
    (``experience.online.origin_experience.index``) where the boundaries are known
    (``access_task_boundaries=True``); where they are hidden, by the mini-experience, the only
    experience the method sees (as Avalanche's ``ExperienceBalancedBuffer``): prefer
    ``"class_balanced"`` or ``"reservoir"`` there.

    The memory holds indices into the stream's dataset, not copies of the samples, so its
    checkpointed state is a few integer tensors.

    Args:
        mem_size: memory size in samples (0 disables replay).
        policy: the memory's grouping, one of ``"experience_balanced"`` (default),
            ``"class_balanced"``, ``"task_balanced"``, ``"reservoir"``; quotas and remainders
            as :class:`~lightning_cl.methods.ReplayBuffer` states.
        mem_batch_size: memory samples per training step (default: the experience's batch size).
        seed: seed of the memory's selection; ``None`` takes torch's initial seed (the one
            ``seed_everything`` sets) on rank 0, so the memory is the same on every DDP rank and
            for any number of devices.
        selection: which samples a group keeps, a
            :class:`~lightning_cl.methods.SelectionStrategy` (default: random); strategies on
            features read the module when the experience ends (``online=False`` only).
        online: update the memory after every training step rather than at experience end.
        reservoir: how an online ``"reservoir"`` memory is filled: ``"R"`` (Vitter's algorithm R,
            default) or ``"priority"`` (Avalanche's random priorities; the same distribution).

    Raises:
        ValueError: for ``mem_size`` not an int >= 0, an unknown policy or reservoir algorithm,
            ``mem_batch_size < 1``, a ``seed`` that is not an int, a selection that is not a
            strategy, or a strategy other than random with ``online=True``.
        MisconfigurationException: at set-up, when another callback of the trainer feeds the
            ``"replay"`` loader too (a second ``Replay``, ``ERACE``, ``ERAML``, ``SCR``, ``CoPE``;
            :func:`check_one_replay_loader`).

    Example:
        >>> replay = Replay(mem_size=200)
        >>> len(replay.buffer)
        0
        >>> Replay(mem_size=200, policy="reservoir", online=True).online
        True
    """

    def __init__(
        self,
        mem_size: int = 200,
        policy: str = "experience_balanced",
        mem_batch_size: int | None = None,
        seed: int | None = None,
        selection: SelectionStrategy | None = None,
        online: bool = False,
        reservoir: str = "R",
    ):
        check_memory_size(mem_size, "Replay", low=0)  # 0: replay off
        if policy not in BUFFER_POLICIES:
            raise ValueError(f"policy must be one of {BUFFER_POLICIES}, got {policy!r}")
        if reservoir not in RESERVOIR_ALGORITHMS:
            raise ValueError(f"reservoir must be one of {RESERVOIR_ALGORITHMS}, got {reservoir!r}")
        if mem_batch_size is not None and (
            not isinstance(mem_batch_size, int) or isinstance(mem_batch_size, bool) or mem_batch_size < 1
        ):
            raise ValueError(f"mem_batch_size must be a positive int or None, got {mem_batch_size!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if not isinstance(online, bool):
            raise ValueError(f"online must be True or False, got {online!r}")
        strategy = check_selection(selection)
        if online and strategy.needs_model:
            raise ValueError(
                f"online=True updates the memory at every step at random; selection={strategy!r} reads "
                "the model's features: use it with online=False"
            )
        self.buffer = ReplayBuffer(mem_size, policy, strategy, reservoir)
        self.mem_batch_size = mem_batch_size
        self.seed = seed
        self.online = online
        self._seed: int | None = None
        self._offers = 0  # steps offered to an online memory so far (the generator's counter)

    feeds_replay_loader = True
    """Its memory's batches come under the loader name ``"replay"`` (one such callback per trainer)."""

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_one_replay_loader(trainer)
        super().setup(trainer, pl_module, stage)

    @property
    def state_key(self) -> str:
        if not self.online and type(self.buffer.selection) is RandomSelection:
            # The key of earlier versions: their checkpoints still load.
            return self._generate_state_key(mem_size=self.buffer.mem_size, policy=self.buffer.policy)
        return self._generate_state_key(
            mem_size=self.buffer.mem_size,
            policy=self.buffer.policy,
            selection=repr(self.buffer.selection),
            online=self.online,
        )

    def _shared_seed(self, trainer: L.Trainer) -> int:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        return self._seed

    def _group(self, experience: Experience) -> int:
        """The experience group: the origin experience on an online stream with known boundaries."""
        origin = experience.online
        if origin is not None and origin.access_task_boundaries:
            return origin.origin_experience.index
        return experience.index

    @override
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._shared_seed(trainer)

    def train_dataloaders(self, experience: Experience, current: Sized) -> dict[str, Iterable[Any]]:
        memory = self.buffer.dataset(experience.dataset)
        if memory is None:
            return {}
        batch_size = self.mem_batch_size or experience.batch_size
        # As many memory batches as the experience has, drawn in whole reshuffled passes.
        draws = max(1, len(current)) * batch_size * experience.trainer.world_size  # type: ignore[union-attr]
        return {"replay": experience.loader(memory, train=True, batch_size=batch_size, num_samples=draws)}

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.online or trainer.current_epoch > 0 or self.buffer.mem_size == 0:
            return  # a stream is seen once: later epochs offer nothing new
        samples = step_samples(trainer, batch_idx)
        if samples is None:
            return
        generator = step_generator(self._shared_seed(trainer), self._offers)
        self.buffer.offer(samples, self._group(trainer.datamodule), generator)  # type: ignore[attr-defined]
        self._offers += 1

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if self.online:
            return
        generator = experience_generator(self._shared_seed(trainer), experience.index)
        self.buffer.update(experience.dataset, self._group(experience), generator, module=module)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "seed": self._seed, "offers": self._offers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
        self._seed = state_dict.get("seed")
        self._offers = int(state_dict.get("offers", 0))
