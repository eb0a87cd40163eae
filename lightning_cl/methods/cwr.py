"""CWR* (Lomonaco and Maltoni, 2017; Lomonaco et al., 2020): consolidated output weights."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import ContinualCallback
from lightning_cl.methods.features import resolve_layer

__all__ = ["CWR_INITS", "CWR_MEAN_SHIFTS", "CWRStar", "output_linear"]

CWR_INITS = ("zero", "consolidated")
CWR_MEAN_SHIFTS = ("classes", "scalar", "none")


def output_linear(model: nn.Module, head_layer: str) -> nn.Linear:
    """The ``nn.Linear`` of ``model``'s output layer ``head_layer`` (itself, or its ``classifier``).

    Raises:
        ValueError: if there is no such layer, or it is neither a ``Linear`` nor has a
            ``classifier`` that is one (an :class:`~lightning_cl.models.IncrementalClassifier`).

    Example:
        >>> from lightning_cl.models import MLP
        >>> output_linear(MLP(input_size=4, hidden_size=3, head="incremental"), "head").out_features
        2
    """
    layer = resolve_layer(model, head_layer)
    linear = layer if isinstance(layer, nn.Linear) else getattr(layer, "classifier", None)
    if not isinstance(linear, nn.Linear):
        raise ValueError(
            f"the output layer {head_layer!r} must be an nn.Linear or an IncrementalClassifier "
            f"(a single head), got {type(layer).__name__}"
        )
    return linear


class CWRStar(ContinualCallback):
    r"""CWR*: train the output weights of the current classes afresh, then fold them into consolidated ones.

    The output layer keeps consolidated weights :math:`cw` (one row per class, the bias as its
    last column) and the number of training samples seen per class, :math:`past_j`. For each
    experience (Lomonaco et al., 2020, Alg. 1, CWR*; the CWR of Lomonaco and Maltoni, 2017,
    CORe50, with CWR+'s mean shift and zero init from Maltoni and Lomonaco, 2019):

    1. The rows of the output layer are set to zero (the temporary weights :math:`tw`); the rows
       of classes not in the experience stay at zero during training, so only the current
       classes learn. After the first experience the rest of the model is frozen (:math:`\bar\Theta`
       learnt on the first batch only).
    2. After training, for each class :math:`j` of the experience, with :math:`cur_j` its number
       of samples and :math:`\overline{tw}` the mean of the current classes' rows,

       .. math::
           w_j = \sqrt{past_j / cur_j}, \qquad
           cw_j \leftarrow \frac{cw_j\, w_j + (tw_j - \overline{tw})}{w_j + 1}, \qquad
           past_j \mathrel{+}= cur_j .

    3. The output layer is set to :math:`cw` for every class seen: evaluation uses the
       consolidated weights.

    Choices, stated:

    - ``init="zero"`` (the paper's CWR+/CWR* zero init): the current classes' rows start at zero;
      ``"consolidated"`` (Avalanche's ``CWRStarPlugin``): a class seen before starts from its
      consolidated row.
    - ``mean_shift="classes"``: :math:`\overline{tw}` is the mean row over the current classes (a
      vector, as we read the paper's :math:`avg(tw)`); ``"scalar"`` (Avalanche): the mean of
      all entries of those rows; ``"none"``: no shift.
    - The bias is consolidated with the weights (as one more column). Avalanche consolidates the
      weight matrix only and trains the bias freely.
    - Rows of other classes are held at zero by restoring them after every optimizer step (any
      optimizer, momentum included); their logits are 0 during training. Validation during an
      experience sees these training weights; the test after it sees the consolidated ones.
    - ``freeze_remaining=True`` (the paper, Avalanche's default): every parameter outside the
      output layer is frozen (``requires_grad=False``) from the second experience on; the flags
      are given back when the experience ends. With ``eval_frozen=True`` (default) the frozen
      layers also run in eval mode, so batch normalisation's running moments stay as the first
      experience left them and dropout is off there, as Avalanche's ``CWRStarPlugin`` does
      (``freeze_everything``: ``model.eval()``, then the output layer back in train mode);
      ``False``: they run in train mode (their moments follow the current data).

    Args:
        head_layer: name of the output layer (an ``nn.Linear`` or an ``IncrementalClassifier``).
        init: ``"zero"`` or ``"consolidated"``.
        mean_shift: ``"classes"``, ``"scalar"`` or ``"none"``.
        freeze_remaining: freeze the rest of the model after the first experience.
        eval_frozen: run the frozen layers in eval mode (with ``freeze_remaining``).

    Raises:
        ValueError: for an unknown ``init`` or ``mean_shift``, flags that are not bools; at
            set-up, for a model without a single linear output layer ``head_layer``.

    Example:
        >>> CWRStar().init, CWRStar(mean_shift="scalar").mean_shift
        ('zero', 'scalar')
    """

    def __init__(
        self,
        head_layer: str = "head",
        init: str = "zero",
        mean_shift: str = "classes",
        freeze_remaining: bool = True,
        eval_frozen: bool = True,
    ):
        if init not in CWR_INITS:
            raise ValueError(f"init must be one of {CWR_INITS}, got {init!r}")
        if mean_shift not in CWR_MEAN_SHIFTS:
            raise ValueError(f"mean_shift must be one of {CWR_MEAN_SHIFTS}, got {mean_shift!r}")
        self.head_layer = head_layer
        self.init = init
        self.mean_shift = mean_shift
        if not isinstance(freeze_remaining, bool):
            raise ValueError(f"freeze_remaining must be True or False, got {freeze_remaining!r}")
        self.freeze_remaining = freeze_remaining
        if not isinstance(eval_frozen, bool):
            raise ValueError(f"eval_frozen must be True or False, got {eval_frozen!r}")
        self.eval_frozen = eval_frozen
        self._eval_layers: list[tuple[nn.Module, bool]] = []  # layers put in eval mode, their mode before
        self.consolidated: Tensor | None = None  # (classes, in_features + 1), the bias last
        self.past: Tensor | None = None  # samples trained on per class
        self.trained_experiences = 0
        self._current: list[int] = []
        self._counts: Tensor | None = None
        self._frozen: list[tuple[nn.Parameter, bool]] = []
        self._hold: Tensor | None = None  # rows held at zero during training

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            head_layer=self.head_layer, init=self.init, mean_shift=self.mean_shift
        )

    # ------------------------------------------------------------------ experience hooks
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        model: nn.Module = module.model
        head = output_linear(model, self.head_layer)
        self._current = sorted(int(c) for c in experience.classes_in_this_experience)
        targets = experience.dataset.targets
        self._counts = torch.bincount(targets.long().cpu(), minlength=max(self._current) + 1)
        self._release()
        self._release_modes()
        if self.freeze_remaining and self.trained_experiences > 0:
            head_layer = resolve_layer(model, self.head_layer)
            head_params = {id(p) for p in head_layer.parameters()}
            for param in model.parameters():
                if id(param) not in head_params:
                    self._frozen.append((param, param.requires_grad))
                    param.requires_grad_(False)
            if self.eval_frozen:
                inside = {id(m) for m in head_layer.modules()}
                leaves = [
                    m for m in model.modules() if id(m) not in inside and next(m.children(), None) is None
                ]
                self._hold_eval(leaves)
        del head

    def on_state_restored(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        # Restored inside an experience: set-up ran with the state of a fresh callback, so what it
        # derived (the frozen layers, the classes and counts; AR1's memory classes) is derived again.
        self.on_experience_start(trainer, module, experience)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restoring = self._state_restored
        super().on_fit_start(trainer, pl_module)
        head = output_linear(pl_module.model, self.head_layer)  # type: ignore[arg-type]
        hold = torch.ones(head.out_features, dtype=torch.bool, device=head.weight.device)
        hold[torch.tensor(self._current, device=hold.device)] = False
        self._hold = hold
        if restoring:
            return  # inside an experience: the weights are those it had reached
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            if self.init == "consolidated" and self.consolidated is not None and self.past is not None:
                for c in self._current:
                    if c < len(self.past) and self.past[c] > 0:
                        self._write_row(head, c)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._hold is None:
            return
        head = output_linear(pl_module.model, self.head_layer)  # type: ignore[arg-type]
        with torch.no_grad():
            head.weight[self._hold] = 0.0
            head.bias[self._hold] = 0.0

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        head = output_linear(module.model, self.head_layer)
        self.consolidate(head, self._current, self._counts)
        with torch.no_grad():
            assert self.past is not None
            for c in torch.nonzero(self.past > 0).flatten().tolist():
                if c < head.out_features:
                    self._write_row(head, c)
        self._release()
        self._release_modes()
        self._hold = None
        self.trained_experiences += 1

    def _release(self) -> None:
        """Give the frozen parameters their 'requires_grad' flags back."""
        for param, flag in reversed(self._frozen):
            param.requires_grad_(flag)
        self._frozen = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores each layer's mode after validation; this holds it against any
        # `model.train()` between experience set-up and the epoch.
        for part, _ in self._eval_layers:
            part.eval()

    def _hold_eval(self, layers: list[nn.Module]) -> None:
        """Run ``layers`` in eval mode until the experience ends (their modes recorded)."""
        self._eval_layers = [(part, part.training) for part in layers]
        for part in layers:
            part.eval()

    def _release_modes(self) -> None:
        """Give the layers put in eval mode their modes back."""
        for part, mode in reversed(self._eval_layers):
            part.train(mode)
        self._eval_layers = []

    # ------------------------------------------------------------------ consolidation
    def consolidate(self, head: nn.Linear, classes: list[int], counts: Tensor | None) -> None:
        """Fold the head's rows of ``classes`` into the consolidated weights (step 2 above).

        Args:
            head: the output layer after training.
            classes: the classes trained on (the experience's).
            counts: samples per class in the experience (indexed by class).
        """
        if not classes or counts is None:
            return
        rows = torch.cat([head.weight.detach(), head.bias.detach().unsqueeze(1)], dim=1).double().cpu()
        n, width = head.out_features, rows.shape[1]
        if self.consolidated is None or self.past is None:
            self.consolidated = torch.zeros(n, width, dtype=torch.float64)
            self.past = torch.zeros(n, dtype=torch.long)
        elif len(self.past) < n:  # the head grew
            grown = torch.zeros(n, width, dtype=torch.float64)
            grown[: len(self.past)] = self.consolidated
            self.consolidated = grown
            self.past = torch.cat([self.past, torch.zeros(n - len(self.past), dtype=torch.long)])
        index = torch.tensor(classes)
        tw = rows[index]
        if self.mean_shift == "classes":
            tw = tw - tw.mean(dim=0, keepdim=True)
        elif self.mean_shift == "scalar":
            tw[:, :-1] -= tw[:, :-1].mean()
        for row, c in zip(tw, classes):
            cur = int(counts[c]) if c < len(counts) else 0
            if cur == 0:
                continue
            weight = (float(self.past[c]) / cur) ** 0.5
            self.consolidated[c] = (self.consolidated[c] * weight + row) / (weight + 1.0)
            self.past[c] += cur

    def _write_row(self, head: nn.Linear, c: int) -> None:
        assert self.consolidated is not None
        row = self.consolidated[c].to(head.weight.device, head.weight.dtype)
        head.weight[c] = row[:-1]
        head.bias[c] = row[-1]

    def state_dict(self) -> dict[str, Any]:
        return {
            "consolidated": self.consolidated,
            "past": self.past,
            "trained_experiences": self.trained_experiences,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consolidated = state_dict.get("consolidated")
        self.past = state_dict.get("past")
        self.trained_experiences = int(state_dict.get("trained_experiences", 0))
