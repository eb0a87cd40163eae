"""Expert Gate (Aljundi et al., 2017): an expert network per task, chosen by per-task autoencoders."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cl.models.backbones import MLP
from lightning_cl.models.heads import MASK_VALUE, DynamicModule, IncrementalClassifier

__all__ = ["ExpertGateNetwork", "GateAutoencoder"]


class GateAutoencoder(nn.Module):
    """The gate of one task: an undercomplete autoencoder whose reconstruction error scores inputs.

    ``sigmoid(decoder(relu(encoder(sigmoid(x)))))`` against ``sigmoid(x)``, as the paper's gate
    (Aljundi et al., 2017, Sec. 3.1: one hidden layer, ReLU, a sigmoid output on inputs squashed
    by a sigmoid).

    Args:
        input_size: the flattened input's size.
        code_size: width of the hidden code (smaller than ``input_size``).

    Example:
        >>> GateAutoencoder(8, 3).error(torch.zeros(2, 8)).shape
        torch.Size([2])
    """

    def __init__(self, input_size: int, code_size: int):
        super().__init__()
        self.encoder = nn.Linear(input_size, code_size)
        self.decoder = nn.Linear(code_size, input_size)

    def error(self, x: Tensor) -> Tensor:
        """The mean squared reconstruction error of each sample, shape ``(B,)``."""
        target = torch.sigmoid(x.flatten(1))
        out = torch.sigmoid(self.decoder(F.relu(self.encoder(target))))
        return F.mse_loss(out, target, reduction="none").mean(dim=1)

    def fit(
        self,
        x: Tensor,
        epochs: int,
        batch_size: int = 64,
        lr: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        """Train the gate alone on ``x`` (the paper's Sec. 3.1: before the task's expert).

        Adagrad on the mean squared reconstruction error, as the authors' code; mini-batches in a
        random order drawn from ``generator`` (every rank that passes the same generator and data
        trains the same gate). The gate's ``requires_grad`` flags are kept.

        Args:
            x: the task's inputs, ``(N, ...)``, on the gate's device.
            epochs: passes over ``x`` (>= 0).
            batch_size: samples per step (>= 1).
            lr: Adagrad's learning rate (> 0).
            generator: the order's random source (``None``: torch's global one).

        Raises:
            ValueError: for a negative ``epochs``, a ``batch_size`` below 1 or a non-positive ``lr``.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        flags = [p.requires_grad for p in self.parameters()]
        self.requires_grad_(True)
        optimizer = torch.optim.Adagrad(self.parameters(), lr=float(lr))
        try:
            with torch.enable_grad():
                for _ in range(epochs):
                    order = torch.randperm(len(x), generator=generator).to(x.device)
                    for rows in order.split(batch_size):
                        optimizer.zero_grad(set_to_none=True)
                        self.error(x[rows]).mean().backward()
                        optimizer.step()
        finally:
            for p, flag in zip(self.parameters(), flags):
                p.requires_grad_(flag)
                p.grad = None


class ExpertGateNetwork(DynamicModule):
    r"""A network of experts, one per task label, and a gate that picks the expert for each input.

    Each task has an expert (an :class:`~lightning_cl.models.MLP` with an incremental head over
    the task's classes) and a :class:`GateAutoencoder` trained on the task's data. In training
    mode a sample goes to the expert of its task label. In eval mode the task label is not used:
    the gate sends each sample to the expert whose autoencoder reconstructs it best (the paper's
    test-time routing, Sec. 3.1: the soft-max of :math:`-\mathrm{err}_k / t` is largest for the
    smallest error), and that expert's logits are the output, as wide as the widest expert
    (classes outside the expert's task get :data:`MASK_VALUE`). Experts are added by the
    :class:`~lightning_cl.methods.ExpertGate` callback.

    Args:
        input_size: number of input features after flattening.
        hidden_size: width of each expert's hidden layers.
        hidden_layers: hidden layers per expert.
        code_size: width of each autoencoder's code.

    Raises:
        ValueError: for a non-positive size, ``hidden_layers`` below 1, or a code not smaller than
            the input.

    Example:
        >>> net = ExpertGateNetwork(input_size=6, hidden_size=4, code_size=2)
        >>> net.add_expert(0)
        >>> net.adaptation([0, 1], torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
        >>> net.eval()(torch.randn(3, 6)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self, input_size: int = 28 * 28, hidden_size: int = 256, hidden_layers: int = 1, code_size: int = 32
    ):
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("code_size", code_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(hidden_layers, int) or isinstance(hidden_layers, bool) or hidden_layers < 1:
            raise ValueError(
                f"hidden_layers must be an int >= 1 (hidden layers per expert), got {hidden_layers!r}"
            )
        if code_size >= input_size:
            raise ValueError(
                f"code_size must be smaller than input_size={input_size} (an undercomplete code), "
                f"got {code_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.hidden_layers = hidden_layers
        self.code_size = code_size
        self.experts = nn.ModuleDict()
        self.gates = nn.ModuleDict()

    @property
    def tasks(self) -> list[int]:
        """The task labels that have an expert, in the order they were added."""
        return [int(t) for t in self.experts]

    def _new_expert(self) -> nn.Module:
        expert = MLP(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            hidden_layers=self.hidden_layers,
            drop_rate=0.0,
            head="incremental",
        )
        return self._like_me(expert)

    def _like_me(self, module: nn.Module) -> nn.Module:
        ref = next(self.parameters(), None)
        return module if ref is None else module.to(device=ref.device, dtype=ref.dtype)

    def add_expert(
        self, task_label: int, init_from: int | None = None, gate: GateAutoencoder | None = None
    ) -> None:
        """Add an expert and a gate for ``task_label``; the expert starts as a copy of ``init_from``'s.

        Every existing expert and gate is frozen (``requires_grad=False``); the new ones learn.

        Args:
            task_label: the new task.
            init_from: the task whose expert the new one copies (``None``: a fresh expert).
            gate: the task's gate, trained already (``None``: a fresh one).

        Raises:
            ValueError: for a task label that has an expert, an unknown ``init_from``, or a gate of
                other sizes.
        """
        task = str(int(task_label))
        if task in self.experts:
            raise ValueError(f"task {task_label} has an expert already (tasks: {self.tasks})")
        if init_from is not None and str(init_from) not in self.experts:
            raise ValueError(f"init_from must be one of the tasks {self.tasks}, got {init_from!r}")
        if gate is not None and (gate.encoder.in_features, gate.encoder.out_features) != (
            self.input_size,
            self.code_size,
        ):
            raise ValueError(
                f"the gate must map {self.input_size} inputs to a code of {self.code_size}, got "
                f"{gate.encoder.in_features} and {gate.encoder.out_features}"
            )
        self.requires_grad_(False)
        expert = self._new_expert() if init_from is None else copy.deepcopy(self.experts[str(init_from)])
        self.experts[task] = expert.requires_grad_(True)
        new_gate = gate if gate is not None else GateAutoencoder(self.input_size, self.code_size)
        self.gates[task] = self._like_me(new_gate).requires_grad_(True)

    def set_trainable(self, experts: Iterable[int] = (), gates: Iterable[int] = ()) -> None:
        """Let only the experts and gates of the given tasks learn (``requires_grad``); freeze the rest.

        Example:
            >>> net = ExpertGateNetwork(input_size=6, hidden_size=4, code_size=2)
            >>> net.add_expert(0); net.add_expert(1)
            >>> net.set_trainable(experts=[1])
            >>> [any(p.requires_grad for p in m.parameters()) for m in (net.experts["1"], net.gates["1"])]
            [True, False]
        """
        self.requires_grad_(False)
        for task in experts:
            self.experts[str(int(task))].requires_grad_(True)
        for task in gates:
            self.gates[str(int(task))].requires_grad_(True)

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` (``(B, ...)``) has :attr:`input_size` features, flattened.

        Example:
            >>> net = ExpertGateNetwork(input_size=6, hidden_size=4, code_size=2)
            >>> net.check_input(torch.zeros(3, 5))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: ExpertGateNetwork(input_size=6) got inputs of shape (3, 5), 5 features ...
        """
        features = int(x[0].numel()) if x.ndim > 1 else 1
        if x.ndim < 2 or features != self.input_size:
            raise ValueError(
                f"ExpertGateNetwork(input_size={self.input_size}) got inputs of shape {tuple(x.shape)}, "
                f"{features} features after flattening: build it with input_size={features}"
            )

    def errors(self, x: Tensor) -> Tensor:
        """Every gate's reconstruction error of each sample, ``(B, n_tasks)``, tasks as in :attr:`tasks`.

        Raises:
            ValueError: before any expert was added (no gate to ask), or for inputs of another
                size than :attr:`input_size`.
        """
        if not self.gates:
            raise ValueError(
                "ExpertGateNetwork has no expert yet (ExpertGate adds one per task when an experience "
                "is fitted): there is no gate to route samples"
            )
        self.check_input(x)
        return torch.stack([gate.error(x) for gate in self.gates.values()], dim=1)  # type: ignore[operator]

    def route(self, x: Tensor) -> Tensor:
        """The task label of the expert the gate picks for each sample (smallest error), ``(B,)``."""
        tasks = torch.tensor(self.tasks, device=x.device)
        return tasks[self.errors(x).argmin(dim=1)]

    def adaptation(self, classes: Iterable[int], task_labels: Tensor, targets: Tensor) -> None:
        """Grow each task's expert head to the task's classes.

        Raises:
            ValueError: for a task label without an expert (the ``ExpertGate`` callback adds them).
        """
        for task in torch.unique(task_labels).tolist():
            if str(task) not in self.experts:
                raise ValueError(
                    f"task label {task} has no expert in the ExpertGateNetwork (experts: {self.tasks}): add "
                    "lightning_cl.methods.ExpertGate() to the callbacks, which adds one per new task label"
                )
            head = cast(IncrementalClassifier, cast(MLP, self.experts[str(task)]).head)
            head.adaptation(torch.unique(targets[task_labels == task]).tolist())

    def forward(self, x: Tensor, task_labels: Tensor | None = None) -> Tensor:
        self.check_input(x)
        if not self.experts:
            # Before any experience (an evaluation of the untrained network): one masked logit.
            return x.new_full((x.shape[0], 1), MASK_VALUE)
        routes = task_labels if self.training and task_labels is not None else self.route(x)
        # As wide as the widest expert: every class the network knows has a column.
        heads = [cast(IncrementalClassifier, cast(MLP, e).head) for e in self.experts.values()]
        width = max((h.out_features for h in heads), default=1)
        out = x.new_full((x.shape[0], width), MASK_VALUE)
        for t in torch.unique(routes).tolist():
            if str(t) in self.experts:
                rows = routes == t
                logits = self.experts[str(t)](x[rows])
                out[rows, : logits.shape[1]] = logits
        return out

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        order: list[str] = []
        for key in state_dict:
            if key.startswith(prefix + "experts."):
                task = key[len(prefix) + len("experts.") :].split(".", 1)[0]
                if task not in self.experts:
                    self.experts[task] = self._new_expert()
                    self.gates[task] = self._like_me(GateAutoencoder(self.input_size, self.code_size))
                if task not in order:
                    order.append(task)
        # The saved order first (an expert added at set-up before a resume goes after): the
        # parameters, and the optimizer states restored by position, line up with the saved run.
        for task in [*order, *(t for t in self.experts if t not in order)]:
            self.experts[task] = self.experts._modules.pop(task)  # type: ignore[assignment]
            self.gates[task] = self.gates._modules.pop(task)  # type: ignore[assignment]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
