"""``ContinualModule``: the ``LightningModule`` that trains one model across a stream."""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_cl.data.batch import Batch
from lightning_cl.data.benchmark import Benchmark
from lightning_cl.data.experience import Experience
from lightning_cl.data.stream import Stream
from lightning_cl.evaluation.metric_matrix import MetricMatrices, MetricMatrix
from lightning_cl.evaluation.results import ContinualResults
from lightning_cl.evaluation.stream_metrics import (
    METRIC_SCOPES,
    StreamMetrics,
    metric_dict,
    pad_logits,
    record_measurements,
    takes_loss,
)
from lightning_cl.models.eval_classifier import EvalClassifier, eval_classifier_of
from lightning_cl.models.heads import DynamicModule
from lightning_cl.models.loss_term import LossTerm, batch_parts, task_loss_owner
from lightning_cl.models.optimisation_step import (
    OptimisationStep,
    check_step_result,
    optimisation_step_owner,
)

__all__ = [
    "ON_NONFINITE",
    "OPTIMIZER_POLICIES",
    "ContinualModule",
    "NonFiniteLossError",
    "check_new_trainer",
    "merge_batch",
]

OPTIMIZER_POLICIES = ("reset", "keep")
ON_NONFINITE = ("raise", "warn")
_SPAWNING = ("spawn", "fork", "forkserver")

# The evaluation values this module logs are computed by torchmetrics, which has already
# synchronised them across processes: the same number on every rank, so Lightning's advice to
# reduce them again (`sync_dist=True`) does not apply to these keys.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self.log\('((test|val|train)/.*|step|experience)'"
)


class NonFiniteLossError(FloatingPointError):
    """A training step's task loss or a method's penalty is ``nan`` or ``inf``.

    The message names the experience, the step and the term. Raised before the optimizer step,
    so the weights are those of the last good step, and the per-experience checkpoints already
    written are untouched.
    """


_PENDING_SAMPLES = 1 << 16  # training samples whose predictions wait for one metric update, at most


# Set on a Trainer whose fit found an OptimisationStep owner (read by `automatic_optimization`).
_OWNED_BY_A_STEP = "_lightning_cl_step_owned"


def check_new_trainer(trainer: L.Trainer) -> None:
    """Refuse a ``Trainer`` that has already run a fit: one ``Trainer`` per experience.

    A second ``trainer.fit`` on the same ``Trainer`` starts at the epoch where the first
    stopped, so with the same ``max_epochs`` it trains nothing, while the CL methods would still
    record the experience as trained.

    Raises:
        MisconfigurationException: if ``trainer`` has run optimizer steps or epochs before.
    """
    epoch = int(trainer.fit_loop.epoch_progress.current.completed)
    steps = int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    if epoch > 0 or steps > 0:
        raise MisconfigurationException(
            f"this Trainer has already run a fit ({epoch} epochs, {steps} steps): a second "
            "trainer.fit would continue from there, not train the new experience; build a new "
            "L.Trainer for each experience (or use fit_stream)"
        )


def merge_batch(batch: Batch | Mapping[str, Batch]) -> Batch:
    """One ``(x, y, t)`` batch from a batch or a dict of batches (current data plus replay)."""
    if isinstance(batch, Mapping):
        parts = [b for b in batch.values() if b is not None]
        return (
            torch.cat([p[0] for p in parts]),
            torch.cat([p[1] for p in parts]),
            torch.cat([p[2] for p in parts]),
        )
    x, y, t = batch
    return x, y, t


def _fresh(metric: Metric) -> Metric:
    clone = copy.deepcopy(metric)
    clone.reset()
    return clone


def _sgd(params: Iterable[Any]) -> Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


class ContinualModule(L.LightningModule):
    """Trains one ``torch.nn.Module`` over the experiences of a stream.

    The training loss is the task loss plus the :meth:`~ContinualCallback.penalty` of every CL
    callback on the trainer; the task loss is ``criterion(logits, y)``, or what the one callback
    that overrides :meth:`~lightning_cl.models.LossTerm.task_loss` returns. At validation and
    test, the scores of the one :class:`~lightning_cl.models.EvalClassifier` callback (iCaRL's
    nearest mean of exemplars) take the place of the logits. Dynamic heads grow in
    ``setup("fit")``, before the optimizer is built. Every ``trainer.test`` records each scalar
    metric in its matrix ``R[i][j]`` (:class:`~lightning_cl.evaluation.MetricMatrices`),
    available as :attr:`results`.

    Metrics: accuracy (``acc``) and the loss (``loss``) always; any torchmetrics ``Metric`` or
    ``MetricCollection`` in ``metrics`` besides, measured at the scopes of ``metric_scopes``
    (see :class:`~lightning_cl.evaluation.StreamMetrics`: an aggregation metric such as
    ``MeanMetric`` gets the loss, any other metric ``(logits, targets)``). Logged keys (through
    whatever Lightning logger the trainer has):

    - ``train/loss_step``, ``train/acc_step`` per step (when a progress bar or a logger shows
      them), ``train/loss_epoch``, ``train/acc_epoch`` per epoch; ``train/penalty/<method>``
      per step and ``train/penalty/<method>_epoch``; a user's metric ``<name>`` as
      ``train/<name>_step`` (scope ``"minibatch"``) and ``train/<name>_epoch`` (``"epoch"``).
    - ``val/<metric>/exp<j>``: on the experience's validation data, if it has any; during its
      fit also ``val/<metric>`` (``val/loss``, ``val/acc``), the same value under a key that is
      the same for every experience, for ``EarlyStopping`` and ``ReduceLROnPlateau``.
    - ``test/<metric>/exp<j>`` per test experience ``j`` (scope ``"experience"``), and
      ``test/<metric>/exp<j>/task<t>`` per task label of an experience that mixes tasks;
      ``test/<metric>/stream``: the metric over all samples of the tested stream (scope
      ``"stream"``, when it has more than one experience); ``experience``: the last trained
      experience. Non-scalar values (a confusion matrix) are not logged; they are kept in
      ``results.tensors``.

    Each of these also logs ``step`` = optimizer steps over all experiences so far, so the
    steps of successive trainers never collide in a shared logger.

    Args:
        model: the network; called as ``model(x, task_labels)`` when its ``forward`` has a
            ``task_labels`` parameter, else as ``model(x)``.
        criterion: the task loss (default: cross-entropy).
        optimizer: factory ``params -> Optimizer`` (a ``functools.partial``, or
            ``class_path``/``init_args`` in YAML). Default: SGD, lr 0.01, momentum 0.9.
        lr_scheduler: optional factory ``optimizer -> LRScheduler``, stepped per epoch, built
            afresh at every experience (so a schedule restarts with each); a ``ReduceLROnPlateau``
            monitors ``val/loss`` where the experience has validation data, else
            ``train/loss_epoch``.
        optimizer_policy: at each new experience, ``"reset"`` builds a fresh optimizer (no
            state); ``"keep"`` carries the state (momentum, Adam moments) of every parameter that
            already existed with the same shape.
        on_nonfinite: what a ``nan`` or ``inf`` task loss or penalty does: ``"raise"`` (default)
            stops the run with :class:`NonFiniteLossError` naming the experience, the step and
            the term, before the optimizer step; ``"warn"`` warns once per experience and goes on.
        metrics: the metrics to measure besides accuracy and loss: a torchmetrics ``Metric``, a
            ``MetricCollection``, or ``{name: Metric}`` (in YAML, ``model.metrics`` with a
            ``class_path`` per name), for example ``{"f1": MulticlassF1Score(num_classes=10)}``,
            ``MulticlassAccuracy(num_classes=10, top_k=5)``, ``MulticlassAccuracy(average=None)``
            (class accuracy, whose stream value feeds AMCA) or ``MulticlassConfusionMatrix``.
        metric_scopes: where ``metrics`` are measured, among ``("minibatch", "epoch",
            "experience", "stream")``; training steps and epochs cost their compute there.

    Raises:
        ValueError: for an unknown ``optimizer_policy``, ``on_nonfinite`` or scope, no scope for
            the given ``metrics``, a ``model`` that is not a ``torch.nn.Module``, or ``metrics``
            that are not torchmetrics metrics (or use the names ``acc`` / ``loss``).

    Example:
        >>> from lightning_cl.models import MLP
        >>> module = ContinualModule(MLP(num_classes=10, input_size=64))
        >>> module.current_experience is None
        True
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        optimizer_policy: Literal["reset", "keep"] = "reset",
        on_nonfinite: Literal["raise", "warn"] = "raise",
        metrics: Metric | MetricCollection | Mapping[str, Metric] | None = None,
        metric_scopes: Sequence[str] = ("experience", "stream"),
    ):
        super().__init__()
        scopes = [metric_scopes] if isinstance(metric_scopes, str) else list(metric_scopes)
        bad = [s for s in scopes if s not in METRIC_SCOPES]
        if bad:
            raise ValueError(f"metric_scopes must be among {METRIC_SCOPES}, got {bad}")
        self.metric_scopes = tuple(scopes)
        self.user_metrics = nn.ModuleDict(metric_dict(metrics))
        if len(self.user_metrics) and not self.metric_scopes:
            raise ValueError(
                f"metric_scopes=() measures the metrics {list(self.user_metrics)} nowhere; give at least "
                f"one of {METRIC_SCOPES} (default: ('experience', 'stream')), or leave the metrics out"
            )
        if optimizer_policy not in OPTIMIZER_POLICIES:
            raise ValueError(
                f"optimizer_policy must be one of {OPTIMIZER_POLICIES}, got {optimizer_policy!r}"
            )
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self._warned_nonfinite = False
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.optimizer_factory: OptimizerCallable = optimizer if optimizer is not None else _sgd
        self.scheduler_factory = lr_scheduler
        self.optimizer_policy = optimizer_policy
        self._takes_task_labels = "task_labels" in inspect.signature(model.forward).parameters
        self.current_experience: int | None = None
        self.seen_classes: set[int] = set()
        self.metric_matrices = MetricMatrices()
        self.metric_matrices.add("accuracy", higher_is_better=True)
        self.steps_before_experience = 0
        self._fit_finished = True
        self._kept_optimizer_state: dict[str, dict[str, Any]] = {}
        self._eval_columns: list[int] = []
        self._eval_sizes: list[int] = []
        self.train_metrics: MetricCollection | None = None
        self.train_user_metrics = nn.ModuleDict()
        self.eval_metrics: StreamMetrics | None = None
        self._eval_cache: dict[tuple[Any, ...], StreamMetrics] = {}
        self._n_classes = 0
        self._penalty_sums: dict[str, Tensor] = {}
        self._penalty_steps = 0
        # Training steps whose predictions, targets and loss wait for one metric update.
        self._train_pending: list[tuple[Tensor, Tensor, Tensor, int]] = []
        self._train_pending_samples = 0
        # The callback that replaces the task loss, and the one that classifies at evaluation
        # (found once per fit or evaluation, so a step pays one attribute check for each).
        self._task_loss_owner: LossTerm | None = None
        self._eval_classifier: EvalClassifier | None = None
        # The callback that owns the optimisation step (manual optimisation), if any.
        self._optimisation_owner: OptimisationStep | None = None

    # ------------------------------------------------------------------ forward and loss
    @property
    def automatic_optimization(self) -> bool:
        """``False`` while the trainer whose fit found an :class:`OptimisationStep` owner holds the module.

        Lightning checks its automatic-optimisation settings (gradient clipping, accumulation)
        before ``setup``, when a new trainer already holds the module: that fit is automatic until
        its own set-up finds an owner, whatever the previous experience's fit had.
        """
        if getattr(self._trainer, _OWNED_BY_A_STEP, False):
            return False
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, automatic_optimization: bool) -> None:
        self._automatic_optimization = automatic_optimization

    def forward(self, x: Tensor, task_labels: Tensor | None = None) -> Tensor:
        if self._takes_task_labels:
            return self.model(x, task_labels)
        return self.model(x)

    @property
    def results(self) -> ContinualResults:
        """Every scalar metric's matrix so far (accuracy first), the CL metrics derived from each,
        and the non-scalar values (``results.tensors``)."""
        return self.metric_matrices.results()

    @property
    def accuracy_matrix(self) -> MetricMatrix:
        """The recorder of the accuracy matrix (``metric_matrices["accuracy"]``)."""
        return self.metric_matrices["accuracy"]

    def loss_terms(self) -> list[LossTerm]:
        """The trainer callbacks that add a term to the loss (every CL method), in list order."""
        trainer = self._trainer
        if trainer is None:
            return []
        return [c for c in trainer.callbacks if isinstance(c, LossTerm)]  # type: ignore[attr-defined]

    @property
    def global_step_all(self) -> int:
        """Optimizer steps over every experience so far (including the running fit)."""
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit" and not self._fit_finished:
            return self.steps_before_experience + self.global_step
        return self.steps_before_experience

    @property
    def draw_index(self) -> int:
        """A number of its own for each training batch of the stream: what methods seed a batch's draws with.

        :attr:`global_step_all` without gradient accumulation; with ``accumulate_grad_batches=k``,
        ``k * global_step_all`` plus the batch's place in its accumulation (its index in the epoch
        modulo ``k``), so the micro-batches of one optimizer step draw different samples. It
        depends only on the stream position, so a resumed run draws what the uninterrupted one drew.
        """
        step = self.global_step_all
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or self._fit_finished:
            return step
        every = int(trainer.accumulate_grad_batches)
        if every == 1:
            return step
        return step * every + int(trainer.fit_loop.epoch_loop.batch_idx) % every

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if self._optimisation_owner is not None:
            self._owned_training_step(self._optimisation_owner, batch)
            return None
        x, y, t = merge_batch(batch)
        logits = self(x, t)
        owner = self._task_loss_owner
        replaced = None if owner is None else owner.task_loss(self, (x, y, t), logits, batch_parts(batch))
        task_loss = self.criterion(logits, y) if replaced is None else replaced
        loss, penalties = self.add_penalties(task_loss, (x, y, t), logits)
        self._check_finite(loss, task_loss, penalties)
        self._record_train_step(loss, logits, y, penalties)
        return loss

    def add_penalties(self, loss: Tensor, batch: Batch, logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``loss`` plus the :meth:`~LossTerm.penalty` of every loss-term callback of the trainer.

        For a callback that owns the optimisation step (:class:`~lightning_cl.models.OptimisationStep`):
        what ``training_step`` adds to the task loss under automatic optimisation, added to a
        loss of the owner's inner loop.

        Args:
            loss: a scalar loss on ``batch``.
            batch: the ``(x, y, t)`` the loss was computed on.
            logits: the logits of ``batch``, part of the graph.

        Returns:
            The sum, and each term by callback name (detached, float32: ``StepResult.penalties``).
        """
        penalties: dict[str, Tensor] = {}
        for callback in self.loss_terms():
            term = callback.penalty(self, batch, logits)
            if term is not None:
                loss = loss + term
                penalties[callback.name] = term.detach().float()
        return loss, penalties

    def _owned_training_step(self, owner: OptimisationStep, batch: Any) -> None:
        x, y, t = merge_batch(batch)
        trainer = self.trainer
        before = trainer.global_step
        result = owner.optimisation_step(self, (x, y, t), batch_parts(batch), self.optimizers())  # type: ignore[arg-type]
        result = check_step_result(owner, result, len(y))
        steps = trainer.global_step - before
        if steps == 0:
            # The owner wrote the weights itself: the step is counted here, as Lightning counts
            # an `optimizer.step()` in manual optimisation.
            progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
        elif steps > 1:
            raise MisconfigurationException(
                f"{type(owner).__name__}.optimisation_step called optimizer.step() {steps} times in one "
                "training step; an owner of the optimisation step calls it at most once (inner steps "
                "update the weights without the module's optimizer)"
            )
        penalties = {k: v.detach().float() for k, v in result.penalties.items()}
        loss = result.loss.detach()
        self._check_finite(loss, loss, penalties)
        self._record_train_step(loss, result.logits.detach(), y, penalties)

    def _record_train_step(
        self, loss: Tensor, logits: Tensor, y: Tensor, penalties: dict[str, Tensor]
    ) -> None:
        n = len(y)
        assert self.train_metrics is not None
        for name, term in penalties.items():
            self._penalty_sums[name] = self._penalty_sums.get(name, 0.0) + term
        self._penalty_steps += 1
        preds = logits.detach().argmax(dim=-1)
        if self.train_user_metrics:
            self._update_train_user_metrics(logits.detach(), y, loss.detach())
        # Epoch values, logged once in `on_train_epoch_end`. Each `self.log` call costs Lightning
        # ~0.3 ms, so step values are logged only when something shows them; otherwise the
        # step's predictions and loss wait, and update the metrics in one call (a torchmetrics
        # update costs more Python than a small model's step).
        if not self._step_values_shown():
            self._train_pending.append((preds, y, loss.detach(), n))
            self._train_pending_samples += n
            if self._train_pending_samples >= _PENDING_SAMPLES:
                self._flush_train_metrics()
        else:
            accuracy = self.train_metrics["acc"]
            self.train_metrics["loss"].update(loss.detach(), n)
            batch_accuracy = accuracy(preds, y)  # forward: the batch's value, and the epoch's state updated
            for name, term in penalties.items():
                self.log(f"train/penalty/{name}", term, on_step=True, on_epoch=False, batch_size=n)
            self.log("train/acc_step", batch_accuracy, on_step=True, on_epoch=False, batch_size=n)
            self.log(
                "train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=n
            )
            self.log("step", float(self.global_step_all), on_step=True, on_epoch=False, batch_size=n)

    def _update_train_user_metrics(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        shown = "minibatch" in self.metric_scopes and self._step_values_shown()
        if not shown and "epoch" not in self.metric_scopes:
            return
        logits = pad_logits(logits, self._n_classes)
        for name, module in self.train_user_metrics.items():
            metric: Metric = module  # type: ignore[assignment]
            inputs = (loss,) if takes_loss(metric) else (logits, y)
            if not shown:
                metric.update(*inputs)
                continue
            value = metric(*inputs)  # forward: the batch's value, and the epoch's state updated
            if value.numel() == 1:
                self.log(f"train/{name}_step", value, on_step=True, on_epoch=False, batch_size=len(y))

    def _check_finite(self, loss: Tensor, task_loss: Tensor, penalties: dict[str, Tensor]) -> None:
        if math.isfinite(loss.detach().item()):  # one read of the scalar (isfinite + bool: two ops)
            return
        terms = {
            "task loss": task_loss.detach().float(),
            **{f"penalty of {k}": v for k, v in penalties.items()},
        }
        bad = ", ".join(f"{k} = {float(v)}" for k, v in terms.items() if not math.isfinite(float(v)))
        message = (
            f"non-finite training loss in experience {self.current_experience}, step "
            f"{self.global_step} of the experience ({self.global_step_all} over the stream): {bad}. "
            "Lower the learning rate or the method's strength; ContinualModule(on_nonfinite='warn') goes on"
        )
        if self.on_nonfinite == "raise":
            raise NonFiniteLossError(message)
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(message)

    def _step_values_shown(self) -> bool:
        """Whether this step's values reach anyone: a progress bar, or a logger at its cadence."""
        trainer = self.trainer
        if trainer.progress_bar_callback is not None:
            return True
        every = int(getattr(trainer, "log_every_n_steps", 50))
        return bool(trainer.loggers) and (trainer.global_step + 1) % every == 0

    def _flush_train_metrics(self) -> None:
        """Update the epoch's accuracy and mean loss with the steps held since the last flush."""
        pending, self._train_pending, self._train_pending_samples = self._train_pending, [], 0
        if not pending or self.train_metrics is None:
            return
        self.train_metrics["acc"].update(
            torch.cat([p for p, _, _, _ in pending]), torch.cat([y for _, y, _, _ in pending])
        )
        losses = torch.stack([loss.float().reshape(()) for _, _, loss, _ in pending])
        weights = torch.tensor([float(n) for _, _, _, n in pending], device=losses.device)
        self.train_metrics["loss"].update(losses, weights)

    def on_train_epoch_start(self) -> None:
        self._penalty_sums, self._penalty_steps = {}, 0
        self._train_pending, self._train_pending_samples = [], 0

    def on_train_epoch_end(self) -> None:
        assert self.train_metrics is not None
        self._flush_train_metrics()
        if self._optimisation_owner is not None:
            self._step_schedulers_by_hand()
        for name, total in self._penalty_sums.items():
            # The epoch's mean penalty, the same on every rank up to the data each one saw.
            self.log(f"train/penalty/{name}_epoch", total / max(1, self._penalty_steps), on_epoch=True)
        self.log("train/acc_epoch", self.train_metrics["acc"], on_step=False, on_epoch=True)
        self.log("train/loss_epoch", self.train_metrics["loss"], on_step=False, on_epoch=True, prog_bar=True)
        for name, module in self.train_user_metrics.items():
            metric: Metric = module  # type: ignore[assignment]
            if "epoch" in self.metric_scopes and metric.update_count > 0:
                value = metric.compute()  # synchronised over processes by torchmetrics
                if value.numel() == 1:
                    self.log(f"train/{name}_epoch", value.reshape(()), on_step=False, on_epoch=True)
            metric.reset()
        # Epoch-level values are flushed after this hook: give them the stream-wide step too.
        self.log("step", float(self.global_step_all), on_step=False, on_epoch=True, reduce_fx="max")

    # ------------------------------------------------------------------ experience set-up
    def configure_callbacks(self) -> list[L.Callback]:
        # Lightning asks for these before any callback hook runs: an owner of the optimisation
        # step that is no Lightning callback is refused here, before its missing hooks fail.
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
        try:
            optimisation_step_owner(callbacks)
        except TypeError:
            # Lightning calls `on_exception` on each callback next: without what is no callback,
            # so that this error is the one the user sees.
            callbacks[:] = [c for c in callbacks if isinstance(c, L.Callback)]
            raise
        return []

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit":
            self._setup_fit(datamodule)
        elif stage in ("test", "validate"):
            self._setup_eval(datamodule)

    def _setup_fit(self, experience: Any) -> None:
        if not isinstance(experience, Experience):
            raise MisconfigurationException(
                "ContinualModule trains one experience per fit: call "
                "trainer.fit(module, datamodule=experience) with a lightning_cl Experience "
                "(for experience in benchmark.train_stream: ...), or fit_stream(module, benchmark), "
                f"got datamodule={type(experience).__name__}"
            )
        check_new_trainer(self.trainer)
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
        self._task_loss_owner = task_loss_owner(callbacks)
        self._optimisation_owner = optimisation_step_owner(callbacks)
        self._check_optimisation_owner()
        # Lightning reads it per batch and when it builds the optimizers, both after `setup`.
        # Marked on the trainer (not kept here): the next experience's trainer starts unmarked.
        setattr(self.trainer, _OWNED_BY_A_STEP, self._optimisation_owner is not None)
        self._eval_classifier = eval_classifier_of(callbacks)
        self._warned_nonfinite = False
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and getattr(strategy, "_start_method", "popen") in _SPAWNING:
            raise MisconfigurationException(
                f"strategy with start method {strategy._start_method!r} ({type(strategy).__name__}) "
                "hands back only the weights after each fit, so CL state (buffers, importances, "
                "grown heads) would be lost between experiences; use strategy='ddp' (launched as a "
                "script) or a single device"
            )
        data = experience.dataset
        adapted: list[str] = []
        for name, module in self.model.named_modules():
            # The outermost dynamic modules only: a multi-head classifier adapts its own heads.
            inside = any(not outer or name.startswith(f"{outer}.") for outer in adapted)
            if isinstance(module, DynamicModule) and not inside:
                module.adaptation(experience.classes_in_this_experience, data.task_labels, data.targets)
                adapted.append(name)
        # Training needs a logit for each class of this experience; a single head keeps the
        # units of earlier classes, and each task's head of a multi-head model covers its own.
        self._check_output_width(experience, max(experience.classes_in_this_experience) + 1)
        self.seen_classes = self.seen_classes | set(experience.classes_in_this_experience)
        self.current_experience = experience.index
        online = getattr(experience, "online", None)
        if online is not None:
            # A mini-experience trains on its origin experience's data: the matrix's pairing.
            self.metric_matrices.mark_trained(experience.index, online.origin_experience.index)
        self._fit_finished = False
        self._n_classes = experience.n_classes
        training_scopes = {"minibatch", "epoch"} & set(self.metric_scopes)
        if training_scopes and not self.train_user_metrics:
            self.train_user_metrics = nn.ModuleDict(
                {name: _fresh(m) for name, m in self.user_metrics.items()}  # type: ignore[arg-type]
            ).to(self.device)
        if self.train_metrics is None:
            self.train_metrics = MetricCollection(
                {
                    "acc": MulticlassAccuracy(
                        num_classes=experience.n_classes, average="micro", validate_args=False
                    ),
                    "loss": MeanMetric(),
                },
                compute_groups=False,
            )
        if experience.val_dataset is not None:
            tasks = getattr(experience.val_dataset, "task_labels", None)
            mixed = {experience.index: torch.unique(tasks).tolist()} if isinstance(tasks, Tensor) else None
            self._make_eval_metrics([experience.index], experience.n_classes, mixed)

    def _check_optimisation_owner(self) -> None:
        owner = self._optimisation_owner
        if owner is None:
            return
        name = type(owner).__name__
        if self._task_loss_owner is not None:
            raise MisconfigurationException(
                f"{name} owns the optimisation step and computes its own losses, so "
                f"{type(self._task_loss_owner).__name__}'s replaced task loss (LossTerm.task_loss) would "
                "never be used: keep one of them"
            )
        trainer = self.trainer
        if trainer.gradient_clip_val:
            raise MisconfigurationException(
                f"{name} owns the optimisation step (manual optimisation), where Lightning does not clip "
                f"gradients: remove Trainer(gradient_clip_val={trainer.gradient_clip_val}) (the method's "
                "own clipping option, where it has one, clips its updates)"
            )
        if trainer.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                f"{name} owns the optimisation step (manual optimisation), where Lightning does not "
                "accumulate gradients: remove "
                f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches})"
            )

    def _step_schedulers_by_hand(self) -> None:
        # Manual optimisation leaves the schedulers to the module: epoch-interval ones, as the
        # automatic loop steps them (a plateau scheduler on its monitored value, when logged).
        for config in self.trainer.lr_scheduler_configs:
            scheduler: Any = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                monitor = "val/loss" if "val/loss" in self.trainer.callback_metrics else "train/loss_epoch"
                value = self.trainer.callback_metrics.get(monitor)
                if value is None and self.train_metrics is not None:
                    value = self.train_metrics["loss"].compute()
                if value is not None:
                    scheduler.step(float(value))
            else:
                scheduler.step()

    def _check_output_width(self, experience: Experience, needed: int) -> None:
        x, _, t = experience.dataset.__getitems__([0])
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                width = self(x.to(self.device), t.to(self.device)).shape[-1]
        except RuntimeError as err:
            raise ValueError(
                f"the model cannot take the inputs of experience {experience.index}: one sample has "
                f"shape {tuple(x.shape[1:])} ({x[0].numel()} values) and the model failed on it with "
                f"{err}. Build the model for these inputs (for MLP: input_size={x[0].numel()})"
            ) from err
        finally:
            self.model.train(was_training)
        if width < needed:
            total = max(experience.n_classes, needed)
            raise ValueError(
                f"the model outputs {width} logits but the classes of experience {experience.index} "
                f"go up to {needed - 1}; it needs at least {needed} outputs, and {total} for the "
                f"benchmark's {experience.n_classes} classes (for MLP: num_classes={total}; or a "
                "dynamic head: IncrementalClassifier / MultiHeadClassifier)"
            )

    def _setup_eval(self, datamodule: Any) -> None:
        if isinstance(datamodule, Stream):
            columns, n_classes = datamodule.indices, datamodule.n_classes
            tasks = {e.index: e.task_labels for e in datamodule}
        elif isinstance(datamodule, Experience):
            columns, n_classes = [datamodule.index], datamodule.n_classes
            tasks = {datamodule.index: datamodule.task_labels}
        else:
            hint = (
                " (a Benchmark holds streams: pass benchmark.test_stream)"
                if isinstance(datamodule, Benchmark)
                else ""
            )
            raise MisconfigurationException(
                "ContinualModule evaluates a lightning_cl Stream or Experience: call "
                "trainer.test(module, datamodule=benchmark.test_stream), "
                f"got {type(datamodule).__name__}{hint}"
            )
        self._eval_classifier = eval_classifier_of(self.trainer.callbacks)  # type: ignore[attr-defined]
        self._make_eval_metrics(columns, n_classes, tasks)

    def _make_eval_metrics(
        self, columns: list[int], n_classes: int, tasks: Mapping[int, Sequence[int]] | None
    ) -> None:
        scopes = [s for s in self.metric_scopes if s in ("experience", "stream")]
        key = (tuple(columns), n_classes, tuple(sorted((c, tuple(t)) for c, t in (tasks or {}).items())))
        found = self._eval_cache.get(key)
        if found is None:
            # Built once per kind of evaluation (the test stream, an experience's validation
            # data) and reused: each `compute` resets the states.
            found = StreamMetrics(
                dict(self.user_metrics.items()),  # type: ignore[arg-type]
                columns,
                n_classes,
                scopes=scopes,
                task_labels=tasks,
            )
            if len(self._eval_cache) >= 4:
                self._eval_cache.pop(next(iter(self._eval_cache)))
            self._eval_cache[key] = found
        else:
            found.reset()  # nothing left from an evaluation that stopped half-way
        if found.device != self.device:  # moving walks every metric's states: only when needed
            found.to(self.device)
        self.eval_metrics = found

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.optimizer_policy == "keep" and self._kept_optimizer_state:
            self._restore_optimizer_state(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            experience = getattr(self._trainer, "datamodule", None)
            has_val = getattr(experience, "val_dataset", None) is not None
            config["monitor"] = "val/loss" if has_val else "train/loss_epoch"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _restore_optimizer_state(self, optimizer: Optimizer) -> None:
        for name, param in self.named_parameters():
            saved = self._kept_optimizer_state.get(name)
            if saved is None or saved["shape"] != tuple(param.shape):
                continue
            optimizer.state[param] = {
                k: v.to(param.device) if isinstance(v, Tensor) and v.ndim > 0 else v
                for k, v in saved["state"].items()
            }

    def _capture_optimizer_state(self) -> None:
        if not self.trainer.optimizers:
            return
        optimizer = self.trainer.optimizers[0]
        names: dict[Any, str] = {p: n for n, p in self.named_parameters()}
        self._kept_optimizer_state = {
            names[p]: {
                "shape": tuple(p.shape),
                "state": {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()},
            }
            for p, state in optimizer.state.items()
            if p in names
        }

    def on_fit_end(self) -> None:
        if self.optimizer_policy == "keep":
            self._capture_optimizer_state()
        self.steps_before_experience += self.global_step
        self._fit_finished = True

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, dataloader_idx: int) -> Tensor:
        x, y, t = merge_batch(batch)
        classifier = self._eval_classifier
        scores = None if classifier is None else classifier.eval_logits(self, x, t)
        logits = self(x, t) if scores is None else scores
        assert self.eval_metrics is not None
        # Narrower logits (a dynamic head before later classes exist) are padded to the classes.
        self.eval_metrics.update(dataloader_idx, logits, y, t)
        return logits

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Updates the evaluation metrics; returns the logits (for callbacks' ``on_test_batch_end``)."""
        return self._eval_step(batch, dataloader_idx)

    def _eval_epoch_end(self, stage: str) -> dict[str, float]:
        """Every metric per experience (and task) and over the stream; test values fill the matrices."""
        assert self.eval_metrics is not None
        measurements = self.eval_metrics.compute(self.trainer.world_size)
        several = len(self.eval_metrics.columns) > 1
        values = {
            m.key(stage): float(m.value.reshape(()))
            for m in measurements
            if m.scalar and (m.column is not None or several)
        }
        if stage == "val" and self.trainer.state.fn == "fit":
            # The experience being trained, under keys that do not name it (val/loss, val/acc,
            # val/<metric>): what EarlyStopping and ReduceLROnPlateau monitor over a stream.
            for m in measurements:
                if m.scalar and m.task is None and m.column == self.current_experience:
                    values[f"val/{m.name}"] = float(m.value.reshape(()))
        if stage == "test":
            # An aggregation metric receives the loss: lower is better unless it says otherwise.
            directions: dict[str, bool | None] = {}
            for name, metric in self.user_metrics.items():
                assert isinstance(metric, Metric)
                given = metric.higher_is_better
                directions[name] = False if given is None and takes_loss(metric) else given
            record_measurements(self.metric_matrices, self.current_experience, measurements, directions)
        for key, value in values.items():
            self.log(key, value, sync_dist=False, add_dataloader_idx=False)
        if self.current_experience is not None:
            self.log("experience", float(self.current_experience), add_dataloader_idx=False)
        self.log("step", float(self.global_step_all), add_dataloader_idx=False)
        return values

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._eval_epoch_end("val")
        elif self.eval_metrics is not None:
            self.eval_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_cl"] = {
            "current_experience": self.current_experience,
            "experience_complete": self._fit_finished,
            "seen_classes": sorted(self.seen_classes),
            "accuracy_matrix": self.metric_matrices["accuracy"].state_dict(),
            "metric_matrices": self.metric_matrices.state_dict(),
            "metric_names": sorted(self.user_metrics),
            "steps_before_experience": self.steps_before_experience,
            "kept_optimizer_state": self._kept_optimizer_state,
        }

    def check_checkpoint_metrics(self, checkpoint: Mapping[str, Any]) -> None:
        """Refuse a checkpoint written with other evaluation metrics than this module's ``metrics``.

        Its matrices hold the rows measured so far of the metrics it was written with: a metric
        added on resume would lack them, a dropped one would keep stale rows. Checkpoints written
        before the metric names were recorded are not checked.

        Raises:
            ValueError: naming both lists of metric names.
        """
        state = checkpoint.get("lightning_cl") or {}
        saved = state.get("metric_names")
        if saved is not None and sorted(saved) != sorted(self.user_metrics):
            raise ValueError(
                f"the checkpoint was written with the metrics {sorted(saved)}, this module has "
                f"{sorted(self.user_metrics)}: resume with the metrics of the run that wrote it "
                "(their matrices hold the rows measured so far)"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lightning_cl")
        if state is None:
            return
        self.check_checkpoint_metrics(checkpoint)
        self.current_experience = state["current_experience"]
        self.seen_classes = set(state["seen_classes"])
        if "metric_matrices" in state:
            self.metric_matrices.load_state_dict(state["metric_matrices"])
        else:  # a checkpoint written before every metric had its matrix
            self.metric_matrices = MetricMatrices()
            self.metric_matrices.add("accuracy", higher_is_better=True).load_state_dict(
                state["accuracy_matrix"]
            )
        self.steps_before_experience = state["steps_before_experience"]
        self._kept_optimizer_state = state["kept_optimizer_state"]
