"""PackNet (Mallya and Lazebnik, 2018): train, prune, retrain; at test, the weights of the sample's task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.features import resolve_layer
from lightning_cl.methods.from_scratch import FromScratch, refuse_beside
from lightning_cl.methods.gdumb import GDumb
from lightning_cl.models.heads import MultiHeadClassifier
from lightning_cl.models.module import merge_batch

__all__ = ["PackNet"]

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


class PackNet(ContinualCallback):
    """PackNet: each task gets the weights left free by the earlier ones, prunes them, keeps a share.

    Every weight of the model's linear and convolutional layers (outside the output layer)
    belongs to one task or is free. For the experience of a new task (Mallya and Lazebnik,
    2018, Sec. 3):

    1. Train: the free weights learn; the weights of earlier tasks are held at their values
       (restored after every optimizer step), and so, after the first task, are the biases and
       every other parameter outside the output layer (the paper fixes them after the first task).
    2. Prune: at the start of epoch ``max_epochs - post_prune_epochs``, in each layer, the
       fraction ``prune_ratio`` of the free weights with the smallest magnitude is set to zero and
       stays free; the others now belong to this task.
    3. Retrain the task's weights for the last ``post_prune_epochs`` epochs, the pruned ones
       held at zero.

    At validation and test, a sample of task ``k`` is classified with the weights of tasks
    ``<= k`` only: the later tasks' weights are masked to zero (during the batch), so an earlier
    task's outputs are those it had when its training ended, bit for bit. Each task has its own
    output layer (a :class:`~lightning_cl.models.MultiHeadClassifier`): the streams are
    task-incremental.

    Choices, stated:

    - Pruning is per layer, by magnitude, among the free weights (the paper). A task label seen
      before is refused: its weights are fixed.
    - ``post_prune_epochs`` is Avalanche's name for the retraining epochs (its
      ``PackNetPlugin`` also prunes at that epoch); with 0, pruning happens when the experience
      ends and nothing is retrained.
    - The state is one ``uint8`` owner per prunable weight (0: free, ``k``: the ``k``-th task)
      and the tasks' order: an assignment, not a copy of weights (plus each task's batch-norm
      statistics, if the model has batch norm).
    - Batch-norm layers: their affine parameters, like the biases, are fixed after the first
      task, but their running statistics would keep moving while later tasks train. The paper
      masks weights only; here each task keeps the statistics its training left (a few vectors
      per layer and task, in the state), and a sample of task ``k`` is evaluated with task
      ``k``'s, so an earlier task is unchanged bit for bit in a model with batch norm too.
    - An evaluation batch must hold one task label (the test stream's experiences do).
    - The masking is done by this callback: evaluate with a trainer that has it among its
      callbacks (``fit_stream`` tests with the experience's trainer; in the plain loop, call
      ``trainer.test`` on the trainer that fitted).

    Args:
        prune_ratio: the fraction of the free weights pruned after each task, in (0, 1), or one
            per experience (the experience's index picks it; past the end, the last).
        post_prune_epochs: epochs of retraining after pruning (>= 0, fewer than ``max_epochs``).
        head_layer: the name of the output layer, a ``MultiHeadClassifier``.

    Raises:
        ValueError: for a ratio outside (0, 1) or a negative ``post_prune_epochs``; at set-up,
            for a model without ``head_layer``; at evaluation, for a batch of several tasks.
        MisconfigurationException: at set-up, for an output layer that is not a
            ``MultiHeadClassifier``, an experience that is not one new task, ``max_epochs``
            not above ``post_prune_epochs``, or beside ``FromScratch`` or ``GDumb`` (they
            re-initialise the model).

    Example:
        >>> PackNet(prune_ratio=[0.75, 0.5]).ratio(3)
        0.5
    """

    def __init__(
        self,
        prune_ratio: float | Sequence[float] = 0.5,
        post_prune_epochs: int = 1,
        head_layer: str = "head",
    ):
        ratios = [prune_ratio] if isinstance(prune_ratio, int | float) else list(prune_ratio)
        if not ratios or any(
            isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r < 1 for r in ratios
        ):
            raise ValueError(
                f"prune_ratio must be a number in (0, 1) or a non-empty list of them, got {prune_ratio!r}"
            )
        if (
            isinstance(post_prune_epochs, bool)
            or not isinstance(post_prune_epochs, int)
            or post_prune_epochs < 0
        ):
            raise ValueError(f"post_prune_epochs must be an int >= 0, got {post_prune_epochs!r}")
        self.prune_ratio = prune_ratio
        self._ratios = [float(r) for r in ratios]
        self.post_prune_epochs = post_prune_epochs
        self.head_layer = head_layer
        self.owners: dict[str, Tensor] = {}
        self.tasks: list[int] = []
        self.pruned = False
        self._task: int | None = None
        self._frozen: list[tuple[nn.Parameter, bool]] = []
        self._trainable: dict[str, Tensor] = {}
        self._fixed: dict[str, Tensor] = {}
        self._masked: dict[str, Tensor] = {}
        self.norm_statistics: dict[int, dict[str, Tensor]] = {}
        """Per trained task label, the running batch-norm statistics its training left (by buffer name)."""
        self._swapped: dict[str, Tensor] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            prune_ratio=str(self.prune_ratio), post_prune_epochs=self.post_prune_epochs
        )

    def ratio(self, experience_index: int) -> float:
        """The pruning fraction of experience ``experience_index``."""
        return self._ratios[min(int(experience_index), len(self._ratios) - 1)]

    def prunable(self, model: nn.Module) -> dict[str, Tensor]:
        """The weights PackNet assigns to tasks, by ``named_parameters`` name (outside the output layer)."""
        head = self.head_layer
        return {
            f"{name}.weight" if name else "weight": module.weight
            for name, module in model.named_modules()
            if isinstance(module, _PRUNABLE) and not (name == head or name.startswith(f"{head}."))
        }

    def statistics(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's running normalisation statistics outside the output layer, by buffer name."""
        head = self.head_layer
        return {
            name: buffer
            for name, buffer in model.named_buffers()
            if name.rsplit(".", 1)[-1] in _NORM_STATISTICS
            and not (name.startswith(f"{head}.") or name == head)
        }

    def _owner_id(self, task: int) -> int:
        return self.tasks.index(task) + 1 if task in self.tasks else len(self.tasks) + 1

    # ------------------------------------------------------------------ experience hooks
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        refuse_beside(
            trainer,
            self,
            (FromScratch, GDumb),
            "re-initialising the model would wipe the weights the earlier tasks own",
        )
        model: nn.Module = module.model
        if not isinstance(resolve_layer(model, self.head_layer), MultiHeadClassifier):
            raise MisconfigurationException(
                f"PackNet needs a task-incremental model whose output layer {self.head_layer!r} is a "
                "MultiHeadClassifier (e.g. MLP(head='multihead')): one head per task, as the paper"
            )
        tasks = [int(t) for t in experience.task_labels]
        if len(tasks) == 1 and tasks[0] in self.tasks and experience.index < len(self.tasks):
            raise MisconfigurationException(
                f"PackNet trained task {tasks[0]} already and fixed its weights; experience "
                f"{experience.index} (fitted again?) would have nothing left to train: fit each "
                "experience of a task-incremental stream once, in order"
            )
        if len(tasks) != 1 or tasks[0] in self.tasks:
            raise MisconfigurationException(
                f"PackNet trains one new task per experience, but experience {experience.index} has task "
                f"labels {tasks} (tasks trained: {self.tasks}): use a task-incremental stream, e.g. "
                "SplitDigits(task_labels=True)"
            )
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs <= self.post_prune_epochs:
            raise MisconfigurationException(
                f"PackNet prunes {self.post_prune_epochs} epochs before the end of each experience: "
                f"Trainer(max_epochs=...) must be above post_prune_epochs, got max_epochs={max_epochs}"
            )
        self._task = tasks[0]
        for name, weight in self.prunable(model).items():
            if name not in self.owners:
                self.owners[name] = torch.zeros(weight.shape, dtype=torch.uint8)
        self._freeze(model)
        self.pruned = False

    def _freeze(self, model: nn.Module) -> None:
        """After the first task, only the prunable weights (the free ones: `_hold`) and the new head learn."""
        self._release()
        if self.tasks:
            prunable = {id(p) for p in self.prunable(model).values()}
            heads = cast(MultiHeadClassifier, resolve_layer(model, self.head_layer)).heads
            if str(self._task) in heads:  # restored inside an experience: its head exists
                prunable |= {id(p) for p in heads[str(self._task)].parameters()}
            for param in model.parameters():
                if id(param) not in prunable:
                    self._frozen.append((param, param.requires_grad))
                    param.requires_grad_(False)

    def _release(self) -> None:
        for param, flag in reversed(self._frozen):
            param.requires_grad_(flag)
        self._frozen = []

    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        # Restored inside an experience: set-up froze with the state of a fresh callback (no task
        # trained); freeze with the restored tasks. The phase (`pruned`) came with the state, and
        # `on_fit_start` holds the weights of that phase.
        self._freeze(module.model)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._hold(pl_module.model)  # type: ignore[arg-type]

    def _hold(self, model: nn.Module) -> None:
        """What trains from now on: the free weights, or (after pruning) this task's own."""
        current = self._owner_id(int(self._task or 0))
        self._trainable, self._fixed = {}, {}
        for name, weight in self.prunable(model).items():
            owners = self.owners[name].to(weight.device)
            self._trainable[name] = owners == (current if self.pruned else 0)
            self._fixed[name] = weight.detach().clone()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.pruned and trainer.current_epoch >= int(trainer.max_epochs or 0) - self.post_prune_epochs:
            self.prune(pl_module.model, pl_module.current_experience or 0)  # type: ignore[arg-type]
            self._hold(pl_module.model)  # type: ignore[arg-type]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        with torch.no_grad():
            for name, weight in self.prunable(pl_module.model).items():  # type: ignore[arg-type]
                trainable = self._trainable.get(name)
                if trainable is not None:
                    weight.copy_(torch.where(trainable, weight, self._fixed[name]))

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if not self.pruned:
            self.prune(module.model, experience.index)
        assert self._task is not None
        self.norm_statistics[self._task] = {
            name: value.detach().cpu().clone() for name, value in self.statistics(module.model).items()
        }
        self.tasks.append(self._task)
        self.pruned, self._task = False, None
        self._release()
        self._trainable, self._fixed = {}, {}

    def prune(self, model: nn.Module, experience_index: int) -> None:
        """Step 2: in each layer, zero the smallest free weights; the rest go to the current task."""
        ratio, current = self.ratio(experience_index), self._owner_id(int(self._task or 0))
        with torch.no_grad():
            for name, weight in self.prunable(model).items():
                owners = self.owners[name]
                free = (owners == 0).to(weight.device)
                values = weight.detach().abs()[free]
                n_pruned = round(ratio * values.numel())
                keep = free.clone()
                if n_pruned > 0:
                    # The n_pruned smallest magnitudes (ties broken by position, the same on every rank).
                    order = torch.argsort(values, stable=True)[:n_pruned]
                    positions = torch.nonzero(free.flatten()).flatten()[order]
                    keep.view(-1)[positions] = False
                    weight.view(-1)[positions] = 0.0
                owners[keep.cpu()] = current
        self.pruned = True

    # ------------------------------------------------------------------ evaluation: the task's weights
    def _mask_for(self, pl_module: L.LightningModule, batch: Any) -> None:
        _, _, t = merge_batch(batch)
        tasks = torch.unique(t).tolist()
        if len(tasks) != 1:
            raise ValueError(
                "PackNet evaluates one task per batch (its weights depend on the task), got task "
                f"labels {tasks}"
            )
        task = int(tasks[0])
        owner = self._owner_id(task) if task in self.tasks or task == self._task else len(self.tasks)
        with torch.no_grad():
            for name, weight in self.prunable(pl_module.model).items():  # type: ignore[arg-type]
                owners = self.owners.get(name)
                if owners is None or int(owners.max()) <= owner:
                    continue
                self._masked[name] = weight.detach().clone()
                weight.mul_((owners <= owner).to(weight.device, weight.dtype))
            # The task's own batch-norm statistics (the running task's are the live ones).
            saved = self.norm_statistics.get(task, {}) if task != self._task else {}
            for name, buffer in self.statistics(pl_module.model).items():  # type: ignore[arg-type]
                value = saved.get(name)
                if value is not None and value.shape == buffer.shape:
                    self._swapped[name] = buffer.detach().clone()
                    buffer.copy_(value.to(buffer.device))

    def _unmask(self, pl_module: L.LightningModule) -> None:
        if self._swapped:
            with torch.no_grad():
                for name, buffer in self.statistics(pl_module.model).items():  # type: ignore[arg-type]
                    if name in self._swapped:
                        buffer.copy_(self._swapped[name])
            self._swapped = {}
        if not self._masked:
            return
        with torch.no_grad():
            for name, weight in self.prunable(pl_module.model).items():  # type: ignore[arg-type]
                saved = self._masked.get(name)
                if saved is not None:
                    weight.copy_(saved)
        self._masked = {}

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._mask_for(pl_module, batch)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._unmask(pl_module)

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._mask_for(pl_module, batch)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._unmask(pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._unmask(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "owners": self.owners,
            "tasks": list(self.tasks),
            "pruned": self.pruned,
            "norm_statistics": self.norm_statistics,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.owners = dict(state_dict.get("owners", {}))
        self.tasks = [int(t) for t in state_dict.get("tasks", [])]
        self.pruned = bool(state_dict.get("pruned", False))
        self.norm_statistics = {int(k): dict(v) for k, v in state_dict.get("norm_statistics", {}).items()}
