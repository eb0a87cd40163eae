"""What every contender of the speed suite shares: the workload, the data, timing and the result record.

This module imports only the standard library, ``torch`` and (lazily) ``torchvision``, so the
Avalanche contender can import it from its own virtual environment, where lightning_cl is not
installed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BATCH_SIZE",
    "CLOCKS",
    "EWC_LAMBDA",
    "LR",
    "MEAN",
    "MEM_SIZE",
    "MOMENTUM",
    "N_EXPERIENCES",
    "PHASE_WATCHERS",
    "SEED",
    "STD",
    "MnistTensors",
    "RunRecord",
    "Stopwatch",
    "add_common_arguments",
    "class_order_for_seed",
    "current_rss_mb",
    "default_data_root",
    "load_mnist",
    "now",
    "peak_rss_mb",
    "reset_peak_rss",
    "split_by_class",
    "use_clock",
    "write_record",
]

# The workload of issue 5: SplitMNIST-shaped, class-incremental, MLP 784-512-10 with dropout 0.5.
N_EXPERIENCES = 5
SEED = 1
BATCH_SIZE = 128
LR = 0.01
MOMENTUM = 0.9
MEM_SIZE = 500
EWC_LAMBDA = 100.0
"""lightning_cl's ``ewc_lambda`` (paper's ``lambda/2``, per-sample Fisher); see ``avalanche_ewc_lambda``."""
MEAN, STD = 0.1307, 0.3081
N_CLASSES = 10


def avalanche_ewc_lambda(ewc_lambda: float = EWC_LAMBDA, batch_size: int = BATCH_SIZE) -> float:
    """Avalanche's ``ewc_lambda`` for the same penalty strength as lightning_cl's ``ewc_lambda``.

    Avalanche omits the ``1/2`` of the paper and squares minibatch-mean gradients, whose values are
    about ``batch_size`` times smaller than the per-sample Fisher: ``lambda * batch_size / 2``.
    """
    return ewc_lambda * batch_size / 2


def default_data_root() -> Path | None:
    """The folder holding ``MNIST/raw``: ``$LIGHTNING_CL_DATA``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("LIGHTNING_CL_DATA")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[2] / "shared" / "data"
    return guess if guess.is_dir() else None


def has_mnist(root: str | Path | None) -> bool:
    """Whether ``root/MNIST/raw`` holds torchvision's four MNIST files."""
    if root is None:
        return False
    raw = Path(root) / "MNIST" / "raw"
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    return all((raw / n).exists() or (raw / f"{n}.gz").exists() for n in names)


def class_order_for_seed(seed: int = SEED, n_classes: int = N_CLASSES) -> list[int]:
    """lightning_cl's class order for ``seed`` (``resolve_class_order``), recomputed without importing it.

    ``run.py`` checks it against ``SplitMNIST(...).class_order`` before handing it to Avalanche.
    """
    perm = torch.randperm(n_classes, generator=torch.Generator().manual_seed(int(seed)))
    return perm.tolist()


@dataclass
class MnistTensors:
    """MNIST (or a synthetic stand-in of its shape) as ``uint8`` images ``(N, 1, 28, 28)`` and labels."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str
    """``"real"`` or ``"synthetic"``."""


def _subsample(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    if fraction >= 1.0:
        return x, y
    n = max(N_CLASSES * 20, round(len(y) * fraction))
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[keep].contiguous(), y[keep].contiguous()


def _synthetic(n: int, seed: int, prototypes: Tensor) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    noise = torch.randint(0, 160, (n, 784), generator=g, dtype=torch.int16)
    x = (prototypes[y].to(torch.int16) // 2 + noise).clamp(0, 255).to(torch.uint8)
    return x.view(n, 1, 28, 28), y


def load_mnist(root: str | Path | None, fraction: float = 1.0, seed: int = 0) -> MnistTensors:
    """MNIST from ``root`` (torchvision's layout), or synthetic data of its shape when the files are absent.

    Args:
        root: folder holding ``MNIST/raw``.
        fraction: keep this fraction of each split (a fixed random subset), for quick runs.
        seed: seed of the subset.

    Returns:
        The four tensors and where they came from. Synthetic data has one noisy prototype image
        per class, so accuracies stay meaningful as a sanity check.
    """
    if has_mnist(root):
        from torchvision.datasets import MNIST

        train = MNIST(root=str(root), train=True, download=False)
        test = MNIST(root=str(root), train=False, download=False)
        tr = _subsample(train.data.unsqueeze(1), train.targets, fraction, seed)
        te = _subsample(test.data.unsqueeze(1), test.targets, fraction, seed + 1)
        return MnistTensors(tr[0], tr[1], te[0], te[1], "real")
    prototypes = torch.randint(0, 256, (N_CLASSES, 784), generator=torch.Generator().manual_seed(1234))
    n_train, n_test = int(60000 * min(fraction, 1.0)), int(10000 * min(fraction, 1.0))
    tr = _synthetic(max(n_train, 200), 10, prototypes)
    te = _synthetic(max(n_test, 200), 11, prototypes)
    return MnistTensors(tr[0], tr[1], te[0], te[1], "synthetic")


def split_by_class(targets: Tensor, class_order: Sequence[int], n_experiences: int) -> list[Tensor]:
    """Indices of each experience: the classes of ``class_order`` in consecutive equal groups."""
    k = len(class_order) // n_experiences
    groups = [list(class_order[i * k : (i + 1) * k]) for i in range(n_experiences)]
    return [torch.isin(targets, torch.tensor(g)).nonzero().flatten() for g in groups]


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""The clocks a measurement can read: wall time, or the CPU time of this process (every thread).

CPU time leaves out the time the process waits for a core, the largest part of the spread
between two runs on a shared machine; for the single-threaded contenders (one torch thread,
loaders in the main process) it is the work done. Wall time is the default."""
_clock: list[Callable[[], float]] = [time.perf_counter]


def use_clock(name: str) -> None:
    """Make :func:`now` (and every :class:`Stopwatch`) read clock ``name`` of :data:`CLOCKS`.

    Raises:
        ValueError: for a name not in :data:`CLOCKS`.
    """
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {name!r}")
    _clock[0] = CLOCKS[name]


def now() -> float:
    """Seconds on the clock chosen by :func:`use_clock` (wall time unless changed)."""
    return _clock[0]()


PHASE_WATCHERS: dict[str, Any] = {}
"""Per phase name, an object with ``enable()`` and ``disable()`` (a ``cProfile.Profile``) that every
:meth:`Stopwatch.phase` of that name switches on for its body: how ``overhead.py --attribute``
profiles the train and eval phases of a contender's own ``run`` apart. Empty unless set."""


class Stopwatch:
    """Accumulates time by phase (``train``, ``eval``, ...) on the clock of :func:`now`."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body and add it to ``name``'s total."""
        watcher = PHASE_WATCHERS.get(name)
        start = now()
        if watcher is not None:
            watcher.enable()
        try:
            yield
        finally:
            if watcher is not None:
                watcher.disable()
            self.totals[name] = self.totals.get(name, 0.0) + now() - start

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to ``name``'s total."""
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    def __getitem__(self, name: str) -> float:
        return self.totals.get(name, 0.0)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (since the last :func:`reset_peak_rss`, on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs``); whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class RunRecord:
    """What one contender process measured on the whole stream; written as JSON for ``run.py``.

    Times are wall-clock seconds. ``train_s`` covers training every experience including the
    method's end-of-experience work (buffer update, Fisher); ``eval_s`` the test passes over the
    whole test stream; ``total_s`` the whole stream loop (both, plus anything between, such as
    building a Trainer), without start-up and data loading (``setup_s``).
    """

    contender: str
    method: str
    total_s: float
    train_s: float
    eval_s: float
    setup_s: float
    stream_samples: int
    """Training samples of the stream (current data only, replayed samples not counted)."""
    average_accuracy: float
    accuracy_matrix: list[list[float]]
    data_source: str
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.stream_samples / self.train_s if self.train_s > 0 else float("nan")


def write_record(record: RunRecord, path: str | Path | None) -> None:
    """Write ``record`` as JSON to ``path``, or to stdout when ``path`` is ``None``."""
    text = json.dumps(asdict(record))
    if path is None:
        sys.stdout.write(text + "\n")
    else:
        Path(path).write_text(text + "\n")


def average_of_last_row(matrix: list[list[float]]) -> float:
    """Average accuracy after the last experience over all experiences (the matrix is square)."""
    last = matrix[-1]
    return sum(last) / len(last)


def add_common_arguments(parser: Any) -> None:
    """The arguments every contender script takes (an ``argparse.ArgumentParser``)."""
    parser.add_argument("--method", required=True, choices=("naive", "replay", "ewc"))
    parser.add_argument("--data", default=None, help="folder holding MNIST/raw (synthetic data if absent)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of each split to use")
    parser.add_argument("--class-order", default=None, help="comma-separated class order (default: seed 1's)")
    parser.add_argument("--json", default=None, help="write the record here (default: stdout)")


def parse_class_order(text: str | None) -> list[int]:
    """``"1,7,..."`` to a list; ``None`` gives lightning_cl's order for seed 1."""
    if not text:
        return class_order_for_seed(SEED)
    return [int(c) for c in text.split(",")]


def torch_versions() -> dict[str, str]:
    """Python and torch versions of this process."""
    return {"python": platform.python_version(), "torch": torch.__version__}


def single_thread() -> None:
    """The workload's threading: one intra-op and one inter-op torch thread."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass
