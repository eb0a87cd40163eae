"""SCR (Mai et al., 2021): supervised contrastive replay with a nearest-class-mean classifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import EXPERIENCE_SEED_STRIDE, Batch, stream_seed, torch_seed
from lightning_cl.methods.distributed import all_reduce_tensors
from lightning_cl.methods.er_ace import _check_common, _ReplayLoss
from lightning_cl.methods.features import capture_features, resolve_layer
from lightning_cl.methods.icarl import nearest_mean_scores, refuse_task_aware
from lightning_cl.methods.selection import HerdingSelection, check_layer_name, check_temperature
from lightning_cl.models.eval_classifier import EvalClassifier

__all__ = ["SCR", "projection_head", "supervised_contrastive_loss"]


def projection_head(width: int, out: int = 128) -> nn.Sequential:
    """SCR's projection head (Mai et al., 2021, after Khosla et al., 2020): ``width -> width -> out``.

    A linear layer, a ReLU and a linear layer, on the encoder's features; the supervised
    contrastive loss is computed on its (normalised) output.

    Example:
        >>> projection_head(160)
        Sequential(
          (0): Linear(in_features=160, out_features=160, bias=True)
          (1): ReLU()
          (2): Linear(in_features=160, out_features=128, bias=True)
        )
    """
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))


def supervised_contrastive_loss(features: Tensor, targets: Tensor, temperature: float = 0.07) -> Tensor:
    r"""The supervised contrastive loss (Khosla et al., 2020, Eq. 2, :math:`\mathcal L^{sup}_{out}`).

    On L2-normalised features :math:`z`, for every anchor :math:`i` with positives :math:`P(i)`
    (the other rows of its class) and :math:`A(i)` all other rows:

    .. math::
        \mathcal L = \frac1{|I|} \sum_{i \in I} \frac{-1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{e^{z_i \cdot z_p / \tau}}{\sum_{a \in A(i)} e^{z_i \cdot z_a / \tau}}

    over the anchors :math:`I` that have a positive (a zero loss, in the graph, when none has).

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> round(float(supervised_contrastive_loss(z, y, temperature=1.0)), 4)
        0.5514
    """
    z = F.normalize(features.float(), dim=1)
    n = len(z)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (targets[:, None] == targets[None, :]) & ~self_mask
    n_pos = positive.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return features.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(1)[anchors] / n_pos[anchors]
    return per_anchor.mean()


class SCR(_ReplayLoss, EvalClassifier):
    r"""SCR, Supervised Contrastive Replay (Mai et al., 2021): the network learns by a supervised
    contrastive loss on the current and memory samples, and classifies by the nearest class mean.

    - **Training**: every step after the first experience holds the current batch and a memory
      batch (a reservoir :class:`Replay` memory). The task loss becomes the supervised
      contrastive loss (:func:`supervised_contrastive_loss`, temperature ``0.07``, the paper's)
      on the projection (:func:`projection_head`) of the features of layer ``feature_layer`` of
      the merged batch and, when ``augment`` is given, of an augmented copy of it (the paper's
      two views): samples of one class attract, all others repel. The output layer is not
      trained.
    - **Classifier** (Sec. 3.2): at validation and test, through
      :class:`~lightning_cl.models.EvalClassifier`, the class of the nearest mean of the memory
      samples' normalised features (:func:`~lightning_cl.methods.nearest_mean_scores`), the means
      computed when an experience ends.

    Choices, stated:

    - The loss is on a projection head, the means on the encoder's features (``feature_layer``),
      as in the paper: ``projection_dim=128`` gives the paper's head, a 2-layer MLP
      ``D -> D -> 128`` with a ReLU (``D`` the features' width; Mai et al.'s reduced ResNet-18
      has ``D = 160``). The head belongs to SCR, not to the model: it is built when the first
      features arrive (seeded, the same on every rank), trained by plain SGD at the model
      optimizer's learning rate with its gradients averaged over the DDP ranks, and
      checkpointed with SCR's state. ``projection_dim=None``: the loss on the encoder's
      features (no head).
    - Without ``augment``, one view: each sample's positives are the other samples of its class
      in the merged batch. The features are taken by one more forward pass per view.
    - The memory (``online``): updated after every step on online streams
      (:func:`~lightning_cl.data.split_online`; the paper is online, with a reservoir), when an
      experience ends otherwise; ``online=True`` / ``False`` forces one or the other.
    - Class-incremental only: the nearest mean is over all classes seen, so a multi-head model
      or task labels other than 0 are refused at set-up
      (:func:`~lightning_cl.methods.icarl.refuse_task_aware`).

    Args:
        mem_size: memory size in samples (>= 1: the class means are the memory's).
        feature_layer: the layer whose output are the features (a ``named_modules()`` name).
        temperature: :math:`\tau` (> 0).
        augment: a batched augmentation ``x -> x'`` for the second view (``None``: one view).
        mem_batch_size: memory samples per step (default: the experience's batch size).
        policy: the memory's selection policy (see :data:`~lightning_cl.methods.BUFFER_POLICIES`).
        seed: seed of the memory's selection and of the head's initialisation (``None``:
            torch's initial seed on rank 0).
        online: when the memory is updated (``None``: per step on online streams, at experience
            end otherwise; ``True`` / ``False``: always per step / at experience end).
        projection_dim: the projection head's output width (the paper: 128), or ``None`` for
            no head.

    Raises:
        ValueError: for ``mem_size`` not an int >= 1, a temperature that is not > 0, an ``augment``
            that is not callable, a non-positive ``mem_batch_size`` or ``projection_dim``, an
            unknown policy or a ``seed`` that is not an int; at set-up, a ``feature_layer`` the
            model does not have.
        MisconfigurationException: at set-up, for a multi-head model or task-labelled data.

    Example:
        >>> scr = SCR(mem_size=200)
        >>> scr.temperature, len(scr.buffer)
        (0.07, 0)
    """

    def __init__(
        self,
        mem_size: int = 200,
        feature_layer: str = "features",
        temperature: float = 0.07,
        augment: Callable[[Tensor], Tensor] | None = None,
        mem_batch_size: int | None = None,
        policy: str = "reservoir",
        seed: int | None = None,
        online: bool | None = None,
        projection_dim: int | None = 128,
    ):
        _check_common(mem_size, seed, "SCR")  # >= 1: SCR classifies by the memory's class means
        if projection_dim is not None and (
            not isinstance(projection_dim, int) or isinstance(projection_dim, bool) or projection_dim < 1
        ):
            raise ValueError(f"projection_dim must be an int >= 1 or None, got {projection_dim!r}")
        check_temperature(temperature)
        check_layer_name(feature_layer, "feature_layer")
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be a callable x -> x' or None, got {augment!r}")
        super().__init__(mem_size, policy, mem_batch_size, seed, online)
        self.projection_dim = projection_dim
        self.head: nn.Module | None = None  # built at the first step (its width is the features')
        self._head_seed: int | None = None
        self.feature_layer = feature_layer
        self.temperature = float(temperature)
        self.augment = augment
        self.class_means = torch.zeros(0, 0)
        self.mean_classes: list[int] = []
        self._features = HerdingSelection(feature_layer)  # its `features()`: the means' features

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            resolve_layer(pl_module.model, self.feature_layer)  # type: ignore[arg-type]
        super().setup(trainer, pl_module, stage)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        refuse_task_aware("SCR", module, experience)
        if self._head_seed is None:
            self._head_seed = stream_seed(trainer, self.replay.seed)
        super().on_experience_start(trainer, module, experience)

    def _projection(self, features: Tensor) -> Tensor:
        if self.projection_dim is None:
            return features
        if self.head is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(torch_seed(int(self._head_seed or 0) + EXPERIENCE_SEED_STRIDE - 1))
                self.head = projection_head(features.shape[1], self.projection_dim)
        self.head.to(features.device)
        return self.head(features.float())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        if self.head is None:
            return
        params = dict(self.head.named_parameters())
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
        if trainer.world_size > 1:
            grads = all_reduce_tensors(trainer, grads, op="mean")
        lr = float(optimizer.param_groups[0]["lr"])
        with torch.no_grad():
            for name, p in params.items():
                p.sub_(lr * grads[name].to(p.dtype))
                p.grad = None

    def task_loss(
        self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        x, y, t = batch
        views = [x] if self.augment is None else [x, self.augment(x)]
        with capture_features(module.model, self.feature_layer) as out:
            for view in views:
                module(view, t)
        features = self._projection(torch.cat(out))
        loss = supervised_contrastive_loss(features, y.repeat(len(views)), self.temperature)
        # The output layer stays in the graph with a zero gradient (DDP expects every parameter).
        return loss + logits.float().sum() * 0.0

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        super().on_experience_end(trainer, module, experience)
        memory = self.buffer.dataset(experience.dataset)
        if memory is None:
            return
        features = F.normalize(self._features.features(memory, module), dim=1)
        targets = memory.targets
        self.mean_classes = torch.unique(targets).tolist()
        self.class_means = torch.stack(
            [F.normalize(features[targets == c].mean(0), dim=0) for c in self.mean_classes]
        )

    def eval_logits(self, module: Any, x: Tensor, t: Tensor) -> Tensor | None:
        if not self.mean_classes:
            return None
        with capture_features(module.model, self.feature_layer) as out:
            module(x, t)
        return nearest_mean_scores(out[-1], self.class_means, self.mean_classes, max(self.mean_classes) + 1)

    def state_dict(self) -> dict[str, Any]:
        head = (
            None
            if self.head is None
            else {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        )
        return {
            **super().state_dict(),
            "class_means": self.class_means.clone(),
            "mean_classes": list(self.mean_classes),
            "head": head,
            "head_seed": self._head_seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.class_means = state_dict["class_means"].float()
        self.mean_classes = [int(c) for c in state_dict["mean_classes"]]
        self._head_seed = state_dict.get("head_seed")
        head = state_dict.get("head")
        if head is None or self.projection_dim is None:
            self.head = None
        else:
            width = int(head["0.weight"].shape[1])
            self.head = projection_head(width, self.projection_dim)
            self.head.load_state_dict(head)
