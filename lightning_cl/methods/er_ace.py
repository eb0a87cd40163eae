"""ER-ACE (Caccia et al., 2022): replay with an asymmetric cross-entropy on the incoming data."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sized
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.buffers import ReplayBuffer, check_memory_size
from lightning_cl.methods.replay import Replay, check_one_replay_loader

__all__ = ["ERACE", "masked_cross_entropy"]


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Cross-entropy over the classes present in ``targets`` only (ER-ACE's incoming-data loss).

    With :math:`C_{in}` the distinct classes of the batch,

    .. math:: -\frac1B \sum_i \log \frac{e^{z_{i,y_i}}}{\sum_{c \in C_{in}} e^{z_{i,c}}}

    every other unit (earlier classes, classes not seen yet) is left out of the softmax, so the
    incoming data pushes no old class's logit down. Computed in float32.

    Example:
        >>> z = torch.tensor([[2.0, 0.0, 9.0], [0.0, 2.0, 9.0]])
        >>> round(float(masked_cross_entropy(z, torch.tensor([0, 1]))), 4)  # class 2 left out
        0.1269
    """
    present = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    present[targets] = True
    return F.cross_entropy(logits.float().masked_fill(~present, float("-inf")), targets)


def updates_per_step(online: bool | None, experience: Experience) -> bool:
    """Whether a memory with the ``online`` setting is updated after every step on ``experience``.

    ``None`` (the default of the online-replay methods): per step on an online stream
    (:func:`~lightning_cl.data.split_online`, every mini-experience a fit), when the experience
    ends otherwise; ``True`` / ``False``: always per step / always at experience end.
    """
    return experience.online is not None if online is None else online


def check_online(online: Any) -> bool | None:
    """``online`` if it is ``None``, ``True`` or ``False``; else a ``ValueError``."""
    if online is not None and not isinstance(online, bool):
        raise ValueError(f"online must be None, True or False, got {online!r}")
    return online


class _ReplayLoss(ContinualCallback):
    """A replay memory (a :class:`Replay` inside) for methods that replace the task loss."""

    def __init__(
        self,
        mem_size: int,
        policy: str,
        mem_batch_size: int | None,
        seed: int | None,
        online: bool | None = None,
    ):
        self.online = check_online(online)
        self.replay = Replay(mem_size=mem_size, policy=policy, mem_batch_size=mem_batch_size, seed=seed)

    feeds_replay_loader = True
    """Its memory's batches come under the loader name ``"replay"`` (one such callback per trainer)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_one_replay_loader(trainer)
        super().setup(trainer, pl_module, stage)

    @property
    def buffer(self) -> ReplayBuffer:
        """The memory (indices into the stream's dataset)."""
        return self.replay.buffer

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.buffer.mem_size, policy=self.buffer.policy)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self.replay.online = updates_per_step(self.online, experience)
        self.replay.on_experience_start(trainer, module, experience)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.replay.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    #: Draw memory batches from the memory as this experience's end leaves it, its own samples
    #: included (ER-ACE, ER-AML: only the memory's cross-entropy ranks new classes against old).
    replays_current = False

    def train_dataloaders(self, experience: Experience, current: Sized) -> dict[str, Iterable[Any]]:
        if not self.replays_current or self.replay.online:
            return self.replay.train_dataloaders(experience, current)
        # The same draw as `on_experience_end` (same state, same generator), on a copy: the
        # memory itself changes only when the experience has finished.
        ahead = copy.deepcopy(self.replay)
        ahead.on_experience_end(experience.trainer, experience.trainer.lightning_module, experience)  # type: ignore[arg-type, union-attr]
        return ahead.train_dataloaders(experience, current)

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self.replay.on_experience_end(trainer, module, experience)

    def state_dict(self) -> dict[str, Any]:
        return self.replay.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.replay.load_state_dict(state_dict)


def _check_common(mem_size: Any, seed: Any, method: str) -> None:
    check_memory_size(mem_size, method)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


class ERACE(_ReplayLoss):
    r"""ER-ACE (Caccia et al., 2022, "New insights on reducing abrupt representation change in
    online continual learning", Sec. 4, Eq. 3): experience replay whose incoming data sees only its
    own classes.

    Every training step after the first experience holds the current batch :math:`X_{in}` and a
    memory batch :math:`X_{bf}` (a :class:`Replay` memory). The task loss becomes

    .. math::
        \mathcal L = \mathrm{CE}_{C_{in}}(X_{in}) + \mathrm{CE}(X_{bf})

    where :math:`\mathrm{CE}_{C_{in}}` is the cross-entropy over the classes present in the
    current batch only (:func:`masked_cross_entropy`: every other logit, of earlier and of unseen
    classes, is left out of the softmax), and the memory's cross-entropy is over all outputs. The
    incoming classes then do not push the old classes' logits down, the abrupt change of the old
    representations the paper measures. A step without memory rows has the masked term alone.

    Choices, stated:

    - The mask is per batch, the classes present in the incoming batch (the paper, and
      Avalanche's ``ACECriterion``).
    - The two terms are summed (the paper); Avalanche's ``ER_ACE`` averages them: pass
      ``average_terms=True``.
    - The memory is a reservoir over all samples seen (the paper's buffer); Avalanche uses a
      class-balanced memory: ``policy="class_balanced"``.
    - When it is updated (``online``): the paper updates it after every incoming batch (Vitter's
      reservoir, after the step that replayed from it). That is the default on online streams
      (:func:`~lightning_cl.data.split_online`, with or without known boundaries: every
      mini-experience is a fit, and each fit's memory batches come from the memory as the last
      one left it). On a stream of whole experiences the default updates it when an experience
      ends and draws memory batches from the memory as that end will leave it, the experience's
      own samples included (Avalanche's ``ER_ACE`` updates its buffer before the experience):
      a memory of older samples alone, fixed for the fit, would give the new classes no
      cross-entropy against the old ones, so the running experience's classes would never be
      predicted. ``online=True`` / ``False`` forces one or the other.

    Args:
        mem_size: memory size in samples.
        mem_batch_size: memory samples per step (default: the experience's batch size).
        policy: the memory's selection policy (see :data:`~lightning_cl.methods.BUFFER_POLICIES`).
        average_terms: halve the sum of the two terms (Avalanche).
        seed: seed of the memory's selection (``None``: torch's initial seed on rank 0).
        online: update the memory after every step (``True``), when an experience ends
            (``False``), or per step on online streams only (``None``, default).

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, a non-positive ``mem_batch_size``, an unknown
            policy, an ``average_terms`` that is not a bool, a ``seed`` that is not an int or an
            ``online`` that is not ``None`` or a bool.

    Example:
        >>> ace = ERACE(mem_size=200)
        >>> len(ace.buffer), ace.buffer.policy
        (0, 'reservoir')
    """

    def __init__(
        self,
        mem_size: int = 200,
        mem_batch_size: int | None = None,
        policy: str = "reservoir",
        average_terms: bool = False,
        seed: int | None = None,
        online: bool | None = None,
    ):
        _check_common(mem_size, seed, "ERACE")
        if not isinstance(average_terms, bool):
            raise ValueError(f"average_terms must be True or False, got {average_terms!r}")
        super().__init__(mem_size, policy, mem_batch_size, seed, online)
        self.average_terms = average_terms

    replays_current = True

    def task_loss(
        self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        _, y, _ = batch
        current = parts["current"]
        loss = masked_cross_entropy(logits[current], y[current])
        replay = parts.get("replay")
        if replay is None or replay.stop == replay.start:
            return loss
        loss = loss + F.cross_entropy(logits[replay].float(), y[replay])
        return loss / 2 if self.average_terms else loss
