"""BiC (Wu et al., 2019): distillation, and a bias-correction layer on the new classes' logits."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback, experience_generator, stream_seed
from lightning_cl.methods.buffers import ReplayBuffer, check_memory_size
from lightning_cl.methods.selection import SelectionStrategy
from lightning_cl.models.eval_classifier import EvalClassifier
from lightning_cl.models.heads import MultiHeadClassifier, copy_at_state

__all__ = ["BiC", "bias_correct"]


def bias_correct(
    logits: Tensor, new_classes: Sequence[int], alpha: Tensor | float, beta: Tensor | float
) -> Tensor:
    r"""BiC's bias-correction layer (Wu et al., 2019, Sec. 4.2, Eq. 4).

    .. math:: q_k = \begin{cases} o_k & k \text{ old} \\ \alpha o_k + \beta & k \text{ new} \end{cases}

    Args:
        logits: ``(B, n)`` outputs.
        new_classes: the classes of the last experience.
        alpha: the scale.
        beta: the shift.

    Returns:
        The corrected logits (a new tensor; differentiable in ``alpha`` and ``beta``).

    Example:
        >>> bias_correct(torch.tensor([[1.0, 2.0, 3.0]]), [2], 0.5, -1.0).tolist()
        [[1.0, 2.0, 0.5]]
    """
    if not len(new_classes):
        return logits
    new = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    new[torch.as_tensor(list(new_classes), device=logits.device)] = True
    return torch.where(new, alpha * logits + beta, logits)


class BiC(ContinualCallback, EvalClassifier):
    r"""BiC, Large Scale Incremental Learning (Wu et al., 2019): distillation, and a two-parameter
    bias correction of the new classes' logits trained on held-out data.

    Each experience after the first:

    1. **Split** (Sec. 4.1): ``val_fraction`` of each old class's exemplars and as many samples of
       each new class are held out as a class-balanced validation set (the paper splits the
       exemplars 9:1 into training and validation: ``val_fraction=0.1``); training runs on the
       rest of the experience's data joined with the rest of the memory (through
       :meth:`~lightning_cl.data.TrainDataSource.current_dataloader`). At least one exemplar of
       each class is held out and at least one stays for training (rounding of small memories),
       so each old class needs two exemplars: fewer is refused when the experience starts.
    2. **Training** (Sec. 4.1, Eq. 1-3): the task loss becomes
       :math:`\lambda L_d + (1 - \lambda) L_c`, with :math:`\lambda = n / (n + m)` (``n`` old and
       ``m`` new classes; a class of the running experience is new even if an earlier one held
       it, as when an experience is fitted twice), :math:`L_c` the cross-entropy over the classes
       seen, and
       :math:`L_d = -\sum_{k \le n} \hat\pi_k \log \pi_k` the distillation of the old model's
       outputs at temperature ``T`` on the old classes (the old model with its own bias correction,
       as the paper does).
    3. **Bias correction** (Sec. 4.2, Eq. 4-5), when the experience ends: with the model frozen,
       :math:`\alpha, \beta` (from 1 and 0) minimise the cross-entropy of the corrected logits
       (:func:`bias_correct`) on the validation set; evaluation then classifies with the
       corrected logits (through :class:`~lightning_cl.models.EvalClassifier`).

    Then the memory (a class-balanced :class:`~lightning_cl.methods.ReplayBuffer` of indices)
    takes its share of the experience, and the model with its correction becomes the old model.

    Choices, stated:

    - The bias layer is fitted by full-batch Adam (``bias_steps`` steps, learning rate
      ``bias_lr``) on the validation logits, computed once (the model is frozen): deterministic
      and the same on every DDP rank. The paper trains it with SGD over mini-batches.
    - Exemplars are a random class-balanced subset (the buffer's default); the paper uses
      iCaRL's herding: ``selection=HerdingSelection()``.
    - The first experience has no old classes: plain cross-entropy, no correction.

    Args:
        mem_size: memory size in samples (>= 1).
        val_fraction: share of each old class's exemplars held out (0 < value < 1; paper: 0.1).
        temperature: the distillation temperature ``T`` (paper: 2).
        bias_steps: optimisation steps of the bias layer.
        bias_lr: learning rate of the bias layer.
        selection: the memory's selection strategy (default: random).
        seed: seed of the split and the memory (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, ``val_fraction`` outside (0, 1), a
            non-positive temperature, ``bias_steps`` or ``bias_lr``, or a ``seed`` that is not an int;
            when an experience starts, a memory with fewer than 2 exemplars of an old class.
        MisconfigurationException: at set-up, for a model with a
            :class:`~lightning_cl.models.MultiHeadClassifier` (one head per task).

    Example:
        >>> bic = BiC(mem_size=200)
        >>> float(bic.alpha), float(bic.beta)
        (1.0, 0.0)
    """

    def __init__(
        self,
        mem_size: int = 200,
        val_fraction: float = 0.1,
        temperature: float = 2.0,
        bias_steps: int = 200,
        bias_lr: float = 0.01,
        selection: SelectionStrategy | None = None,
        seed: int | None = None,
    ):
        check_memory_size(mem_size, "BiC")
        if not isinstance(val_fraction, int | float) or not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
        for name, value in (("temperature", temperature), ("bias_lr", bias_lr)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not isinstance(bias_steps, int) or isinstance(bias_steps, bool) or bias_steps < 1:
            raise ValueError(f"bias_steps must be an int >= 1, got {bias_steps!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.buffer = ReplayBuffer(mem_size, "class_balanced", selection=selection)
        self.val_fraction = float(val_fraction)
        self.temperature = float(temperature)
        self.bias_steps = bias_steps
        self.bias_lr = float(bias_lr)
        self.seed = seed
        self.alpha = torch.tensor(1.0)
        self.beta = torch.tensor(0.0)
        self.new_classes: list[int] = []  # the classes the correction applies to
        self.old_classes: list[int] = []  # the classes of the experiences before the running one
        self.held_out = torch.zeros(0, dtype=torch.long)  # indices into the stream's dataset
        self.teacher_state: dict[str, Tensor] | None = None
        self.teacher_bias: dict[str, Any] = {}
        self._teacher: nn.Module | None = None
        self._teacher_takes_tasks = False
        self._seed: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mem_size=self.buffer.mem_size, val_fraction=self.val_fraction)

    # ------------------------------------------------------------------ the split
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if any(isinstance(m, MultiHeadClassifier) for m in module.model.modules()):
            raise MisconfigurationException(
                "BiC corrects the bias of the new classes' logits against the old ones in one output "
                "layer; a MultiHeadClassifier has a head per task: use a single head (class-incremental)"
            )
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        memory = self.buffer.dataset(experience.dataset)
        if memory is None:
            self.held_out = torch.zeros(0, dtype=torch.long)
            return
        generator = experience_generator(self._seed, experience.index)
        held: list[Tensor] = []
        mem_targets = memory.targets
        classes = torch.unique(mem_targets).tolist()
        per_class = [int((mem_targets == c).sum()) for c in classes]
        fewest = min(per_class)
        if fewest < 2:
            poorest = classes[per_class.index(fewest)]
            raise ValueError(
                f"BiC holds out exemplars of every old class for its bias layer and keeps at least one "
                f"per class for training, so each class needs 2 or more; the memory (mem_size="
                f"{self.buffer.mem_size}) holds {fewest} exemplar of class {poorest} "
                f"over {len(classes)} old classes: use mem_size >= {2 * len(classes)}"
            )
        # At least one held out, at least one left for training (the paper: 9:1).
        n_val = min(max(1, round(self.val_fraction * fewest)), fewest - 1)
        for view in (memory, experience.dataset):
            targets = view.targets
            for c in torch.unique(targets).tolist():
                rows = (targets == c).nonzero().flatten()
                take = rows[torch.randperm(len(rows), generator=generator)[:n_val]]
                held.append(view.indices[take])
        self.held_out = torch.cat(held).sort().values

    def _split(self, view: DatasetView) -> tuple[DatasetView, DatasetView]:
        out = torch.isin(view.indices, self.held_out)
        return view.subset((~out).nonzero().flatten()), view.subset(out.nonzero().flatten())

    def current_dataloader(self, experience: Experience) -> Iterable[Any] | None:
        memory = self.buffer.dataset(experience.dataset)
        if memory is None:
            return None
        train_new, _ = self._split(experience.dataset)
        train_old, _ = self._split(memory)
        return experience.loader(DatasetView.concat([train_new, train_old]), train=True)

    # ------------------------------------------------------------------ the loss
    def _teacher_logits(self, module: Any, x: Tensor, t: Tensor) -> Tensor:
        if self._teacher is None:
            assert self.teacher_state is not None
            self._teacher = copy_at_state(module.model, self.teacher_state).eval().requires_grad_(False)
            self._teacher_takes_tasks = "task_labels" in inspect.signature(self._teacher.forward).parameters
        with torch.no_grad():
            z = self._teacher(x, t) if self._teacher_takes_tasks else self._teacher(x)
            bias = self.teacher_bias
            return bias_correct(z, bias.get("classes", []), bias.get("alpha", 1.0), bias.get("beta", 0.0))

    def task_loss(
        self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        # A class of the running experience is learnt from its labels, even if an earlier
        # experience held it too (an experience fitted twice, a class that comes back).
        current = set(module.trainer.datamodule.classes_in_this_experience)
        old_classes = [c for c in self.old_classes if c not in current]
        if self.teacher_state is None or not old_classes:
            return None  # the first experience: plain cross-entropy
        x, y, t = batch
        seen = torch.as_tensor(sorted(module.seen_classes), device=logits.device)
        z = logits.float()
        position = torch.full((z.shape[1],), -1, dtype=torch.long, device=z.device)
        position[seen] = torch.arange(len(seen), device=z.device)
        classification = F.cross_entropy(z[:, seen], position[y])
        old = torch.as_tensor(old_classes, device=z.device)
        teacher = self._teacher_logits(module, x, t).float()[:, old] / self.temperature
        log_p = F.log_softmax(z[:, old] / self.temperature, dim=1)
        distillation = -(F.softmax(teacher, dim=1) * log_p).sum(1).mean()
        lam = len(old) / len(seen)
        return lam * distillation + (1 - lam) * classification

    # ------------------------------------------------------------------ the correction
    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        new = list(experience.classes_in_this_experience)
        if self.teacher_state is not None and len(self.held_out):
            self._fit_bias(module, experience, new)
        else:
            self.alpha, self.beta, self.new_classes = torch.tensor(1.0), torch.tensor(0.0), []
        generator = experience_generator(int(self._seed or 0) + 1, experience.index)
        self.buffer.update(experience.dataset, experience.index, generator, module=module)
        self.old_classes = sorted(set(self.old_classes) | set(new))
        self.teacher_state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self.teacher_bias = {
            "classes": list(self.new_classes),
            "alpha": float(self.alpha),
            "beta": float(self.beta),
        }
        self._teacher = None
        self.held_out = torch.zeros(0, dtype=torch.long)

    def _fit_bias(self, module: Any, experience: Experience, new: list[int]) -> None:
        memory = self.buffer.dataset(experience.dataset)
        assert memory is not None
        val = DatasetView.concat([self._split(experience.dataset)[1], self._split(memory)[1]])
        was_training = module.training
        module.eval()
        chunks, labels = [], []
        try:
            with torch.no_grad():
                for rows in torch.arange(len(val)).split(256):
                    x, y, t = (v.to(module.device) for v in val.__getitems__(rows))
                    chunks.append(module(x, t).float().cpu())
                    labels.append(y.cpu())
        finally:
            module.train(was_training)
        logits, y = torch.cat(chunks), torch.cat(labels)
        seen = torch.as_tensor(sorted(set(self.old_classes) | set(new)))
        position = torch.full((logits.shape[1],), -1, dtype=torch.long)
        position[seen] = torch.arange(len(seen))
        alpha = torch.ones((), requires_grad=True)
        beta = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.Adam([alpha, beta], lr=self.bias_lr)
        with torch.enable_grad():
            for _ in range(self.bias_steps):
                optimizer.zero_grad()
                corrected = bias_correct(logits, new, alpha, beta)
                F.cross_entropy(corrected[:, seen], position[y]).backward()
                optimizer.step()
        self.alpha, self.beta, self.new_classes = alpha.detach(), beta.detach(), new

    def eval_logits(self, module: Any, x: Tensor, t: Tensor) -> Tensor | None:
        if not self.new_classes:
            return None
        return bias_correct(module(x, t), self.new_classes, self.alpha.to(x.device), self.beta.to(x.device))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "alpha": self.alpha.clone(),
            "beta": self.beta.clone(),
            "new_classes": list(self.new_classes),
            "old_classes": list(self.old_classes),
            "held_out": self.held_out.clone(),
            "teacher_state": self.teacher_state,
            "teacher_bias": dict(self.teacher_bias),
            "seed": self._seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
        self.alpha = state_dict["alpha"].float()
        self.beta = state_dict["beta"].float()
        self.new_classes = [int(c) for c in state_dict["new_classes"]]
        self.old_classes = [int(c) for c in state_dict["old_classes"]]
        self.held_out = state_dict["held_out"].long()
        self.teacher_state = state_dict["teacher_state"]
        self.teacher_bias = dict(state_dict["teacher_bias"])
        self._teacher = None
        self._seed = state_dict.get("seed")
