"""Expert Gate (Aljundi et al., 2017): per new task an expert, from the most related one, and a gate."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.batch import Batch
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.models.expert_gate import ExpertGateNetwork

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
    r"""Expert Gate: each new task gets an expert, started from the most related one, and a gate.

    Before an experience with a new task label (Aljundi et al., 2017, Sec. 3-4):

    - The relatedness of each earlier task :math:`a` to the new task :math:`k` is
      :math:`1 - (\mathrm{Er}_a - \mathrm{Er}_k) / \mathrm{Er}_k`, with :math:`\mathrm{Er}_a`
      the reconstruction error of task :math:`a`'s autoencoder on the new task's data (Eq. 2).
      The most related task is the one with the smallest :math:`\mathrm{Er}_a` (the new task's own
      error :math:`\mathrm{Er}_k` is the same for all :math:`a`), and the new expert starts as a
      copy of its expert (the paper's fine-tuning from the most related expert); the first
      expert starts fresh.
    - The earlier experts and gates are frozen. During the experience the new expert learns
      from the task loss, and the new gate from the reconstruction loss that this callback adds
      (:meth:`penalty`: ``gate_weight`` times the mean squared reconstruction error of the
      batch's samples of the new task; the two share no parameter).

    At evaluation :class:`~lightning_cl.models.ExpertGateNetwork` routes each sample, without
    its task label, to the expert whose gate reconstructs it best.

    Choices, stated:

    - The gates work on the inputs (squashed by a sigmoid), not on a pretrained network's
      features as in the paper, and train with the expert for the experience's epochs (the paper
      trains them beforehand, on their own).
    - The new expert is always fine-tuned from the most related one; the paper switches to LwF
      above a relatedness threshold (left to an ``LwF`` callback in the same list, if wanted).
    - An experience must bring a new task label (a task-incremental stream); the relatedness is
      computed on the whole experience on every rank, so all ranks start from the same expert.

    Args:
        gate_weight: weight of the gate's reconstruction loss in the training loss (> 0). The
            errors of sigmoid-squashed inputs are small (about 1e-2), so the default, 100, lets
            the gate learn at a pace like the expert's with one optimizer.

    Raises:
        ValueError: for a non-positive ``gate_weight``; at set-up, for a model without an
            ``ExpertGateNetwork``.
        MisconfigurationException: at set-up, for an experience without a new task label.

    Example:
        >>> ExpertGate().initialised_from
        {}
    """

    def __init__(self, gate_weight: float = 100.0):
        if isinstance(gate_weight, bool) or not isinstance(gate_weight, int | float) or not gate_weight > 0:
            raise ValueError(f"gate_weight must be a number > 0, got {gate_weight!r}")
        self.gate_weight = float(gate_weight)
        self.initialised_from: dict[int, int | None] = {}
        self._new: list[int] = []

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
        data = experience.dataset
        for task in new:
            related = self.most_related(
                net, data.__getitems__(torch.nonzero(data.task_labels == task).flatten().tolist())[0]
            )
            net.add_expert(task, init_from=related)
            self.initialised_from[task] = related
        self._new = new

    @staticmethod
    def most_related(net: ExpertGateNetwork, x: Tensor, batch_size: int = 256) -> int | None:
        """The earlier task whose gate reconstructs ``x`` best (the most related), or ``None``."""
        if not net.tasks:
            return None
        ref = next(net.parameters())
        with torch.no_grad():
            errors = torch.cat(
                [net.errors(x[i : i + batch_size].to(ref.device)) for i in range(0, len(x), batch_size)]
            )
        return net.tasks[int(errors.mean(dim=0).argmin())]

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        """``gate_weight`` times the new gates' mean reconstruction error on their tasks' samples."""
        if not self._new:
            return None
        net = expert_gate_network_of(module.model)
        x, _, t = batch
        terms = [net.gates[str(task)].error(x[t == task]) for task in self._new]  # type: ignore[operator]
        errors = torch.cat(terms)
        if errors.numel() == 0:
            return None
        return self.gate_weight * errors.float().mean()

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._new = []

    def state_dict(self) -> dict[str, Any]:
        return {"initialised_from": dict(self.initialised_from)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initialised_from = {int(k): v for k, v in state_dict.get("initialised_from", {}).items()}
