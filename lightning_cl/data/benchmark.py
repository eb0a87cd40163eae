"""A continual-learning benchmark: train and test streams (and optionally a validation stream)."""

from __future__ import annotations

import inspect
from typing import Any

from lightning_cl.data.stream import Stream

__all__ = ["SCENARIOS", "Benchmark", "build_benchmark"]

SCENARIOS = (
    "class_incremental",
    "task_incremental",
    "new_instances",
    "domain_incremental",
    "new_instances_and_classes",
)


AVALANCHE_NAMES: dict[str, tuple[str, str]] = {
    "return_task_id": ("task_labels", "task_labels=True"),
    "fixed_class_order": ("class_order", "class_order=[...]"),
    "dataset_root": ("root", "root=<the data folder>"),
    "shuffle": ("seed", "seed=<int> for a shuffled class order, seed=None for the sorted one"),
    "n_exp": ("n_experiences", "n_experiences=..."),
}
"""Avalanche's argument names that lightning_cl's benchmarks spell otherwise: ``name -> (ours, how)``."""


class Benchmark:
    """Train, test and (optionally) validation streams of one scenario.

    Args:
        train_stream: the experiences to train on, in order.
        test_stream: the experiences to evaluate on; experience ``j`` holds the same classes
            (and task label) as ``train_stream[j]``, or one experience holding the whole test
            set (new-instances scenarios such as CORe50's, as in Avalanche).
        n_classes: number of classes over the whole benchmark.
        class_order: the classes in the order the stream presents them.
        scenario: the scenario kind, one of :data:`SCENARIOS`.
        valid_stream: optional validation experiences, aligned with ``train_stream``.
        name: a name for tables and logs.

    Raises:
        ValueError: if the streams are not aligned or ``scenario`` is unknown.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> bench = SplitDigits(n_experiences=2)
        >>> Benchmark(bench.train_stream, bench.test_stream, n_classes=10, class_order=bench.class_order,
        ...           scenario="class_incremental").n_experiences
        2
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Benchmark:
        # Check the arguments against the signature of the class the user called, so that an error
        # names that class (not a private base) and translates Avalanche's argument names.
        try:
            inspect.signature(cls.__init__).bind(None, *args, **kwargs)
            unknown = [k for k in kwargs if k not in _init_parameters(cls)]
            if unknown:
                raise TypeError(f"unexpected keyword arguments {unknown}")
        except TypeError as err:
            raise TypeError(_argument_error(cls, kwargs, err)) from None
        return super().__new__(cls)

    def __init__(
        self,
        train_stream: Stream,
        test_stream: Stream,
        *,
        n_classes: int,
        class_order: list[int],
        scenario: str,
        valid_stream: Stream | None = None,
        name: str = "benchmark",
    ):
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
        if len(train_stream) != len(test_stream) and len(test_stream) != 1:
            raise ValueError(
                f"train and test streams differ in length: {len(train_stream)} != {len(test_stream)}; "
                "the test stream must have one experience per train experience, or one in all"
            )
        if valid_stream is not None and len(valid_stream) != len(train_stream):
            raise ValueError(
                f"valid stream has {len(valid_stream)} experiences, train stream {len(train_stream)}"
            )
        self.train_stream = train_stream
        self.test_stream = test_stream
        self.valid_stream = valid_stream
        self.n_classes = int(n_classes)
        self.class_order = list(class_order)
        self.scenario = scenario
        self.name = name

    @property
    def n_experiences(self) -> int:
        """Number of training experiences."""
        return len(self.train_stream)

    def on_exception(self, exception: BaseException) -> None:
        """Lightning's hook when a fit or test fails on its datamodule: a Benchmark is not one.

        ``trainer.fit(module, datamodule=benchmark)`` fails inside Lightning before any hook of
        lightning_cl runs; Lightning then calls this hook, which says what to pass instead.

        Raises:
            MisconfigurationException: always, naming what to pass instead.
        """
        from lightning.pytorch.utilities.exceptions import MisconfigurationException

        raise MisconfigurationException(
            f"a Benchmark ({self.name}) is not a datamodule: train on one experience at a time "
            "(for experience in benchmark.train_stream: trainer.fit(module, datamodule=experience)), "
            "test on a stream (trainer.test(module, datamodule=benchmark.test_stream)), or call "
            "fit_stream(module, benchmark)"
        ) from None

    def __repr__(self) -> str:
        rows = [
            f"{self.name}: {self.scenario}, {self.n_experiences} experiences, {self.n_classes} classes",
            f"  class order: {self.class_order}",
        ]
        aligned = len(self.test_stream) == len(self.train_stream)
        for i, tr in enumerate(self.train_stream):
            test = f", test {len(self.test_stream[i])}" if aligned else ""
            rows.append(
                f"  exp {tr.index}: classes {tr.classes_in_this_experience}, task {tr.task_labels}, "
                f"train {len(tr)}{test}"
            )
        if not aligned:
            rows.append(f"  test: one experience of {len(self.test_stream[0])} samples")
        return "\n".join(rows)


def _init_parameters(cls: type) -> list[str]:
    """The named arguments of ``cls.__init__``, following ``**kwargs`` to the base classes' ones."""
    names: list[str] = []
    for base in cls.__mro__:
        if "__init__" not in vars(base):
            continue
        params = inspect.signature(vars(base)["__init__"]).parameters.values()
        # A base reached through ``**kwargs`` gets some arguments from the subclass itself.
        given = vars(base).get("given_by_subclass", ()) if base is not cls else ()
        named = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        names += [n for n in named if n not in given]
        if all(p.kind != p.VAR_KEYWORD for p in params):
            break
    return [n for n in dict.fromkeys(names) if n != "self"]


def _argument_error(cls: type, kwargs: dict[str, Any], err: TypeError) -> str:
    params = _init_parameters(cls)
    unknown = [k for k in kwargs if k not in params]
    if not unknown:
        return f"{cls.__name__}(): {err}"
    hints = []
    for name in unknown:
        ours, how = AVALANCHE_NAMES.get(name, ("", ""))
        if ours in params:
            hints.append(f"{name!r} is Avalanche's name; here it is {ours!r}: pass {how}")
    message = f"{cls.__name__}() got unexpected keyword arguments {unknown}"
    if hints:
        message += "; " + "; ".join(hints)
    return f"{message}. Its arguments: {', '.join(params)}"


def build_benchmark(
    out: Benchmark | None, train_stream: Stream, test_stream: Stream, **fields: Any
) -> Benchmark:
    """A new :class:`Benchmark` of these streams, or ``out`` initialised with them.

    The scenario generators end here: a classic benchmark (``SplitMNIST``, a ``Benchmark``
    subclass) passes itself as ``out``, so the generator fills it in place instead of building
    a second benchmark to copy from.

    Args:
        out: the benchmark to initialise, or ``None`` for a new one.
        train_stream: the training stream.
        test_stream: the test stream.
        fields: the other arguments of :class:`Benchmark`.

    Returns:
        ``out``, or the new benchmark.
    """
    if out is None:
        return Benchmark(train_stream, test_stream, **fields)
    Benchmark.__init__(out, train_stream, test_stream, **fields)
    return out
