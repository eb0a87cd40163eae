"""Deep generative replay (Shin et al., 2017): a generator's samples, labelled by the previous model."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cl.data.experience import Experience
from lightning_cl.methods.base import (
    Batch,
    ContinualCallback,
    experience_generator,
    step_generator,
    stream_seed,
)
from lightning_cl.models.heads import MultiHeadClassifier, copy_at_state
from lightning_cl.models.module import NonFiniteLossError
from lightning_cl.models.vae import VAE

__all__ = ["REPLAY_RATIOS", "GenerativeReplay"]

REPLAY_RATIOS = ("tasks_seen", "equal")
"""Named weights of the current data in the loss: the paper's ``1 / tasks seen``, or Avalanche's ``1/2``."""

_RANK_STRIDE = 104_729  # a prime: each rank draws its own generated samples at a step


def _fusable(module: nn.Module) -> bool:
    """Whether torch's fused Adam (one kernel per step, the same update) takes ``module``'s parameters."""
    return all(
        p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        for p in module.parameters()
    )


class GenerativeReplay(ContinualCallback):
    r"""Deep generative replay: a VAE learns the inputs seen so far, the previous model labels its samples.

    Shin et al. (2017, "Continual learning with deep generative replay", Sec. 3) pair a
    generator with the solver (the classifier; together the *scholar*). After each experience:

    - the **generator** is trained on the experience's inputs mixed with its own earlier
      self's samples (Sec. 3.1), so it learns every input seen so far: the loss is
      :math:`r\,\ell(x) + (1 - r)\,\ell(x')` per batch, :math:`\ell` the VAE's negative ELBO
      (:meth:`~lightning_cl.models.VAE.loss`), :math:`x'` samples of the frozen previous
      generator, as many as the batch has inputs (or ``replay_size``);
    - a frozen copy of the **solver** (eval mode) is kept.

    While a later experience trains, every step draws as many generated inputs :math:`x'` as
    the step's current batch has samples (or ``replay_size``; per rank), labels them
    :math:`y' = \arg\max_k f_{old}(x')_k` (the paper's hard labels), and the task loss becomes
    (Sec. 3.2, eq. 2)

    .. math:: r\, \mathrm{CE}(f(x), y) + (1 - r)\, \mathrm{CE}(f(x'), y')

    with the criterion of the module in place of CE, over every row of the step's batch (a
    ``Replay`` memory joined in counts as current data). Choices, stated:

    - ``replay_ratio``, the weight :math:`r` of the current data: ``"tasks_seen"`` (the default,
      the paper: :math:`r = 1/N` while training the :math:`N`-th experience, so every task seen
      weighs the same), ``"equal"`` (:math:`r = 1/2`: Avalanche's ``GenerativeReplayPlugin``,
      which appends as many generated samples as current ones to the batch), or a number in
      (0, 1]. The same :math:`r` mixes the generator's own replay.
    - The generator is the paper's choice of family made smaller: a VAE (as Avalanche and
      continual-learning-baselines use for MNIST) instead of the paper's WGAN-GP; it is trained
      after the solver's fit on the experience, with a fresh Adam (lr ``generator_lr``, 1e-3 as
      in continual-learning-baselines) for ``generator_epochs`` passes in batches of
      ``generator_batch_size``, on the raw inputs (no training augmentation). Each step takes
      one pass of the VAE over the batch joined by its replayed samples, each group averaged
      apart, and torch's fused Adam where the parameters allow it (CPU or CUDA floats: the same
      update as the default loop, to rounding), so a generator step costs about half what a
      step of two passes and the per-tensor Adam loop did.
    - Under DDP every rank trains the generator on the whole experience in the same seeded
      order (:func:`~lightning_cl.methods.experience_generator`); rank 0's weights are then
      broadcast, so the generators are identical even where kernels are not bitwise repeatable.
      Each rank draws its own generated samples at a step (seeded by step and rank).
    - Generated samples take the task label of the step's first current sample; a model with a
      :class:`~lightning_cl.models.MultiHeadClassifier` is refused (an unconditional generator
      cannot say which head a sample is for).
    - It replaces the task loss, so it does not combine with another method that does (ER-ACE,
      iCaRL, ...: refused at set-up); penalties (EWC, LwF) and extra loaders (Replay) combine.

    Checkpointed state: the generator's weights, the frozen solver's weights, the number of
    experiences trained and the seed (no data).

    Args:
        generator: the VAE to train (default: ``VAE(input_shape, hidden_size, latent_size)``,
            built when the first experience ends, its input shape that of the data, its
            likelihood ``"bernoulli"`` for inputs in [0, 1] and ``"gaussian"`` for normalised
            inputs, judged on the experience's first 256 samples).
        replay_ratio: weight of the current data, one of :data:`REPLAY_RATIOS` or a number in (0, 1].
        generator_epochs: passes over each experience when training the generator.
        generator_batch_size: batch size of the generator's training.
        generator_lr: Adam's learning rate for the generator.
        generator_weight_decay: Adam's weight decay for the generator (Avalanche's default
            generator: 1e-4).
        hidden_size: hidden width of the default VAE.
        latent_size: code size of the default VAE.
        seed: base seed of the generator's training order and of the generated samples (default:
            torch's initial seed, as rank 0 has it).
        replay_size: generated samples per step, for the solver (per rank) and the generator
            alike; ``None``: as many as the step's current samples. Avalanche's ``replay_size``
            (continual-learning-baselines' SplitMNIST run: 100 beside batches of 16; with
            ``replay_ratio=16/116`` the loss is then their mean over the 116 samples).

    Raises:
        ValueError: for a ``replay_ratio`` not in :data:`REPLAY_RATIOS` nor in (0, 1], a
            ``generator`` that is not a :class:`~lightning_cl.models.VAE`, epochs, batch size or
            sizes that are not ints >= 1, a ``generator_lr`` that is not a number > 0, a
            ``generator_weight_decay`` that is not a finite number >= 0, or a ``replay_size``
            that is not an int >= 1 or ``None``.
        ValueError: when an experience starts, for a ``generator`` whose input shape is not
            the data's, or a Bernoulli generator (given, or built on the first experience's
            inputs in [0, 1]) and an experience whose inputs leave [0, 1]; on resume, for a
            checkpoint whose default generator was built with other ``hidden_size`` or
            ``latent_size`` (nothing is changed).
        NonFiniteLossError: when the generator's training on an experience ends with
            non-finite weights (``generator_lr`` too high, say); the generator is left as it
            was before that experience.

    Example:
        >>> gr = GenerativeReplay(replay_ratio="tasks_seen")
        >>> gr.current_weight(0), gr.current_weight(3)
        (1.0, 0.25)
    """

    def __init__(
        self,
        generator: VAE | None = None,
        replay_ratio: float | str = "tasks_seen",
        generator_epochs: int = 20,
        generator_batch_size: int = 64,
        generator_lr: float = 1e-3,
        generator_weight_decay: float = 0.0,
        hidden_size: int = 400,
        latent_size: int = 32,
        seed: int | None = None,
        replay_size: int | None = None,
    ):
        if generator is not None and not isinstance(generator, VAE):
            raise ValueError(
                f"generator must be a lightning_cl.models.VAE or None, got {type(generator).__name__}"
            )
        if isinstance(replay_ratio, str):
            if replay_ratio not in REPLAY_RATIOS:
                raise ValueError(
                    f"replay_ratio must be one of {REPLAY_RATIOS} or a number in (0, 1], got {replay_ratio!r}"
                )
        elif (
            isinstance(replay_ratio, bool)
            or not isinstance(replay_ratio, int | float)
            or not 0 < replay_ratio <= 1
        ):
            raise ValueError(
                f"replay_ratio must be one of {REPLAY_RATIOS} or a number in (0, 1], got {replay_ratio!r}"
            )
        for name, value in (
            ("generator_epochs", generator_epochs),
            ("generator_batch_size", generator_batch_size),
            ("hidden_size", hidden_size),
            ("latent_size", latent_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if (
            isinstance(generator_lr, bool)
            or not isinstance(generator_lr, int | float)
            or not (math.isfinite(generator_lr) and generator_lr > 0)
        ):
            raise ValueError(f"generator_lr must be a finite number > 0, got {generator_lr!r}")
        if (
            isinstance(generator_weight_decay, bool)
            or not isinstance(generator_weight_decay, int | float)
            or not (math.isfinite(generator_weight_decay) and generator_weight_decay >= 0)
        ):
            raise ValueError(
                f"generator_weight_decay must be a finite number >= 0, got {generator_weight_decay!r}"
            )
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if replay_size is not None and (
            not isinstance(replay_size, int) or isinstance(replay_size, bool) or replay_size < 1
        ):
            raise ValueError(f"replay_size must be an int >= 1 or None, got {replay_size!r}")
        self.replay_size = replay_size
        self.generator = generator
        self.replay_ratio = replay_ratio
        self.generator_epochs = generator_epochs
        self.generator_batch_size = generator_batch_size
        self.generator_lr = float(generator_lr)
        self.generator_weight_decay = float(generator_weight_decay)
        self.hidden_size = hidden_size
        self.latent_size = latent_size
        self.seed = seed
        self.experiences_trained = 0
        self.solver_state: dict[str, Tensor] | None = None
        self._solver: nn.Module | None = None
        self._solver_takes_tasks = False
        self._likelihood_chosen = False  # the default generator's likelihood was judged on the data

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            replay_ratio=self.replay_ratio, generator_epochs=self.generator_epochs
        )

    def current_weight(self, experiences_trained: int) -> float:
        """The weight :math:`r` of the current data in the experience after ``experiences_trained`` ones.

        Raises:
            ValueError: for a negative ``experiences_trained``.
        """
        if experiences_trained < 0:
            raise ValueError(f"experiences_trained must be >= 0, got {experiences_trained}")
        if self.replay_ratio == "tasks_seen":
            return 1.0 / (experiences_trained + 1)
        if self.replay_ratio == "equal":
            return 1.0 if experiences_trained == 0 else 0.5
        return 1.0 if experiences_trained == 0 else float(self.replay_ratio)

    @property
    def solver(self) -> nn.Module | None:
        """The frozen model of the end of the last experience, which labels generated samples."""
        return self._solver

    # ------------------------------------------------------------------ experience hooks
    def on_experience_start(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        if any(isinstance(m, MultiHeadClassifier) for m in module.model.modules()):
            raise MisconfigurationException(
                "GenerativeReplay labels unconditional generated samples with the previous model, "
                "which a MultiHeadClassifier cannot do without a task label per sample: use a "
                "single head (class- or domain-incremental streams)"
            )
        if self.generator is not None and len(experience.dataset) > 0:
            self._check_inputs(experience, self.generator)
        self.seed = stream_seed(trainer, self.seed)

    def _check_inputs(self, experience: Experience, vae: VAE) -> None:
        # Before the solver trains: the generator must take this experience's inputs.
        data = experience.dataset
        x0, _, _ = data.__getitems__(list(range(min(len(data), 256))))
        if tuple(x0.shape[1:]) != vae.input_shape:
            raise ValueError(
                f"GenerativeReplay's generator takes inputs of shape {vae.input_shape}, but experience "
                f"{experience.index}'s have shape {tuple(x0.shape[1:])}: build the VAE for them "
                f"(VAE(input_shape={tuple(x0.shape[1:])}, ...)) or pass generator=None"
            )
        if vae.likelihood == "bernoulli":
            low, high = float(x0.min()), float(x0.max())
            if low < 0 or high > 1:
                how = (
                    "GenerativeReplay built its default generator with the Bernoulli likelihood, "
                    "the first experience's inputs lying in [0, 1]"
                    if self._likelihood_chosen
                    else "the generator given has the Bernoulli likelihood, which takes inputs in [0, 1]"
                )
                raise ValueError(
                    f"{how}; experience {experience.index}'s inputs reach [{low:.8g}, {high:.8g}]: pass "
                    f"generator=VAE({vae.input_shape}, likelihood='gaussian') for inputs outside [0, 1]"
                )

    def on_experience_end(self, trainer: L.Trainer, module: Any, experience: Experience) -> None:
        device = next(module.parameters()).device
        self.seed = stream_seed(trainer, self.seed) if self.seed is None else self.seed
        self.train_generator(experience, device, trainer)
        state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self._set_solver(module.model, state)
        self.solver_state = state
        self.experiences_trained += 1

    def train_generator(
        self, experience: Experience, device: torch.device, trainer: L.Trainer | None = None
    ) -> None:
        """Train the generator on ``experience``'s inputs and its earlier self's samples (see the class).

        Args:
            experience: the experience whose inputs to learn.
            device: where to train.
            trainer: under DDP, rank 0's weights are broadcast through its strategy afterwards.
        """
        data = experience.dataset
        if len(data) == 0:
            return
        if self.generator is None:
            x0, _, _ = data.__getitems__(list(range(min(len(data), 256))))
            # Bernoulli outputs for inputs in [0, 1]; normalised inputs (negative values, or
            # above 1) take the unit-variance Gaussian: a Bernoulli likelihood of them has no
            # lower bound and its training diverges.
            in_unit = bool(x0.min() >= 0) and bool(x0.max() <= 1)
            self.generator = VAE(
                tuple(x0.shape[1:]),
                self.hidden_size,
                self.latent_size,
                likelihood="bernoulli" if in_unit else "gaussian",
            )
            self._likelihood_chosen = True
            created = True
        else:
            created = False
        assert self.seed is not None
        vae = self.generator.to(device).train()
        previous = copy.deepcopy(vae).eval().requires_grad_(False) if self.experiences_trained else None
        # What a diverged training falls back to: the earlier self already copied, else a snapshot.
        before = (
            previous.state_dict()
            if previous is not None
            else {k: v.detach().clone() for k, v in vae.state_dict().items()}
        )
        r = self.current_weight(self.experiences_trained)
        optimizer = torch.optim.Adam(
            vae.parameters(),
            lr=self.generator_lr,
            weight_decay=self.generator_weight_decay,
            fused=_fusable(vae),
        )
        batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in vae.modules())
        rng = experience_generator(self.seed, experience.index)
        with torch.enable_grad(), torch.inference_mode(False):
            for _ in range(self.generator_epochs):
                order = torch.randperm(len(data), generator=rng)
                for start in range(0, len(data), self.generator_batch_size):
                    x, _, _ = data.__getitems__(order[start : start + self.generator_batch_size])
                    x = x.to(device)
                    if previous is None and batch_norm and len(x) < 2:
                        continue  # batch norm takes no batch of one sample (an epoch's last, at most)
                    if previous is None:
                        loss = vae.loss(x, generator=rng)
                    else:
                        # One pass over current and replayed inputs, each group averaged
                        # apart: r * mean ELBO(x) + (1 - r) * mean ELBO(x').
                        replayed = previous.sample(self.replay_size or len(x), generator=rng)
                        losses = vae.loss(
                            torch.cat([x.to(replayed.dtype), replayed]), generator=rng, reduction="none"
                        )
                        loss = r * losses[: len(x)].mean() + (1 - r) * losses[len(x) :].mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        vae.eval()
        if not all(bool(torch.isfinite(v).all()) for v in vae.state_dict().values() if v.is_floating_point()):
            vae.load_state_dict(before)
            if created:
                self.generator, self._likelihood_chosen = None, False
            raise NonFiniteLossError(
                f"GenerativeReplay's generator diverged while learning experience {experience.index}: "
                f"its weights are not finite after {self.generator_epochs} epoch(s) at "
                f"generator_lr={self.generator_lr:g}. Lower generator_lr (the solver's training is not "
                "at fault); the generator is left as it was before this experience"
            )
        if trainer is not None and trainer.world_size > 1:
            state = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
            vae.load_state_dict(trainer.strategy.broadcast(state, src=0))

    def _set_solver(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        self._solver = copy_at_state(model, state).eval().requires_grad_(False)
        self._solver_takes_tasks = "task_labels" in inspect.signature(self._solver.forward).parameters

    # ------------------------------------------------------------------ replay
    def generate(
        self, n: int, task_label: int = 0, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` generated samples labelled by the previous model: ``(x', argmax f_old(x'), t)``.

        On the generator's device, without a graph.

        Args:
            n: how many samples.
            task_label: the task label given to them (and to the previous model).
            generator: a CPU generator for the codes.

        Raises:
            RuntimeError: before the first experience ended (no generator or previous model yet).
        """
        if self.generator is None or self._solver is None:
            raise RuntimeError("GenerativeReplay generates after the first experience ended")
        x = self.generator.eval().sample(n, generator=generator)
        t = torch.full((n,), task_label, dtype=torch.long, device=x.device)
        if next(self._solver.parameters()).device != x.device:
            self._solver.to(x.device)
        with torch.no_grad():
            logits = self._solver(x, t) if self._solver_takes_tasks else self._solver(x)
        return x, logits.argmax(dim=-1), t

    def task_loss(
        self, module: Any, batch: Batch, logits: Tensor, parts: Mapping[str, slice]
    ) -> Tensor | None:
        """:math:`r\\,` criterion on the step's batch :math:`+ (1 - r)\\,` criterion on generated samples.

        ``None`` (the module's criterion alone) before the first experience ended.
        """
        if self._solver is None and self.solver_state is not None:  # restored from a checkpoint
            self._set_solver(module.model, self.solver_state)
        if self._solver is None or self.generator is None or self.experiences_trained == 0:
            return None
        x, y, t = batch
        device = logits.device
        if next(self.generator.parameters()).device != device:
            self.generator.to(device)
        assert self.seed is not None
        rows = parts.get("current", slice(0, len(y)))
        n = self.replay_size or len(y[rows])
        rng = step_generator(self.seed + _RANK_STRIDE * int(module.global_rank), module.draw_index)
        x_gen, y_gen, t_gen = self.generate(n, int(t[0]) if len(t) else 0, generator=rng)
        r = self.current_weight(self.experiences_trained)
        current = module.criterion(logits, y)
        replayed = module.criterion(module(x_gen.to(x.dtype), t_gen), y_gen)
        return r * current.float() + (1 - r) * replayed.float()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        gen = self.generator
        return {
            "generator": None
            if gen is None
            else {k: v.detach().cpu().clone() for k, v in gen.state_dict().items()},
            "generator_config": None if gen is None else dict(gen.config),
            "solver": self.solver_state,
            "experiences_trained": self.experiences_trained,
            "seed": self.seed,
            "likelihood_chosen": self._likelihood_chosen,
        }

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse a checkpoint whose generator has another layout than the one given (nothing changed)."""
        saved = state_dict.get("generator_config")
        if state_dict.get("generator") is None or saved is None:
            return
        if self.generator is None:
            # The checkpoint's generator is adopted; one of this callback's own default layout
            # must have this callback's sizes.
            own = VAE(
                tuple(saved["input_shape"]), saved["hidden_size"], saved["latent_size"], saved["likelihood"]
            ).config
            given = (self.hidden_size, self.latent_size)
            if own == {**saved, "input_shape": list(saved["input_shape"])} and given != (
                saved["hidden_size"],
                saved["latent_size"],
            ):
                raise ValueError(
                    f"the checkpoint's generator was built with hidden_size={saved['hidden_size']}, "
                    f"latent_size={saved['latent_size']}, this GenerativeReplay has hidden_size="
                    f"{self.hidden_size}, latent_size={self.latent_size}: resume with the checkpoint's sizes"
                )
            return
        current = self.generator.config
        if {**saved, "input_shape": list(saved["input_shape"])} != current:
            raise ValueError(
                f"the checkpoint's generator was built with {saved}, the generator given with {current}; "
                "pass a generator of the checkpoint's layout (VAE(**config)) or generator=None"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.check_state_dict(state_dict)
        if state_dict["generator"] is not None:
            if self.generator is None:
                config = dict(state_dict["generator_config"])
                config["input_shape"] = tuple(config["input_shape"])
                self.generator = VAE(**config)
            self.generator.load_state_dict(state_dict["generator"])
            self.generator.eval()
        self.solver_state = state_dict["solver"]
        self.experiences_trained = int(state_dict["experiences_trained"])
        self.seed = state_dict["seed"]
        self._likelihood_chosen = bool(state_dict.get("likelihood_chosen", False))
        self._solver = None  # rebuilt from the live model's structure at the next training step
