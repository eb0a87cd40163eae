"""RAR (Kumari et al., 2022): retrospective adversarial replay on top of a replay method's memory batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.func import functional_call

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import Batch, ContinualCallback, step_generator, stream_seed
from lightning_cl.methods.er_ace import _ReplayLoss
from lightning_cl.methods.features import capture_features, resolve_layer
from lightning_cl.methods.replay import Replay
from lightning_cl.methods.selection import check_layer_name
from lightning_cl.models.loss_term import batch_parts

__all__ = ["RAR", "RAR_ATTACKS", "feature_attack", "mixup_batch", "nearest_other_class", "virtual_parameters"]

RAR_ATTACKS = ("features", "avalanche")
"""RAR's attacks: MI-FGSM matching the features of the nearest current sample of another class (the
authors' code, default), or Avalanche ``RARPlugin``'s signed-gradient step on a cross-entropy label."""


def virtual_parameters(
    module: torch.nn.Module, batch: Batch, lr: float, reduce: Callable[[Tensor], Tensor] | None = None
) -> dict[str, Tensor]:
    r"""The parameters after a virtual SGD step on ``batch``: :math:`\theta' = \theta - \mathrm{lr}\,
    \nabla_\theta \ell(f_\theta(B), y_B)` (the mean cross-entropy; MIR's look-ahead, which RAR attacks).

    The gradient is taken in eval mode with ``torch.autograd.grad`` (the parameters' ``.grad``,
    the optimizer and the mode are left as they were); the result is a dict of detached tensors
    for ``torch.func.functional_call``.

    Args:
        module: the model, called as ``module(x, t)``.
        batch: ``(x, y, t)``.
        lr: the step's learning rate.
        reduce: applied to the flat gradient (an all-reduce mean under DDP: every rank steps alike).

    Returns:
        Parameter name -> virtual value, for the parameters that require a gradient.

    Example:
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear = torch.nn.Linear(2, 2)
        ...     def forward(self, x, t=None):
        ...         return self.linear(x)
        >>> x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
        >>> sorted(virtual_parameters(Net(), (x, y, y * 0), lr=0.1))
        ['linear.bias', 'linear.weight']
    """
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [p for p in module.parameters() if p.requires_grad]
    was_training = module.training
    module.eval()
    try:
        x, y, t = batch
        with torch.enable_grad():
            loss = F.cross_entropy(module(x, t).float(), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        module.train(was_training)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
    if reduce is not None:
        flat = reduce(flat)
    virtual, offset = {}, 0
    for name, p in zip(names, params):
        virtual[name] = (p - lr * flat[offset : offset + p.numel()].view_as(p).to(p.dtype)).detach()
        offset += p.numel()
    return virtual


def nearest_other_class(
    memory_features: Tensor, memory_targets: Tensor, current_features: Tensor, current_targets: Tensor
) -> Tensor:
    """For each memory sample, the nearest current sample (Euclidean, in feature space) of another class.

    Args:
        memory_features: ``(M, D)``.
        memory_targets: ``(M,)``.
        current_features: ``(N, D)``.
        current_targets: ``(N,)``.

    Returns:
        ``(M,)`` positions into the current rows, ``-1`` where every current sample has the memory
        sample's class.

    Example:
        >>> m, c = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.1, 0.0], [1.0, 0.0], [5.0, 0.0]])
        >>> nearest_other_class(m, torch.tensor([0]), c, torch.tensor([0, 1, 2])).tolist()
        [1]
    """
    distance = torch.cdist(memory_features.float(), current_features.float())
    same = memory_targets[:, None] == current_targets[None, :]
    distance = distance.masked_fill(same, float("inf"))
    nearest = distance.argmin(1)
    return torch.where(torch.isfinite(distance.min(1).values), nearest, torch.full_like(nearest, -1))


def feature_attack(
    features: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    momentum: float = 1.0,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    r"""RAR's attack: move ``x`` within an :math:`L_\infty` ball so its features approach ``target``.

    Momentum iterative FGSM (MI-FGSM, Dong et al., 2018) on the feature-matching loss
    :math:`\ell(x') = \| h(x') - h(x_c) \|_2^2` (mean over the batch and the features), with
    :math:`h` the features and :math:`h(x_c)` = ``target``, the features of the nearest current
    sample of another class. From :math:`x'_0 = x`, :math:`g_0 = 0`, each of ``steps`` steps:

    .. math::
        g_{k+1} = \mu g_k + \frac{\nabla_{x'} \ell(x'_k)}{\|\nabla_{x'} \ell(x'_k)\|_1}, \qquad
        x'_{k+1} = \Pi_{\|x' - x\|_\infty \le \epsilon}\big(x'_k - \alpha\,\mathrm{sign}(g_{k+1})\big)

    (the :math:`L_1` norm per sample; :math:`\Pi` clips to the ball, then to ``clamp`` if given).
    Descending the loss moves the sample towards the other class: towards the boundary between
    its class and the current task's.

    Args:
        features: ``x -> (B, D)`` features (of the model being attacked).
        x: ``(B, ...)`` the samples (not changed).
        target: ``(B, D)`` the features to approach.
        epsilon: :math:`\epsilon`, the :math:`L_\infty` radius (>= 0).
        step_size: :math:`\alpha`.
        steps: number of steps.
        momentum: :math:`\mu` (0: I-FGSM).
        clamp: the inputs' range ``(low, high)``, or ``None`` for none.

    Returns:
        The perturbed samples, detached, with ``|x' - x| <= epsilon`` everywhere.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> x = torch.zeros(1, 2)
        >>> adv = feature_attack(lambda z: z @ w, x, torch.tensor([[1.0, -1.0]]), 0.1, 0.05, 4)
        >>> adv.tolist()
        [[0.10000000149011612, -0.10000000149011612]]
    """
    nat = x.detach()
    adv = nat.clone()
    g = torch.zeros_like(adv)
    target = target.detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.mse_loss(features(adv).float(), target.float())
            (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            l1 = grad.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
            g = momentum * g + grad / l1
            adv = adv.detach() - step_size * g.sign()
            adv = torch.max(torch.min(adv, nat + epsilon), nat - epsilon)
            if clamp is not None:
                adv = adv.clamp(clamp[0], clamp[1])
    return adv.detach()


def _farthest_other_class_label(
    memory_features: Tensor, memory_targets: Tensor, candidate_features: Tensor, candidate_targets: Tensor
) -> Tensor:
    # Avalanche's target loop walks the candidates by increasing distance and overwrites the label
    # at every candidate of another class (no break): the label of the farthest one wins; class 0
    # where every candidate has the memory sample's class (its initial value).
    distance = torch.cdist(memory_features.float(), candidate_features.float())
    same = memory_targets[:, None] == candidate_targets[None, :]
    farthest = distance.masked_fill(same, -float("inf")).argmax(1)
    labels = candidate_targets[farthest]
    return torch.where((~same).any(1), labels, torch.zeros_like(labels))


def _label_attack(
    logits: Callable[[Tensor], Tensor],
    x: Tensor,
    labels: Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    momentum: float,
    clamp: tuple[float, float] | None,
) -> Tensor:
    # Avalanche's `mifgsm_attack`: one gradient of CE(logits(x), labels) at the clean samples,
    # normalised by its L1 norm over the whole batch, accumulated with momentum; `steps - 1` ascent
    # steps `x + step_size * sign(g)`, clamped to the range after each (here also clipped to the ball).
    nat = x.detach()
    if steps < 2:
        return nat.clone()
    adv = nat.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(logits(adv).float(), labels)
        (grad,) = torch.autograd.grad(loss, adv)
    grad = grad.detach()
    g = torch.zeros_like(grad)
    out = nat.clone()
    for _ in range(steps - 1):
        g = momentum * g + grad / grad.abs().sum().clamp_min(1e-12)
        out = out + step_size * g.sign()
        out = torch.max(torch.min(out, nat + epsilon), nat - epsilon)
        if clamp is not None:
            out = out.clamp(clamp[0], clamp[1])
    return out.detach()


def mixup_batch(x: Tensor, y: Tensor, n_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""MixUp of a batch with a shuffled copy of itself (Zhang et al., 2018), with soft labels.

    One :math:`\lambda \sim \mathrm{Beta}(1, 1)` (uniform on [0, 1], the RAR authors' choice) for
    the batch and a random pairing :math:`\pi`: :math:`\tilde x_i = \lambda x_i + (1 - \lambda)
    x_{\pi(i)}`, :math:`\tilde y_i = \lambda e_{y_i} + (1 - \lambda) e_{y_{\pi(i)}}`.

    Args:
        x: ``(B, ...)``.
        y: ``(B,)`` classes.
        n_classes: width of the soft labels.
        generator: CPU generator of :math:`\lambda` and :math:`\pi`.

    Returns:
        The mixed inputs and ``(B, n_classes)`` soft labels (rows sum to 1).

    Example:
        >>> x, y = torch.eye(2), torch.tensor([0, 1])
        >>> mixed, soft = mixup_batch(x, y, 3, torch.Generator().manual_seed(0))
        >>> soft.sum(1).tolist(), bool(torch.allclose(mixed.sum(1), torch.ones(2)))
        ([1.0, 1.0], True)
    """
    order = torch.randperm(len(y), generator=generator).to(y.device)
    lam = float(torch.rand((), generator=generator))
    one_hot = F.one_hot(y, n_classes).float()
    return lam * x + (1 - lam) * x[order], lam * one_hot + (1 - lam) * one_hot[order]


#: The callbacks whose memory batches RAR perturbs: they feed the loader named ``"replay"``.
REPLAY_SOURCES: tuple[type, ...] = (Replay, _ReplayLoss)


class RAR(ContinualCallback):
    r"""RAR, Retrospective Adversarial Replay (Kumari et al., NeurIPS 2022): the memory samples a
    replay method rehearses are also replayed perturbed towards the current task, near the
    boundary that forgetting moves.

    RAR sits on the memory batches of a replay method in the same callbacks list
    (:class:`Replay`, or :class:`ERACE` / :class:`ERAML` / :class:`SCR`, which feed the same
    ``"replay"`` loader); without one, set-up fails. At every training step with memory rows
    :math:`(x_b, y_b)` next to the current rows :math:`(x_c, y_c)`:

    1. **Look-ahead** (as MIR): a virtual SGD step on the current rows,
       :math:`\theta' = \theta - \mathrm{lr}\,\nabla \ell(f_\theta(x_c), y_c)`
       (:func:`virtual_parameters`; its gradient all-reduced under DDP).
    2. **Target**: each memory sample's nearest current sample of another class, by Euclidean
       distance between the features of ``feature_layer`` under :math:`\theta'`
       (:func:`nearest_other_class`).
    3. **Attack**: MI-FGSM on the distance of the features (:func:`feature_attack`): ``steps``
       steps of size ``step_size`` inside the :math:`L_\infty` ball of radius ``epsilon``, under
       :math:`\theta'`, moving :math:`x_b` towards its target's features.
    4. **Replay**: the perturbed samples :math:`\tilde x_b`, with their own labels, add
       :math:`\beta\, \mathrm{CE}(f_\theta(\tilde x_b), y_b)` (mean over the memory rows) to the
       step's loss, next to the replay method's loss on the clean samples.

    With ``mixup=True`` (the paper's augmentation, "ER-mix-RAR"), the memory rows are first mixed
    with a shuffled copy of themselves (:func:`mixup_batch`, :math:`\lambda \sim
    \mathrm{Beta}(1, 1)`, soft labels) and the mixed samples are attacked and replayed with a
    soft-label cross-entropy.

    Choices, stated (the paper and its authors' reference code; Avalanche's ``RARPlugin``):

    - The attack matches features (the penultimate layer, ``feature_layer="features"``) of the
      nearest current sample under the look-ahead model, as the authors' code does
      (``attack="features"``). ``attack="avalanche"`` is Avalanche's ``RARPlugin`` instead (see
      below).
    - ``epsilon = step_size = 8/255``, ``steps=2``, :math:`\mu = 1` (the authors' CIFAR
      settings and Avalanche's defaults); on Split-MNIST the authors use ``epsilon=0.3``,
      ``step_size=0.075``, ``steps=5``, :math:`\beta = 0.3` (the SplitDigits config does).
    - :math:`\beta = 0.4` (Avalanche's default; the authors tune it per benchmark and memory
      size, 0.075 to 0.5). The authors weight the clean memory term by :math:`1 - \beta`; here the
      replay method's loss is kept as it is and the perturbed term added, so RAR composes with
      any of them.
    - The nearest sample is of another class: the authors draw memory batches without the
      current batch's classes, so any current sample is; the memory here may hold them, and a
      memory sample with no current sample of another class is left unperturbed (its term still
      counts).
    - The look-ahead and the attack run in eval mode (no dropout draws, batch-norm statistics
      untouched); the replayed forward runs in the training mode. Inputs are clamped to
      ``clamp`` (the authors' images: ``(0.0, 1.0)``); the default, ``None``, clamps nothing,
      for normalised inputs.
    - ``lr=None`` takes the optimizer's learning rate for the look-ahead (the authors use the
      training learning rate).
    - Not with :class:`MIR` here: MIR draws its memory rows inside its own loss term, where RAR
      cannot see them (the paper's MIR-RAR is not offered).

    ``attack="avalanche"``, Avalanche's ``RARPlugin`` (``before_backward``), differs in steps 1-3;
    step 4 (:math:`\beta` on the perturbed rows' cross-entropy, added to a loss that already
    holds the clean memory rows') is the same:

    - *Look-ahead and candidates*: the virtual step is taken on the whole training batch (its
      current and memory rows, as Avalanche's ``mb_x`` holds both), and every row of that batch
      is a candidate target.
    - *Target*: a **label**, not features: Avalanche's loop over the candidates sorted by feature
      distance overwrites the target at each one of another class without stopping, so the label
      of the *farthest* candidate of another class is taken (class 0 when there is none).
    - *Step rule*: one gradient of :math:`\mathrm{CE}(f_{\theta'}(x_b), \text{target})` at the
      clean sample, normalised by its :math:`L_1` norm over the whole batch and accumulated with
      momentum; the sample moves *up* that loss, :math:`x' \leftarrow x' + \alpha\,
      \mathrm{sign}(g)`, clamped to ``clamp`` after each step (Avalanche always clamps to
      ``(0, 1)``: pass ``clamp=(0.0, 1.0)``).
    - *Steps and ball*: ``steps - 1`` steps (Avalanche's loop runs ``iter_fgsm - 1`` times, so
      ``steps=1`` perturbs nothing) of :math:`\alpha` = ``step_size``, by default
      :math:`\epsilon` / ``steps``; the result is clipped to the :math:`\epsilon` ball (Avalanche
      stops after the step that leaves it, which its default step size never reaches).
    - Not reproduced: Avalanche attacks a second memory batch drawn from its own loader; here the
      step's memory rows are attacked. Avalanche's look-ahead runs in training mode, here in
      eval mode. Its defaults: ``RAR(attack="avalanche", beta=0.4, epsilon=0.0314, steps=2,
      lr=0.1, clamp=(0.0, 1.0))``.

    With ``adversarial=False`` and ``mixup=False`` RAR adds nothing and costs nothing (no
    look-ahead, no forward pass); ``adversarial=False, mixup=True`` is the paper's "ER-mix".

    Args:
        beta: :math:`\beta`, the weight of the perturbed samples' loss (>= 0).
        epsilon: the :math:`L_\infty` radius (>= 0, in input units).
        step_size: the attack's step (> 0; default ``epsilon``).
        steps: the attack's steps (>= 1).
        momentum: MI-FGSM's :math:`\mu` (>= 0).
        feature_layer: the layer whose output are the features (a ``named_modules()`` name).
        lr: the look-ahead's learning rate (> 0; ``None``: the optimizer's).
        mixup: replay mixed memory samples (the paper's augmentation).
        adversarial: perturb the memory samples (``False``: no attack).
        clamp: the inputs' range, or ``None``.
        seed: seed of the mixup draws (``None``: torch's initial seed on rank 0).
        attack: ``"features"`` (the authors' feature-matching MI-FGSM) or ``"avalanche"``
            (Avalanche's label-gradient step); see :data:`RAR_ATTACKS`.

    Raises:
        ValueError: for a negative ``beta``, ``epsilon`` or ``momentum``, a non-positive
            ``step_size`` or ``lr``, ``steps < 1``, a ``clamp`` that is not ``(low, high)`` with
            ``low < high``, a non-bool ``mixup`` / ``adversarial``, or an ``attack`` not in
            :data:`RAR_ATTACKS`; at set-up, a
            ``feature_layer`` the model does not have.
        MisconfigurationException: at set-up, when no replay method (``Replay``, ``ERACE``,
            ``ERAML``) is among the trainer's callbacks.

    Example:
        >>> rar = RAR(beta=0.3, epsilon=0.3, step_size=0.075, steps=5)
        >>> rar.epsilon, rar.steps, rar.mixup
        (0.3, 5, False)
        >>> RAR(attack="avalanche", epsilon=0.0314, steps=2).step_size  # Avalanche's epsilon / steps
        0.0157
    """

    def __init__(
        self,
        beta: float = 0.4,
        epsilon: float = 8 / 255,
        step_size: float | None = None,
        steps: int = 2,
        momentum: float = 1.0,
        feature_layer: str = "features",
        lr: float | None = None,
        mixup: bool = False,
        adversarial: bool = True,
        clamp: tuple[float, float] | None = None,
        seed: int | None = None,
        attack: str = "features",
    ):
        for name, value in (("beta", beta), ("epsilon", epsilon), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, optional in (("step_size", step_size), ("lr", lr)):
            if optional is not None and (
                isinstance(optional, bool)
                or not isinstance(optional, int | float)
                or not 0 < optional < float("inf")
            ):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {optional!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        for name, flag in (("mixup", mixup), ("adversarial", adversarial)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if clamp is not None:
            ok = isinstance(clamp, tuple | list) and len(clamp) == 2
            if not ok or not all(isinstance(v, int | float) for v in clamp) or not clamp[0] < clamp[1]:
                raise ValueError(f"clamp must be None or (low, high) with low < high, got {clamp!r}")
            clamp = (float(clamp[0]), float(clamp[1]))
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        check_layer_name(feature_layer, "feature_layer")
        if attack not in RAR_ATTACKS:
            raise ValueError(f"attack must be one of {RAR_ATTACKS}, got {attack!r}")
        self.attack = attack
        self.beta = float(beta)
        self.epsilon = float(epsilon)
        if step_size is None:
            step_size = self.epsilon / steps if attack == "avalanche" else self.epsilon
        self.step_size = float(step_size)
        self.steps = steps
        self.momentum = float(momentum)
        self.feature_layer = feature_layer
        self.lr = None if lr is None else float(lr)
        self.mixup = mixup
        self.adversarial = adversarial
        self.clamp = clamp
        self.seed = seed
        self._seed: int | None = None
        self._parts: dict[str, slice] | None = None

    @property
    def state_key(self) -> str:
        settings: dict[str, Any] = dict(
            beta=self.beta, epsilon=self.epsilon, steps=self.steps, mixup=self.mixup
        )
        if self.attack != "features":  # the authors' attack keeps the key its checkpoints were written with
            settings["attack"] = self.attack
        return self._generate_state_key(**settings)

    @property
    def active(self) -> bool:
        """Whether RAR changes the loss at all (an attack or mixup, with a weight above 0)."""
        return self.beta > 0 and (self.adversarial or self.mixup)

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            callbacks = trainer.callbacks  # type: ignore[attr-defined]
            if not any(isinstance(c, REPLAY_SOURCES) for c in callbacks):
                names = [type(c).__name__ for c in callbacks if c is not self]
                raise MisconfigurationException(
                    "RAR perturbs the memory samples that a replay method rehearses, and the trainer has "
                    f"none (its other callbacks: {names}): add Replay(...) (or ERACE / ERAML / SCR) to the "
                    "callbacks list next to RAR"
                )
            if self.adversarial:
                resolve_layer(pl_module.model, self.feature_layer)  # type: ignore[arg-type]
        super().setup(trainer, pl_module, stage)

    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if self._seed is None:
            self._seed = stream_seed(trainer, self.seed)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._parts = batch_parts(batch) if isinstance(batch, Mapping) else None

    # ------------------------------------------------------------------ the attack
    def _lookahead_lr(self, module: Any) -> float:
        if self.lr is not None:
            return self.lr
        optimizers = module.trainer.optimizers
        if not optimizers:
            raise MisconfigurationException("RAR(lr=None) takes the optimizer's lr, but the trainer has none")
        return float(optimizers[0].param_groups[0]["lr"])

    def perturb(self, module: Any, current: Batch, memory: Batch, lr: float | None = None) -> Tensor:
        """The memory samples perturbed as RAR does (steps 1-3 of the class docstring).

        Args:
            module: the model, called as ``module(x, t)``, with the layer ``feature_layer``.
            current: the current rows ``(x, y, t)``: the look-ahead's batch and the candidate
                targets (with ``attack="avalanche"`` RAR passes the whole training batch).
            memory: the memory rows ``(x, y, t)`` (``y``: classes, for the choice of targets).
            lr: the look-ahead's learning rate (default: ``self.lr``, else the optimizer's).

        Returns:
            The perturbed memory inputs, detached, within ``epsilon`` of ``memory``'s in
            :math:`L_\\infty`.
        """
        cx, cy, ct = current
        mx, my, mt = memory
        trainer = getattr(module, "_trainer", None)

        def reduce(flat: Tensor) -> Tensor:
            if trainer is not None and trainer.world_size > 1:
                return trainer.strategy.reduce(flat, reduce_op="mean")
            return flat

        step = lr if lr is not None else self._lookahead_lr(module)
        virtual = virtual_parameters(module, (cx, cy, ct), step, reduce)
        layer = self.feature_layer
        was_training = module.training
        module.eval()
        try:

            def features(x: Tensor, t: Tensor) -> Tensor:
                with capture_features(module.model, layer) as out:
                    functional_call(module, virtual, (x, t))
                return out[-1]

            with torch.no_grad():
                fm, fc = features(mx, mt), features(cx, ct)
            if self.attack == "avalanche":
                labels = _farthest_other_class_label(fm, my, fc, cy)
                return _label_attack(
                    lambda x: functional_call(module, virtual, (x, mt)),
                    mx,
                    labels,
                    self.epsilon,
                    self.step_size,
                    self.steps,
                    self.momentum,
                    self.clamp,
                ).to(mx.dtype)
            target = nearest_other_class(fm, my, fc, cy)
            adv = mx.detach().clone()
            has = (target >= 0).nonzero().flatten()
            if len(has):
                t_has = mt[has]
                adv[has] = feature_attack(
                    lambda x: features(x, t_has),
                    mx[has],
                    fc[target[has]],
                    self.epsilon,
                    self.step_size,
                    self.steps,
                    self.momentum,
                    self.clamp,
                ).to(adv.dtype)
        finally:
            module.train(was_training)
        return adv

    def penalty(self, module: Any, batch: Batch, logits: Tensor) -> Tensor | None:
        parts, self._parts = self._parts, None
        if not self.active or parts is None:
            return None
        rows, current = parts.get("replay"), parts.get("current")
        if rows is None or rows.stop == rows.start or current is None or current.stop == current.start:
            return None
        x, y, t = batch
        mx, my, mt = x[rows], y[rows], t[rows]
        soft: Tensor | None = None
        if self.mixup:
            generator = step_generator(int(self._seed or 0), int(module.draw_index))
            mx, soft = mixup_batch(mx, my, logits.shape[1], generator)
            soft = soft.to(logits.device)
        if self.adversarial:
            labels = my if soft is None else soft.argmax(1)
            lookahead = (x, y, t) if self.attack == "avalanche" else (x[current], y[current], t[current])
            mx = self.perturb(module, lookahead, (mx, labels, mt))
        out = module(mx, mt).float()
        if soft is None:
            loss = F.cross_entropy(out, my)
        else:
            loss = -(soft * F.log_softmax(out, dim=1)).sum(1).mean()
        return self.beta * loss

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._seed = state_dict.get("seed")
