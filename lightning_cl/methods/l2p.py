"""L2P (Wang et al., 2022): learning to prompt a frozen vision transformer, without a memory."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback
from lightning_cl.methods.distributed import all_reduce_tensors
from lightning_cl.models.l2p import PromptPool, PromptSelection, key_matching_loss

__all__ = ["L2P", "prompt_pool_of"]


def prompt_pool_of(model: nn.Module) -> PromptPool:
    """The one :class:`~lightning_cl.models.PromptPool` inside ``model``.

    Raises:
        MisconfigurationException: if ``model`` holds none, or more than one.

    Example:
        >>> from lightning_cl.models import PromptPool
        >>> net = nn.Sequential(PromptPool(embed_dim=4, pool_size=3, prompt_length=1, top_n=1))
        >>> prompt_pool_of(net).pool_size
        3
    """
    pools = [m for m in model.modules() if isinstance(m, PromptPool)]
    if len(pools) != 1:
        found = "no PromptPool" if not pools else f"{len(pools)} PromptPools"
        raise MisconfigurationException(
            f"L2P trains the prompt pool of a prompted transformer, and the model "
            f"({type(model).__name__}) has {found}: use lightning_cl.models.PromptedViT (one pool)"
        )
    return pools[0]


class L2P(ContinualCallback):
    r"""Learning to Prompt (Wang et al., CVPR 2022), with :class:`~lightning_cl.models.PromptedViT`.

    The model's transformer is frozen; its prompt pool picks prompts for each input by matching
    the frozen model's query with learnable keys (:class:`~lightning_cl.models.PromptPool`). This
    callback adds what the training objective needs (Sec. 4.3, Eq. 5):

    .. math::
        \mathcal L = \mathcal L_{CE}\big(g(f(x_p)), y\big)
        + \lambda \frac1B \sum_b \sum_{i \in K_{x_b}} \big(1 - \cos(q(x_b), k_i)\big)

    - the surrogate key-matching loss (:func:`~lightning_cl.models.key_matching_loss`), a
      :meth:`penalty` of weight ``sim_coefficient`` (:math:`\lambda`), logged as
      ``train/penalty/l2p``;
    - class masking (``use_mask``, the paper's class-incremental training and the authors'
      ``train_mask``): in training, the logits of classes outside the current experience are
      ``mask_value`` (:math:`-\infty`, as in the authors' code and Avalanche), so the
      cross-entropy neither raises nor lowers them. Rows of other loaders (a
      :class:`~lightning_cl.methods.Replay` memory: the paper's L2P-R) are left unmasked, as
      the authors' ``replay_no_mask``. The masked cross-entropy is the task loss of the step
      (:meth:`task_loss`), so L2P cannot be combined with another callback that replaces it
      (ER-ACE, iCaRL, ...): that is refused at set-up, naming both.
    - ``diversify`` (Sec. 4.2, Eq. 4, for streams whose experiences are tasks): from the second
      experience on, training picks prompts by the key distance times each prompt's frequency
      over the earlier experiences, so prompts used less are chosen for new tasks; evaluation
      keeps the plain choice.

    Whatever ``diversify``, the callback counts how often each prompt was chosen in training
    (summed over DDP ranks at each experience's end): :attr:`counts` (the paper's prompt
    histogram, Fig. 4). No memory of samples is kept. Test-time prediction uses no task label.

    Defaults are the paper's; Avalanche's ``LearningToPrompt`` uses the same :math:`\lambda`
    (``sim_coefficient=0.1``, the PyTorch reproduction's ``pull_constraint_coeff``; the authors'
    JAX config uses 1.0) and masking, with a pool of 20. The paper trains with Adam
    (:math:`\beta = (0.9, 0.999)`, constant learning rate 0.03), reset at each experience:
    ``ContinualModule(optimizer=partial(torch.optim.Adam, lr=0.03))``.

    The method rests on the frozen feature: its queries must tell the experiences apart and its
    class rows, trained under the mask one experience at a time, must be comparable at test. On
    a small ViT pretrained on the UCI digits (``PromptedViT(pretrained_file=...)``; its feature's
    joint linear accuracy on MNIST 0.74) class-incremental SplitMNIST gives 0.21, below the
    frozen linear head with this masking alone (0.27): ``benchmarks/l2p_pretrained.md``.

    Args:
        sim_coefficient: :math:`\lambda` (>= 0).
        use_mask: mask the logits of classes outside the current experience in training.
        mask_value: the masked logits' value (:math:`-\infty`; a finite value such as -1000
            keeps a label-smoothed criterion finite).
        diversify: the frequency-weighted prompt choice of Eq. 4.

    Raises:
        ValueError: for a negative or non-finite ``sim_coefficient``, a ``mask_value`` that is
            not a number, or a ``use_mask`` / ``diversify`` that is not a bool.
        MisconfigurationException: at set-up, for a model without exactly one
            :class:`~lightning_cl.models.PromptPool`.

    Example:
        >>> l2p = L2P(sim_coefficient=0.5)
        >>> l2p.sim_coefficient, l2p.use_mask, l2p.counts is None
        (0.5, True, True)
    """

    def __init__(
        self,
        sim_coefficient: float = 0.1,
        use_mask: bool = True,
        mask_value: float = float("-inf"),
        diversify: bool = False,
    ):
        if (
            not isinstance(sim_coefficient, int | float)
            or isinstance(sim_coefficient, bool)
            or not math.isfinite(sim_coefficient)
            or sim_coefficient < 0
        ):
            raise ValueError(f"sim_coefficient must be a finite number >= 0, got {sim_coefficient!r}")
        if not isinstance(mask_value, int | float) or isinstance(mask_value, bool) or math.isnan(mask_value):
            raise ValueError(f"mask_value must be a number (float('-inf') by default), got {mask_value!r}")
        for flag, value in (("use_mask", use_mask), ("diversify", diversify)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be a bool (True or False), got {value!r}")
        self.sim_coefficient = float(sim_coefficient)
        self.use_mask = bool(use_mask)
        self.mask_value = float(mask_value)
        self.diversify = bool(diversify)
        self.counts: Tensor | None = None
        """How often each prompt was chosen in training over the finished experiences, ``(M,)``."""
        self._running: Tensor | None = None
        self._classes: Tensor | None = None
        self._selection: PromptSelection | None = None
        self._hook: RemovableHandle | None = None

    # ------------------------------------------------------------------ set-up
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        pool = prompt_pool_of(module.model)
        if self.counts is not None and len(self.counts) != pool.pool_size:
            raise MisconfigurationException(
                f"L2P counted {len(self.counts)} prompts in earlier experiences, but the model's pool "
                f"has {pool.pool_size}: train one model with one L2P callback"
            )
        self._classes = torch.tensor(sorted(int(c) for c in experience.classes_in_this_experience))
        self._running = torch.zeros(pool.pool_size, dtype=torch.long)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._remove_hook()
        self._hook = prompt_pool_of(pl_module.model).register_forward_hook(self._record)  # type: ignore[arg-type]

    def _record(self, pool: nn.Module, inputs: Any, output: PromptSelection) -> None:
        # The first forward of each training step is the step's own (the batch the loss sees).
        if pool.training and self._selection is None:
            self._selection = output

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._selection = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._selection is not None and self._running is not None:
            chosen = self._selection.indices.flatten().cpu()
            self._running += torch.bincount(chosen, minlength=len(self._running))
        self._selection = None

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._selection = None, None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._remove_hook()

    # ------------------------------------------------------------------ the loss
    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        """:math:`\\lambda` times the key-matching loss of this step's selection (a mean over samples)."""
        if self._selection is None or self.sim_coefficient == 0.0:
            return None
        return self.sim_coefficient * key_matching_loss(self._selection)

    def mask_logits(self, logits: Tensor, classes: Tensor) -> Tensor:
        """``logits`` with every column not in ``classes`` set to ``mask_value``.

        Example:
            >>> L2P().mask_logits(torch.zeros(1, 4), torch.tensor([1, 2]))
            tensor([[-inf, 0., 0., -inf]])
        """
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[classes.to(logits.device)[classes < logits.shape[-1]]] = True
        return logits.masked_fill(~keep, self.mask_value)

    def task_loss(
        self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        """The criterion on the logits with the current rows masked to the experience's classes."""
        if not self.use_mask or self._classes is None:
            return None
        current = parts.get("current", slice(0, len(logits)))
        masked = logits.clone()
        masked[current] = self.mask_logits(logits[current], self._classes)
        return module.criterion(masked.float(), batch[1])

    # ------------------------------------------------------------------ experience end
    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        self._remove_hook()
        pool = prompt_pool_of(module.model)
        running = (
            self._running if self._running is not None else torch.zeros(pool.pool_size, dtype=torch.long)
        )
        device = pool.frequency.device
        total = all_reduce_tensors(trainer, {"counts": running.to(device)})["counts"].long().cpu()
        self.counts = total if self.counts is None else self.counts + total
        self._running = None
        if self.diversify and int(self.counts.sum()) > 0:
            with torch.no_grad():
                pool.frequency.copy_((self.counts.double() / self.counts.sum()).to(pool.frequency))

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = state_dict.get("counts")
