"""AR1* with latent replay (Maltoni and Lomonaco, 2019; Pellegrini et al., 2020)."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import experience_generator, stream_seed
from lightning_cl.methods.cwr import CWRStar, output_linear
from lightning_cl.methods.distributed import all_reduce_tensors
from lightning_cl.methods.slda import modules_up_to
from lightning_cl.models.batch_renorm import (
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenormSettings,
    replace_batch_norm,
)

__all__ = ["AR1", "AR1_FREEZE_MOMENTS"]

AR1_FREEZE_MOMENTS = ("after_first", "always", "never")


class AR1(CWRStar):
    r"""AR1* with latent replay: CWR* on the output layer, a replay memory entering above a frozen layer.

    On top of :class:`CWRStar` (consolidated output weights):

    - After the first experience, the layers up to ``latent_layer`` (the latent replay layer) are
      frozen (Pellegrini et al., 2020, Sec. 3: the layers below the replay layer learn on the
      first batch only); the layers between it and the output layer keep learning.
    - A memory of ``mem_size`` past samples is replayed: every training step adds a memory batch
      of ``mem_batch_size`` samples. When experience :math:`i` (counted from 0) ends,
      :math:`h = \min(\text{mem\_size} / (i + 1), n_i)` random samples of it replace :math:`h`
      random memory entries (the first experience fills it): the paper's Alg. 1 and
      Avalanche's ``AR1``.
    - CWR*'s classes and counts of an experience include the memory's (Avalanche's AR1): the
      output rows of the replayed classes train too, and their consolidation weighs the
      memory's samples.

    Choices, stated:

    - The memory holds indices of samples, and their latent activations are recomputed through
      the frozen layers at every step: the activations the paper stores, without storing them,
      where the layers below the latent layer are frozen (Avalanche stores the activations of
      the first epoch of each experience, while the first experience's layers still learned).
    - The paper's AR1 (Maltoni and Lomonaco, 2019, Sec. 5: CWR* on the output layer, SI on the
      layers below it) is ``[AR1(...), SI(si_lambda=...)]`` in one callbacks list: SI regularises
      what still learns (the layers above the latent layer). Avalanche's ``AR1`` has
      ``ewc_lambda=0``, no SI, by default.
    - Batch renormalisation (Ioffe, 2017), which AR1* uses in place of batch normalisation (Sec.
      7): with ``batch_renorm`` (the default), every ``BatchNorm1d`` / ``BatchNorm2d`` of the model
      becomes a :class:`~lightning_cl.models.BatchRenorm1d` / ``BatchRenorm2d`` at set-up,
      its weights and running moments kept (:func:`~lightning_cl.models.replace_batch_norm`); a
      model without batch normalisation is left as it is. The renormalised layers' parameters and
      buffers are batch normalisation's, so checkpoints load into the unconverted model, which the
      next set-up converts again.
      Under DDP, which gives every rank rank 0's moments at each forward pass, the moments are
      averaged over the ranks when an experience ends, so that they are the same on every rank.
    - The frozen layers' running moments (``freeze_moments``): ``"after_first"`` (default) runs
      the layers up to ``latent_layer`` in eval mode once they are frozen, from the second
      experience on, so that their weights *and* batch-(re)normalisation moments stay as the first
      experience left them and the latent activations of a memory sample do not change (the
      paper's frozen layers, Pellegrini et al., 2020, Sec. 3; the first experience, on a model
      that is not pretrained, trains them in train mode). ``"always"`` also runs them in eval mode
      during the first experience: what the authors' code (``vlomonaco/ar1-pytorch``,
      ``ar1star_lat_replay.py``: ``model.lat_features.eval()`` before every batch) and Avalanche's
      ``AR1._before_training_exp`` (``model.eval()``, then only the layers above the latent layer
      in train mode) do, on a pretrained MobileNet whose moments they keep. ``"never"`` leaves
      them in train mode (their moments follow the current data; this class's earlier behaviour).
      The layers' modes are given back when the experience ends.
    - What is frozen: every parameter of the layers up to ``latent_layer``, batch-norm affine
      parameters included. Avalanche freezes the parameters below ``freeze_below_layer`` except
      those of batch-(re)normalisation layers (``freeze_up_to(..., layer_filter=
      filter_bn_and_brn)``), which keep learning; the authors' code freezes every parameter
      before ``freeze_below_layer`` (``"lat_features.19.bn.beta"``), from the first batch on.
    - From the second experience on, the authors' code and Avalanche build a new SGD optimizer
      with a 20 times lower learning rate (``inc_lr=5e-5`` after ``lr=1e-3``; the same momentum
      0.9 and weight decay 5e-4, its momentum buffers empty) and give the renormalisation layers
      a slower ``momentum`` (5e-5 after 0.01) with :math:`r_{max}, d_{max}` held at their final
      1.25 and 0.5 (``change_brn_pars``). Here: ``inc_lr`` sets every parameter group's learning
      rate when each later experience starts (``ContinualModule(optimizer_policy="reset")``, the
      default, gives the empty momentum buffers), and ``inc_batch_renorm`` replaces the
      renormalisation layers' settings (for the authors' values:
      ``BatchRenormSettings(momentum=5e-5, r_max=1.25, d_max=0.5, warmup_steps=0,
      r_max_steps=0, d_max_steps=0)``). Both default to ``None``: the module's optimizer and the
      ``batch_renorm`` settings throughout.
    - The memory's choices use a generator seeded by the shared seed and the experience, the
      same on every rank.

    Args:
        latent_layer: name of the latent replay layer: it and the layers before it are frozen
            after the first experience.
        mem_size: samples in the memory (>= 1).
        mem_batch_size: memory samples per step (default: the experience's batch size).
        head_layer, init, mean_shift: as :class:`CWRStar`.
        seed: seed of the memory's choices (``None``: torch's initial seed on rank 0).
        batch_renorm: convert the model's batch normalisation to batch renormalisation: ``True``
            (the paper's schedule, :class:`~lightning_cl.models.BatchRenormSettings`), settings of
            one's own, or ``False`` (leave the model as it is).
        freeze_moments: when the layers up to ``latent_layer`` run in eval mode:
            ``"after_first"``, ``"always"`` or ``"never"`` (see above).
        inc_lr: the learning rate of every parameter group from the second experience on
            (``None``: the module's optimizer as built).
        inc_batch_renorm: the renormalisation layers' settings from the second experience on
            (``None``: ``batch_renorm``'s).

    Raises:
        ValueError: for ``mem_size`` or ``mem_batch_size`` below 1, a ``seed`` that is not an
            int or ``None``, at set-up a ``latent_layer`` at or above the output layer (nothing
            left to train), a ``batch_renorm`` or
            ``inc_batch_renorm`` of another type, an unknown ``freeze_moments``, an ``inc_lr``
            that is not a positive number, and as :class:`CWRStar`.
        MisconfigurationException: at set-up, for ``inc_lr`` with a learning-rate scheduler (which
            would rescale its own base rate).

    Example:
        >>> AR1(mem_size=500).mem_size, AR1().freeze_moments
        (500, 'after_first')
    """

    def __init__(
        self,
        latent_layer: str = "features",
        mem_size: int = 1500,
        mem_batch_size: int | None = None,
        head_layer: str = "head",
        init: str = "zero",
        mean_shift: str = "classes",
        seed: int | None = None,
        batch_renorm: bool | BatchRenormSettings = True,
        freeze_moments: str = "after_first",
        inc_lr: float | None = None,
        inc_batch_renorm: BatchRenormSettings | None = None,
    ):
        if not isinstance(batch_renorm, bool | BatchRenormSettings):
            raise ValueError(
                f"batch_renorm must be True, False or a BatchRenormSettings, got {batch_renorm!r}"
            )
        if freeze_moments not in AR1_FREEZE_MOMENTS:
            raise ValueError(f"freeze_moments must be one of {AR1_FREEZE_MOMENTS}, got {freeze_moments!r}")
        if inc_lr is not None and (
            isinstance(inc_lr, bool) or not isinstance(inc_lr, int | float) or not 0 < inc_lr < float("inf")
        ):
            raise ValueError(f"inc_lr must be a positive number or None, got {inc_lr!r}")
        if inc_batch_renorm is not None and not isinstance(inc_batch_renorm, BatchRenormSettings):
            raise ValueError(
                f"inc_batch_renorm must be a BatchRenormSettings or None, got {inc_batch_renorm!r}"
            )
        super().__init__(head_layer=head_layer, init=init, mean_shift=mean_shift, freeze_remaining=False)
        if isinstance(mem_size, bool) or not isinstance(mem_size, int) or mem_size < 1:
            raise ValueError(f"mem_size must be an int >= 1, got {mem_size!r}")
        if mem_batch_size is not None and (
            isinstance(mem_batch_size, bool) or not isinstance(mem_batch_size, int) or mem_batch_size < 1
        ):
            raise ValueError(f"mem_batch_size must be a positive int or None, got {mem_batch_size!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if not isinstance(latent_layer, str):
            raise ValueError(f"latent_layer must be a layer name (str), got {latent_layer!r}")
        self.latent_layer = latent_layer
        self.mem_size = mem_size
        self.mem_batch_size = mem_batch_size
        self.seed = seed
        self.batch_renorm = batch_renorm
        self.freeze_moments = freeze_moments
        self.inc_lr = None if inc_lr is None else float(inc_lr)
        self.inc_batch_renorm = inc_batch_renorm
        self.indices = torch.zeros(0, dtype=torch.long)  # into the stream's dataset
        self.memory_task_labels = torch.zeros(0, dtype=torch.long)
        self._seed: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(latent_layer=self.latent_layer, mem_size=self.mem_size)

    def memory(self, data: DatasetView) -> DatasetView | None:
        """The memory as a view of ``data``'s dataset (``None`` while it is empty)."""
        if len(self.indices) == 0:
            return None
        return DatasetView(data.base, self.indices, self.memory_task_labels, data.base_targets)

    def _check_latent_layer(self, model: nn.Module) -> None:
        """Refuse a latent layer at or above the output layer (nothing would train after experience 0)."""
        head = output_linear(model, self.head_layer)
        lower = {
            id(p) for part in modules_up_to(model, self.latent_layer) for p in part.parameters(recurse=False)
        }
        if any(id(p) in lower for p in head.parameters()) or all(id(p) in lower for p in model.parameters()):
            raise ValueError(
                f"AR1(latent_layer={self.latent_layer!r}) freezes every layer up to and including "
                f"{self.latent_layer!r} after the first experience, the output layer "
                f"(head_layer={self.head_layer!r}) among them, so nothing would be left to train: name a "
                "layer below the output layer (the features' output, e.g. 'features')"
            )

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._check_latent_layer(module.model)  # before the model is converted
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)
        if self.batch_renorm is not False:  # before anything refers to the model's layers
            settings = None if self.batch_renorm is True else self.batch_renorm
            replace_batch_norm(module.model, settings)
        super().on_experience_start(trainer, module, experience)
        model: nn.Module = module.model
        later = self.trained_experiences > 0
        if later and self.inc_batch_renorm is not None:
            for layer in model.modules():
                if isinstance(layer, BatchRenorm1d | BatchRenorm2d):
                    layer.settings = self.inc_batch_renorm
                    layer.momentum = self.inc_batch_renorm.momentum
        self._release_modes()
        lower = modules_up_to(model, self.latent_layer)
        if later:
            for part in lower:
                for param in part.parameters(recurse=False):
                    self._frozen.append((param, param.requires_grad))
                    param.requires_grad_(False)
        if self.freeze_moments == "always" or (self.freeze_moments == "after_first" and later):
            self._hold_eval(lower)
        memory = self.memory(experience.dataset)
        if memory is not None and self._counts is not None:
            held = torch.bincount(memory.targets.long().cpu())
            width = max(len(held), len(self._counts))
            counts = torch.zeros(width, dtype=torch.long)
            counts[: len(self._counts)] += self._counts
            counts[: len(held)] += held
            self._counts = counts
            self._current = sorted(int(c) for c in torch.nonzero(counts > 0).flatten())

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.inc_lr is None or self.trained_experiences == 0:
            return
        if trainer.lr_scheduler_configs:
            raise MisconfigurationException(
                f"AR1(inc_lr={self.inc_lr}) sets the learning rate of the later experiences, which the "
                f"module's scheduler ({type(trainer.lr_scheduler_configs[0].scheduler).__name__}) would "
                "rescale from its own base rate: use inc_lr=None with a scheduler, or no scheduler"
            )
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.inc_lr

    def train_dataloaders(self, experience: Experience, current: Sized) -> dict[str, Iterable[Any]]:
        memory = self.memory(experience.dataset)
        if memory is None:
            return {}
        batch_size = self.mem_batch_size or experience.batch_size
        draws = max(1, len(current)) * batch_size * experience.trainer.world_size  # type: ignore[union-attr]
        return {
            "latent_replay": experience.loader(memory, train=True, batch_size=batch_size, num_samples=draws)
        }

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._release_modes()
        _average_moments(trainer, module.model)
        super().on_experience_end(trainer, module, experience)  # consolidates (and counts this experience)
        generator = experience_generator(int(self._seed or 0), experience.index)
        data = experience.dataset
        i = self.trained_experiences - 1  # this experience, counted from 0
        h = min(self.mem_size // (i + 1), len(data))
        chosen = torch.randperm(len(data), generator=generator)[:h]
        new, tasks = data.indices[chosen].cpu(), data.task_labels[chosen].long().cpu()
        if len(self.indices) == 0:
            self.indices, self.memory_task_labels = new.clone(), tasks.clone()
            return
        slots = torch.randperm(len(self.indices), generator=generator)[:h]
        self.indices, self.memory_task_labels = self.indices.clone(), self.memory_task_labels.clone()
        self.indices[slots] = new[: len(slots)]
        self.memory_task_labels[slots] = tasks[: len(slots)]

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "indices": self.indices,
            "memory_task_labels": self.memory_task_labels,
            "seed": self._seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.indices = state_dict.get("indices", torch.zeros(0, dtype=torch.long))
        self.memory_task_labels = state_dict.get("memory_task_labels", torch.zeros(0, dtype=torch.long))
        self._seed = state_dict.get("seed")


def _average_moments(trainer: L.Trainer, model: nn.Module) -> None:
    """Average the running moments of batch renormalisation over the ranks (a no-op on one device)."""
    if trainer.world_size <= 1:
        return
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BatchRenorm1d | BatchRenorm2d)}
    moments = {f"{n}.{k}": getattr(m, k) for n, m in layers.items() for k in ("running_mean", "running_var")}
    with torch.no_grad():
        for key, value in all_reduce_tensors(trainer, moments, op="mean").items():
            moments[key].copy_(value)
