"""A benchmark whose training experiences keep a random subset of their samples."""

from __future__ import annotations

import torch

from lightning_cl.data.benchmark import Benchmark, build_benchmark
from lightning_cl.data.stream import Stream

__all__ = ["SubsampledBenchmark", "subsample_train"]


def subsample_train(
    benchmark: Benchmark, samples_per_experience: int, *, seed: int | None = 0, out: Benchmark | None = None
) -> Benchmark:
    """``benchmark`` with every training experience cut to ``samples_per_experience`` random samples.

    The subset of each experience is drawn uniformly, without replacement and without regard to
    class (as continual-learning-baselines' ``restrict_dataset_size``, which MIR's and GSS's
    MNIST protocols use: 1,000 samples per experience). Nothing is copied: each experience
    becomes a view of its own samples. The test and validation streams are unchanged.

    Args:
        benchmark: the benchmark to cut.
        samples_per_experience: samples kept in every training experience (>= 1, at most the
            smallest experience's size).
        seed: the seed of the subsets (``None``: torch's global generator).
        out: a benchmark to initialise instead of a new one (see
            :func:`~lightning_cl.data.build_benchmark`).

    Returns:
        The new :class:`Benchmark` (or ``out``).

    Raises:
        ValueError: for ``samples_per_experience`` not an int >= 1, or larger than an experience.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> small = subsample_train(SplitDigits(n_experiences=5), 50, seed=0)
        >>> [len(e) for e in small.train_stream], len(small.test_stream[0]) > 50
        ([50, 50, 50, 50, 50], True)
    """
    n = samples_per_experience
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"samples_per_experience must be an int >= 1, got {n!r}")
    smallest = min(len(e.dataset) for e in benchmark.train_stream)
    if n > smallest:
        raise ValueError(
            f"samples_per_experience={n} exceeds the smallest training experience ({smallest} samples)"
        )
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    train = [
        e.replace(dataset=e.dataset.subset(torch.randperm(len(e.dataset), generator=g)[:n]))
        for e in benchmark.train_stream
    ]
    return build_benchmark(
        out,
        Stream(str(benchmark.train_stream.name), train),
        benchmark.test_stream,
        n_classes=benchmark.n_classes,
        class_order=benchmark.class_order,
        scenario=benchmark.scenario,
        valid_stream=benchmark.valid_stream,
        name=benchmark.name,
    )


class SubsampledBenchmark(Benchmark):
    """A benchmark whose training experiences keep ``samples_per_experience`` random samples each.

    The class form of :func:`subsample_train`, for configs: ``benchmark`` is any benchmark
    (``class_path`` and ``init_args`` in YAML); its test stream is kept whole.

    Args:
        benchmark: the benchmark to cut.
        samples_per_experience: samples kept in every training experience.
        seed: the seed of the subsets (``None``: torch's global generator).

    Raises:
        ValueError: as :func:`subsample_train`.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> bench = SubsampledBenchmark(SplitDigits(n_experiences=5), samples_per_experience=20, seed=1)
        >>> bench.n_experiences, len(bench.train_stream[4])
        (5, 20)
    """

    def __init__(self, benchmark: Benchmark, samples_per_experience: int = 1000, seed: int | None = 0):
        subsample_train(benchmark, samples_per_experience, seed=seed, out=self)
