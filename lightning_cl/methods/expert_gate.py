"""Expert Gate (Aljundi et al., 2017): per new task an expert, from the most related one, and a gate."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.batch import Batch
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback, experience_generator, stream_seed
from lightning_cl.methods.lwf import distillation_loss
from lightning_cl.models.expert_gate import ExpertGateNetwork, GateAutoencoder

__all__ = ["ExpertGate", "expert_gate_network_of"]


def expert_gate_network_of(model: nn.Module) -> ExpertGateNetwork:
    """The :class:`~lightning_cl.models.ExpertGateNetwork` in ``model`` (itself or a submodule).

    Raises:
        ValueError: if ``model`` holds none, or more than one.
    """
    found = [m for m in model.modules() if isinstance(m, ExpertGateNetwork)]
    if len(found) != 1:
        raise ValueError(
            f"ExpertGate needs a model with one lightning_cl.models.ExpertGateNetwork, got "
            f"{type(model).__name__} with {len(found)}: build "
            "ContinualModule(ExpertGateNetwork(input_size=...))"
        )
    return found[0]


class ExpertGate(ContinualCallback):
    r"""Expert Gate: each new task gets a gate, and an expert started from the most related task's.

    Before an experience with a new task label :math:`k` (Aljundi et al., 2017, Sec. 3):

    1. The task's gate, an undercomplete autoencoder, is trained on the task's data alone
       (Sec. 3.1; ``gate_epochs`` passes of Adagrad, as the authors' code).
    2. The relatedness of each earlier task :math:`a` is
       :math:`\mathrm{Rel}(k, a) = 1 - (\mathrm{Er}_a - \mathrm{Er}_k) / \mathrm{Er}_k` (Eq. 2),
       :math:`\mathrm{Er}_a` the mean reconstruction error of task :math:`a`'s gate on the new
       data and :math:`\mathrm{Er}_k` the new gate's own. The most related task has the highest.
    3. The new expert starts as a copy of the most related task's expert (Sec. 3.4; the first
       expert starts fresh) and learns the task. When the relatedness is above
       ``lwf_threshold`` it learns with Learning without Forgetting, the related expert as the
       teacher (the paper's choice for related tasks, Sec. 3.4 and 4.2): :meth:`penalty` adds
       ``lwf_alpha`` times :func:`~lightning_cl.methods.lwf.distillation_loss` between the new
       expert's logits and the related expert's (eval mode, no gradient) on the related task's
       classes, for the batch's samples of the new task. Below it, the expert is fine-tuned.

    Earlier experts and gates are frozen. At evaluation
    :class:`~lightning_cl.models.ExpertGateNetwork` routes each sample, without its task label,
    to the expert whose gate reconstructs it best.

    Choices, stated:

    - The gates work on the inputs (squashed by a sigmoid), not on a pretrained network's
      features as in the paper.
    - ``lwf_threshold=0.85``: Avalanche's ``ExpertGateStrategy(rel_thresh=0.85)``
      (``avalanche/training/supervised/expert_gate.py``: LwF when the relatedness is above it).
      Whether Aljundi et al. (2017) use this value is unchecked: the paper's text was not at
      hand, and the README of the authors' code (``rahafaljundi/Expert-Gate``, MATLAB) says only
      that the relatedness can choose between fine-tuning and LwF, and gives no threshold.
      ``None`` always fine-tunes.
    - ``gate_epochs=0`` is the earlier behaviour of this class: the new gate trains during the
      experience, with the expert, from the reconstruction loss this callback adds
      (``gate_weight`` times the mean squared reconstruction error of the batch's samples of the
      new task), and the most related task is the earlier gate with the smallest error (the same
      task as above, :math:`\mathrm{Er}_k` being common to all); no relatedness value exists
      then, so it needs ``lwf_threshold=None``.
    - The gate trains on the whole task's data on every rank, in batches of the global batch size
      (the experience's times the number of ranks), its initial weights and order drawn from a
      generator seeded by the shared seed and the experience; the relatedness is computed on the
      whole experience: every rank trains the same gate and starts from the same expert, as one
      process would.
    - An experience must bring a new task label (a task-incremental stream).

    Args:
        gate_weight: weight of the gate's reconstruction loss while it trains with the expert
            (``gate_epochs=0``; > 0). The errors of sigmoid-squashed inputs are small (about
            1e-2), so the default, 100, lets the gate learn at a pace like the expert's.
        gate_epochs: passes over the task's data that train its gate before the expert (>= 0).
        gate_lr: Adagrad's learning rate for the gates (> 0).
        lwf_threshold: relatedness above which the new expert learns with LwF, finite
            (``None``: never; Eq. 2's relatedness is at most 1 when the older gate reconstructs
            worse, and below 0 when its error is over twice the new gate's).
        lwf_alpha: weight of LwF's distillation term (>= 0).
        temperature: LwF's softmax temperature (> 0).
        seed: seed of the gates' sample order, an int (``None``: torch's initial seed on rank 0).

    Raises:
        ValueError: for a value outside those ranges (rates and weights finite), a ``seed`` that
            is not an int, or an ``lwf_threshold`` with ``gate_epochs=0``; at set-up, for a model
            without an ``ExpertGateNetwork`` or one whose ``input_size`` is not the data's.
        MisconfigurationException: at set-up, for an experience without a new task label.

    Example:
        >>> gate = ExpertGate()
        >>> gate.lwf_threshold, ExpertGate(gate_epochs=0, lwf_threshold=None).initialised_from
        (0.85, {})
    """

    def __init__(
        self,
        gate_weight: float = 100.0,
        gate_epochs: int = 20,
        gate_lr: float = 0.1,
        lwf_threshold: float | None = 0.85,
        lwf_alpha: float = 1.0,
        temperature: float = 2.0,
        seed: int | None = None,
    ):
        for name, value in (("gate_weight", gate_weight), ("gate_lr", gate_lr), ("temperature", temperature)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(gate_epochs, bool) or not isinstance(gate_epochs, int) or gate_epochs < 0:
            raise ValueError(f"gate_epochs must be an int >= 0, got {gate_epochs!r}")
        if (
            isinstance(lwf_alpha, bool)
            or not isinstance(lwf_alpha, int | float)
            or not 0 <= lwf_alpha < math.inf
        ):
            raise ValueError(f"lwf_alpha must be a finite number >= 0, got {lwf_alpha!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if lwf_threshold is not None:
            if (
                isinstance(lwf_threshold, bool)
                or not isinstance(lwf_threshold, int | float)
                or not math.isfinite(lwf_threshold)
            ):
                # Not bounded to [0, 1]: Eq. 2's relatedness is below 0 where an older gate's
                # error is over twice the new gate's, and above 1 where it is below it.
                raise ValueError(f"lwf_threshold must be a finite number or None, got {lwf_threshold!r}")
            if gate_epochs == 0:
                raise ValueError(
                    f"lwf_threshold={lwf_threshold} needs gate_epochs > 0: the relatedness compares the "
                    "earlier gates with the new task's own gate, trained before the expert; pass "
                    "lwf_threshold=None to fine-tune with gates trained during the experience"
                )
        self.gate_weight = float(gate_weight)
        self.gate_epochs = gate_epochs
        self.gate_lr = float(gate_lr)
        self.lwf_threshold = None if lwf_threshold is None else float(lwf_threshold)
        self.lwf_alpha = float(lwf_alpha)
        self.temperature = float(temperature)
        self.seed = seed
        self.initialised_from: dict[int, int | None] = {}  # task -> the task whose expert it copied
        self.relatedness: dict[int, float | None] = {}  # task -> Rel to that task (Eq. 2)
        self.lwf_from: dict[int, int | None] = {}  # task -> its LwF teacher's task (None: fine-tuned)
        self.task_classes: dict[int, list[int]] = {}
        self.added_in: dict[int, int] = {}  # task -> the experience that added its expert
        self._seed: int | None = None
        self._new: list[int] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(gate_epochs=self.gate_epochs, lwf_threshold=self.lwf_threshold)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        net = expert_gate_network_of(module.model)
        tasks = [int(t) for t in experience.task_labels]
        new = [t for t in tasks if t not in net.tasks]
        if not new:
            raise MisconfigurationException(
                f"ExpertGate adds an expert per new task label, but experience {experience.index} has task "
                f"labels {tasks}, whose experts exist already: use a task-incremental stream, e.g. "
                "SplitDigits(task_labels=True)"
            )
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        data = experience.dataset
        if len(data):
            net.check_input(data.__getitems__([0])[0])  # before any expert or gate is added
        generator = experience_generator(self._seed, experience.index)
        ref = next(net.parameters(), None)
        device = ref.device if ref is not None else torch.device("cpu")
        for task in new:
            rows = torch.nonzero(data.task_labels == task).flatten()
            x = data.__getitems__(rows.tolist())[0].to(device)
            self.task_classes[task] = sorted(int(c) for c in torch.unique(data.targets[rows]))
            gate = None
            if self.gate_epochs > 0:
                with torch.random.fork_rng(devices=[]):  # initialised from the shared generator too
                    torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
                    gate = GateAutoencoder(net.input_size, net.code_size).to(device)
                if ref is not None:
                    gate = gate.to(dtype=ref.dtype)
                gate.fit(
                    x,
                    self.gate_epochs,
                    batch_size=experience.batch_size * trainer.world_size,
                    lr=self.gate_lr,
                    generator=generator,
                )
            scores = self.relatedness_to(net, x, gate)
            related = max(scores, key=lambda a: scores[a]) if scores else None
            if gate is None and net.tasks:
                related = self.most_related(net, x)
            rel = scores.get(related) if related is not None and gate is not None else None
            use_lwf = self.lwf_threshold is not None and rel is not None and rel > self.lwf_threshold
            net.add_expert(task, init_from=related, gate=gate)
            self.initialised_from[task] = related
            self.relatedness[task] = rel
            self.lwf_from[task] = related if use_lwf else None
            self.added_in[task] = experience.index
        self._new = new
        self._set_trainable(net)

    def _set_trainable(self, net: ExpertGateNetwork) -> None:
        # The new experts learn; their gates too while they train with the experts.
        net.set_trainable(experts=self._new, gates=self._new if self.gate_epochs == 0 else ())

    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        # Restored inside an experience: set-up saw a fresh network and a fresh callback. The
        # experts of this experience's tasks, and which of them learn, come from the state.
        self._new = sorted(t for t, e in self.added_in.items() if e == experience.index)
        self._set_trainable(expert_gate_network_of(module.model))

    @staticmethod
    def relatedness_to(
        net: ExpertGateNetwork, x: Tensor, gate: GateAutoencoder | None, batch_size: int = 256
    ) -> dict[int, float]:
        r"""Eq. 2's :math:`\mathrm{Rel}(k, a)` of each earlier task ``a`` to the new task
        (its data ``x``, its gate ``gate``).

        ``{}`` without earlier tasks or without ``gate`` (no :math:`\mathrm{Er}_k`).
        """
        if not net.tasks or gate is None:
            return {}
        with torch.no_grad():
            errors = _mean_errors(net.errors, x, batch_size)
            own = float(_mean_errors(_gate_errors(gate), x, batch_size)[0])
        return {task: 1.0 - (float(e) - own) / own for task, e in zip(net.tasks, errors)}

    @staticmethod
    def most_related(net: ExpertGateNetwork, x: Tensor, batch_size: int = 256) -> int | None:
        """The earlier task whose gate reconstructs ``x`` best (the most related), or ``None``."""
        if not net.tasks:
            return None
        with torch.no_grad():
            errors = _mean_errors(net.errors, x, batch_size)
        return net.tasks[int(errors.argmin())]

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        """The new gates' reconstruction loss (``gate_epochs=0``) plus LwF's term (related tasks).

        ``gate_weight`` times the mean squared reconstruction error of the batch's samples of the
        new tasks, and ``lwf_alpha`` times, for each new task learning with LwF, the distillation
        loss (a mean over its samples in the batch) on its teacher's classes. ``None`` when
        neither applies.
        """
        if not self._new:
            return None
        net = expert_gate_network_of(module.model)
        x, _, t = batch
        total: Tensor | None = None
        if self.gate_epochs == 0:
            errors = torch.cat([net.gates[str(task)].error(x[t == task]) for task in self._new])  # type: ignore[operator]
            if errors.numel() > 0:
                total = self.gate_weight * errors.float().mean()
        for task in self._new:
            teacher_task = self.lwf_from.get(task)
            rows = t == task
            if teacher_task is None or not bool(rows.any()):
                continue
            teacher = net.experts[str(teacher_task)]
            was_training = teacher.training
            teacher.eval()
            with torch.no_grad():
                old = teacher(x[rows])
            teacher.train(was_training)
            columns = self.task_classes[teacher_task]
            term = self.lwf_alpha * distillation_loss(
                logits[rows][:, columns], old[:, columns], self.temperature
            )
            total = term if total is None else total + term
        return total

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._new = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "initialised_from": dict(self.initialised_from),
            "relatedness": dict(self.relatedness),
            "lwf_from": dict(self.lwf_from),
            "task_classes": {k: list(v) for k, v in self.task_classes.items()},
            "added_in": dict(self.added_in),
            "seed": self._seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initialised_from = {int(k): v for k, v in state_dict.get("initialised_from", {}).items()}
        self.relatedness = {int(k): v for k, v in state_dict.get("relatedness", {}).items()}
        self.lwf_from = {int(k): v for k, v in state_dict.get("lwf_from", {}).items()}
        self.task_classes = {int(k): list(v) for k, v in state_dict.get("task_classes", {}).items()}
        self.added_in = {int(k): int(v) for k, v in state_dict.get("added_in", {}).items()}
        self._seed = state_dict.get("seed")


def _gate_errors(gate: GateAutoencoder) -> Any:
    """``gate``'s errors as a ``(B, 1)`` matrix, like ``ExpertGateNetwork.errors``."""
    return lambda chunk: gate.error(chunk).unsqueeze(1)


def _mean_errors(errors_of: Any, x: Tensor, batch_size: int) -> Tensor:
    """The mean over ``x``'s samples of ``errors_of(chunk)`` (``(B, n)`` per chunk), ``(n,)``."""
    return torch.cat([errors_of(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).mean(dim=0)
