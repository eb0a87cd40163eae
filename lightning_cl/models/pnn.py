"""Progressive neural networks (Rusu et al., 2016): a column per task, lateral adapters from older columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cl.models.heads import MASK_VALUE, DynamicModule, IncrementalClassifier

__all__ = ["PNN_ADAPTERS", "ProgressiveNetwork"]

PNN_ADAPTERS = ("mlp", "linear")


class _Adapter(nn.Module):
    """The lateral connection into one layer of a column from the previous layer of the older columns.

    ``"mlp"`` (Rusu et al., 2016, Sec. 3, "Adapters"): ``U relu(V (alpha * h))`` on the
    concatenated activations ``h`` of the older columns, with a learned scalar ``alpha``
    initialised small and random, and ``V`` a projection onto as many units as the layer has;
    ``"linear"``: ``U h`` (the paper's plain lateral connections, Eq. 1).
    """

    def __init__(self, in_features: int, out_features: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.alpha = nn.Parameter(torch.rand(()) * 0.1 + 0.01)
            self.V = nn.Linear(in_features, out_features)
            self.U = nn.Linear(out_features, out_features, bias=False)
        else:
            self.U = nn.Linear(in_features, out_features, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        if self.kind == "mlp":
            return self.U(F.relu(self.V(self.alpha * h)))
        return self.U(h)


class _Column(nn.Module):
    """One column: ``hidden_layers`` ReLU layers (laterals into every one after the first) and a head."""

    def __init__(self, index: int, input_size: int, hidden_size: int, hidden_layers: int, adapter: str):
        super().__init__()
        widths = [input_size] + [hidden_size] * hidden_layers
        self.layers = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(hidden_layers))
        self.laterals = nn.ModuleList(
            _Adapter(index * widths[i], widths[i + 1], adapter) for i in range(1, hidden_layers) if index > 0
        )
        self.head = IncrementalClassifier(hidden_size)


class ProgressiveNetwork(DynamicModule):
    r"""A progressive neural network: one column per task label, each reading the older columns.

    Column :math:`k` computes, for layers :math:`i \ge 2` (Rusu et al., 2016, Eq. 1 with the
    non-linear adapters of Sec. 3),

    .. math::
        h^{(k)}_i = \mathrm{relu}\Big(W^{(k)}_i h^{(k)}_{i-1}
        + U^{(k)}_i\, \mathrm{relu}\big(V^{(k)}_i\, \alpha^{(k)}_i\,
        [h^{(1)}_{i-1}, \dots, h^{(k-1)}_{i-1}]\big)\Big),

    and the first layer :math:`h^{(k)}_1 = \mathrm{relu}(W^{(k)}_1 x)`. A sample goes to the column of
    its task label, whose own output layer (an :class:`IncrementalClassifier` over the task's
    classes) gives the logits; the older columns run only to feed it. Columns are added by the
    :class:`~lightning_cl.methods.PNN` callback when a new task label arrives, and the older
    ones are frozen then, so an earlier task's outputs never change.

    Choices, stated:

    - Laterals feed the hidden layers after the first; each column's output layer reads its own
      last hidden layer (Avalanche's ``PNN``, whose classifier is a multi-head on the columns'
      outputs). With ``hidden_layers=1`` the columns are independent networks.
    - ``adapter="mlp"`` (the paper's adapter for dense layers, Avalanche's default) or
      ``"linear"``.
    - Inputs are flattened. A sample whose task label has no column gets :data:`MASK_VALUE` logits.

    Args:
        input_size: number of input features after flattening.
        hidden_size: width of each column's hidden layers.
        hidden_layers: hidden layers per column (>= 1).
        adapter: ``"mlp"`` or ``"linear"``.

    Raises:
        ValueError: for a non-positive size, no hidden layer, or an unknown ``adapter``.

    Example:
        >>> net = ProgressiveNetwork(input_size=4, hidden_size=8)
        >>> net.add_column(0)
        >>> net.adaptation([0, 1], torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
        >>> net(torch.randn(3, 4), torch.zeros(3, dtype=torch.long)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self, input_size: int = 28 * 28, hidden_size: int = 100, hidden_layers: int = 2, adapter: str = "mlp"
    ):
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("hidden_layers", hidden_layers),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if adapter not in PNN_ADAPTERS:
            raise ValueError(f"adapter must be one of {PNN_ADAPTERS}, got {adapter!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.hidden_layers = hidden_layers
        self.adapter = adapter
        self.columns = nn.ModuleDict()

    @property
    def tasks(self) -> list[int]:
        """The task labels that have a column, in the order the columns were added."""
        return [int(t) for t in self.columns]

    def _new_column(self) -> _Column:
        column = _Column(
            len(self.columns), self.input_size, self.hidden_size, self.hidden_layers, self.adapter
        )
        ref = next(self.parameters(), None)
        if ref is not None:
            column.to(device=ref.device, dtype=ref.dtype)
        return column

    def add_column(self, task_label: int, freeze_old: bool = True) -> None:
        """Add a column for ``task_label`` (nothing if it has one); ``freeze_old`` freezes the others.

        Raises:
            ValueError: for a negative task label.
        """
        task = int(task_label)
        if task < 0:
            raise ValueError(f"task_label must be >= 0, got {task_label!r}")
        if str(task) in self.columns:
            return
        if freeze_old:
            self.requires_grad_(False)
        self.columns[str(task)] = self._new_column()

    def adaptation(self, classes: Iterable[int], task_labels: Tensor, targets: Tensor) -> None:
        """Grow the output layer of each task's column to the task's classes.

        Raises:
            ValueError: for a task label without a column (the ``PNN`` callback adds them).
        """
        for task in torch.unique(task_labels).tolist():
            column = self.columns[str(task)] if str(task) in self.columns else None
            if column is None:
                raise ValueError(
                    f"task label {task} has no column of the ProgressiveNetwork (its columns are for "
                    f"tasks {self.tasks}): add lightning_cl.methods.PNN() to the callbacks, which adds a "
                    "column for each new task label"
                )
            assert isinstance(column, _Column)
            column.head.adaptation(torch.unique(targets[task_labels == task]).tolist())

    def _column_output(self, x: Tensor, k: int) -> Tensor:
        columns = cast(list[_Column], list(self.columns.values())[: k + 1])
        hs = [F.relu(col.layers[0](x)) for col in columns]
        for i in range(1, self.hidden_layers):
            new = []
            for j, col in enumerate(columns):
                pre = col.layers[i](hs[j])
                if j > 0:
                    pre = pre + col.laterals[i - 1](torch.cat(hs[:j], dim=1))
                new.append(F.relu(pre))
            hs = new
        return columns[k].head(hs[k])

    def forward(self, x: Tensor, task_labels: Tensor) -> Tensor:
        x = x.flatten(1)
        order = {t: k for k, t in enumerate(self.tasks)}
        tasks = torch.unique(task_labels).tolist()
        if len(tasks) == 1 and tasks[0] in order:
            return self._column_output(x, order[tasks[0]])
        outs = {t: self._column_output(x[task_labels == t], order[t]) for t in tasks if t in order}
        width = max((o.shape[1] for o in outs.values()), default=1)
        out = x.new_full((x.shape[0], width), MASK_VALUE)
        for t, o in outs.items():
            out[task_labels == t, : o.shape[1]] = o
        return out

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Columns missing here are created first, in the order of the saved keys (the order added).
        for key in state_dict:
            if key.startswith(prefix + "columns."):
                task = key[len(prefix) + len("columns.") :].split(".", 1)[0]
                if task not in self.columns:
                    self.columns[task] = self._new_column()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
