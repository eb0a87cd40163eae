"""GDumb (Prabhu et al., 2020): a greedy class-balanced memory, and a model trained on it alone."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.data.train_data_source import TrainDataSource
from lightning_cl.methods.base import ContinualCallback, experience_generator, stream_seed
from lightning_cl.methods.buffers import check_memory_size
from lightning_cl.methods.from_scratch import FROM_SCRATCH_INITS, FromScratch, refuse_beside

__all__ = ["GDumb", "greedy_class_balanced"]


def _adds_training_data(callback: Any) -> bool:
    return (
        isinstance(callback, TrainDataSource)
        and type(callback).train_dataloaders is not TrainDataSource.train_dataloaders
    )


def _rehearses(callback: Any) -> bool:
    # Methods that train on a memory of their own besides the batch: through a loss term (MIR,
    # GSS, DER, BiC, ...) or inside their own inner loop (MER, La-MAML). GEM's and A-GEM's
    # memories only constrain the gradient and are not refused.
    from lightning_cl.methods.buffers import ReplayBuffer
    from lightning_cl.methods.episodic import EpisodicMemoryMethod
    from lightning_cl.methods.gss import GSSGreedy
    from lightning_cl.models.optimisation_step import OptimisationStep

    if isinstance(callback, EpisodicMemoryMethod):
        return False
    return isinstance(callback, GSSGreedy | OptimisationStep) or isinstance(
        getattr(callback, "buffer", None), ReplayBuffer
    )


def greedy_class_balanced(
    memory: dict[int, list[int]], targets: Tensor, mem_size: int, order: Tensor, generator: torch.Generator
) -> dict[int, list[int]]:
    """GDumb's greedy class-balancing sampler (Prabhu et al., 2020, Sec. 3, "Sampler").

    Samples arrive in ``order``. A sample of class ``y`` enters while the memory has room;
    once it is full, it enters only if its class holds fewer than ``mem_size / |Y|`` samples
    (``Y``: the classes in the memory, ``y`` included), and then a random sample of the largest
    class (the lowest class id among equally large ones) leaves. The classes end up balanced
    within one sample, and a class with fewer samples than its share leaves its room to the others.

    Args:
        memory: class -> positions held so far (not changed: a new dict is returned).
        targets: the class of every candidate position.
        mem_size: the memory's size.
        order: the candidate positions in arrival order.
        generator: the draws of the samples that leave.

    Returns:
        class -> positions held, each class in order of arrival.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> held = greedy_class_balanced({}, torch.tensor([0, 0, 0, 0, 1, 1]), 4, torch.arange(6), g)
        >>> {c: len(v) for c, v in held.items()}
        {0: 2, 1: 2}
    """
    held = {c: list(v) for c, v in memory.items()}
    total = sum(len(v) for v in held.values())
    labels = targets.tolist()
    for position in order.tolist():
        c = int(labels[position])
        if total < mem_size:
            held.setdefault(c, []).append(position)
            total += 1
            continue
        n_classes = len(held) + (c not in held)
        if len(held.get(c, [])) >= mem_size / n_classes:
            continue
        largest = max(sorted(held), key=lambda k: len(held[k]))
        out = int(torch.randint(len(held[largest]), (1,), generator=generator))
        held[largest].pop(out)
        if not held[largest]:
            del held[largest]
        held.setdefault(c, []).append(position)
    return held


class GDumb(ContinualCallback):
    """GDumb (Prabhu et al., 2020): a greedy class-balanced memory and a model trained on it alone.

    When an experience starts, its samples are offered to the memory by the greedy
    class-balancing sampler (:func:`greedy_class_balanced`), the model is re-initialised, and
    the experience trains on the memory alone (through
    :meth:`~lightning_cl.data.TrainDataSource.current_dataloader`): an epoch is one pass over
    the memory, with the experience's batch size and augmentation, sharded over DDP ranks.

    Choices, stated:

    - The memory holds indices into the stream's dataset (its state: three integer tensors).
      The samples of an experience arrive in a random order drawn from the shared seed and the
      experience (the paper's stream order), so every DDP rank holds the same memory. A sample
      the memory already holds (an experience fitted twice) is not offered again: the memory
      holds each sample once.
    - ``init="reset"`` (default, the paper: a model trained from scratch at every step): each
      layer's ``reset_parameters()`` with a generator seeded from the stream seed and the
      experience. ``init="initial"`` (Avalanche's ``GDumbPlugin``): the weights the model had
      before its first experience. Both reuse :class:`FromScratch`; the optimizer starts afresh
      (``optimizer_policy="keep"`` is refused).
    - The paper's training recipe (SGDR schedule, cutmix, many epochs) is the user's choice of
      ``max_epochs``, ``lr_scheduler`` and ``train_transform``; the paper's test-time masking of
      unseen classes is left out: a growing head (``MLP(head="incremental")``) has no outputs for
      them; a fixed ``"linear"`` head, as in the SplitDigits config, can predict them.
    - Training data other than the memory makes no sense: a callback adding loaders (``Replay``)
      or replacing the training data, or a method rehearsing a memory of its own (MIR, GSS-greedy,
      DER, MER, La-MAML, ...), next to GDumb is refused at set-up.

    Args:
        mem_size: memory size in samples (>= 1).
        init: ``"reset"`` or ``"initial"``.
        seed: seed of the arrival order and of the samples that leave (``None``: torch's
            initial seed on rank 0).

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, an unknown ``init`` or a ``seed`` that is
            not an int.

    Example:
        >>> gdumb = GDumb(mem_size=200)
        >>> len(gdumb), gdumb.init
        (0, 'reset')
    """

    def __init__(self, mem_size: int = 200, init: str = "reset", seed: int | None = None):
        check_memory_size(mem_size, "GDumb")
        if init not in FROM_SCRATCH_INITS:
            raise ValueError(f"init must be one of {FROM_SCRATCH_INITS}, got {init!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.mem_size = mem_size
        self.init = init
        self.seed = seed
        self._scratch = FromScratch(init=init, seed=seed)
        self.indices = torch.zeros(0, dtype=torch.long)  # into the stream's dataset
        self.targets = torch.zeros(0, dtype=torch.long)
        self.task_labels = torch.zeros(0, dtype=torch.long)
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.mem_size, init=self.init)

    def class_counts(self) -> dict[int, int]:
        """How many samples of each class the memory holds."""
        classes, counts = torch.unique(self.targets, return_counts=True)
        return dict(zip(classes.tolist(), counts.tolist()))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            others = [
                type(c).__name__
                for c in trainer.callbacks  # type: ignore[attr-defined]
                if c is not self and (_adds_training_data(c) or _rehearses(c))
            ]
            if others:
                raise MisconfigurationException(
                    f"GDumb trains on its memory alone, so the training data that {', '.join(others)} "
                    "adds would change what GDumb is; use GDumb on its own (or those without GDumb)"
                )
            from lightning_cl.methods.expert_gate import ExpertGate

            refuse_beside(
                trainer,
                self,
                (ExpertGate,),
                "GDumb re-initialises the model at every experience, which would wipe the experts "
                "of the earlier tasks",
            )
        super().setup(trainer, pl_module, stage)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if module.optimizer_policy == "keep":
            raise MisconfigurationException(
                "GDumb re-initialises the model and trains it from scratch on its memory at every "
                "experience, so optimizer_policy='keep' would carry the old weights' momentum into the "
                "fresh ones: use ContinualModule(optimizer_policy='reset')"
            )
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        data = experience.dataset
        self._check_base(data)
        # The memory first (it may refuse the data), then the weights.
        generator = experience_generator(self._seed, experience.index)
        order = torch.randperm(len(data), generator=generator)
        if len(self.indices):  # what the memory holds already is not offered twice
            width = int(torch.cat([data.task_labels, self.task_labels]).max()) + 1
            again = torch.isin(
                data.indices.long() * width + data.task_labels.long(), self.indices * width + self.task_labels
            )
            order = order[~again[order]]
        n_held = len(self.indices)
        # Candidates: the memory's samples (positions 0..n_held-1), then the experience's.
        targets = torch.cat([self.targets, data.targets])
        memory: dict[int, list[int]] = {}
        for position, c in enumerate(self.targets.tolist()):
            memory.setdefault(int(c), []).append(position)
        held = greedy_class_balanced(memory, targets, self.mem_size, order + n_held, generator)
        chosen = torch.tensor([p for c in sorted(held) for p in held[c]], dtype=torch.long)
        indices = torch.cat([self.indices, data.indices])
        task_labels = torch.cat([self.task_labels, data.task_labels])
        self.indices, self.targets, self.task_labels = indices[chosen], targets[chosen], task_labels[chosen]
        self._scratch.on_experience_start(trainer, module, experience)

    def current_dataloader(self, experience: Experience) -> Iterable[Any] | None:
        return experience.loader(self.memory(experience.dataset), train=True)

    def memory(self, data: DatasetView) -> DatasetView:
        """The memory as a view of ``data``'s dataset (any view of the stream's dataset).

        Raises:
            ValueError: if the memory's indices point to other labels there (another benchmark).
        """
        self._check_base(data)
        return DatasetView(data.base, self.indices, self.task_labels, data.base_targets)

    def _check_base(self, data: DatasetView) -> None:
        if not len(self.indices):
            return
        n = len(data.base_targets)
        if int(self.indices.max()) >= n or not torch.equal(data.base_targets[self.indices], self.targets):
            raise ValueError(
                "GDumb's memory holds samples with other labels than this data's: the experiences come "
                "from another dataset, or the checkpoint belongs to another benchmark or class order"
            )

    def state_dict(self) -> dict[str, Any]:
        scratch = self._scratch.state_dict()
        if self.init == "reset":
            scratch["initial_state"] = None  # a fresh draw at every experience: no copy needed
        return {
            "indices": self.indices.clone(),
            "targets": self.targets.clone(),
            "task_labels": self.task_labels.clone(),
            "seed": self._seed,
            "scratch": scratch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        held = len(state_dict["indices"])
        if held > self.mem_size:
            raise ValueError(
                f"GDumb state holds {held} samples, more than this GDumb's mem_size={self.mem_size}: "
                f"load it into GDumb(mem_size >= {held})"
            )
        self.indices = state_dict["indices"].long()
        self.targets = state_dict["targets"].long()
        self.task_labels = state_dict["task_labels"].long()
        self._seed = state_dict.get("seed")
        self._scratch.load_state_dict(state_dict["scratch"])
