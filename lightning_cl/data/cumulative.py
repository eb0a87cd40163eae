"""Cumulative and joint training streams: the reference points of continual learning."""

from __future__ import annotations

from lightning_cl.data.dataset_view import DatasetView
from lightning_cl.data.experience import Experience
from lightning_cl.data.stream import Stream

__all__ = ["cumulative", "joint"]


def _union(experiences: list[Experience]) -> Experience:
    last = experiences[-1]
    views = [e.dataset for e in experiences]
    if any(v.base is not views[0].base for v in views):
        raise ValueError(
            "cumulative and joint training join the experiences' data, which needs experiences of "
            "one base dataset (every stream built by lightning_cl's generators and benchmarks is)"
        )
    vals = [e.val_dataset for e in experiences]
    return last.replace(
        dataset=DatasetView.concat(views),
        classes_in_this_experience=sorted({c for e in experiences for c in e.classes_in_this_experience}),
        val_dataset=DatasetView.concat(vals) if all(v is not None for v in vals) else None,  # type: ignore[arg-type]
    )


def cumulative(stream: Stream) -> Stream:
    """Experience ``i`` of the result holds the data of experiences ``0..i`` of ``stream``.

    Training on it is Avalanche's ``Cumulative`` strategy (retrain on everything seen so far: an
    upper reference for methods that keep a memory). Each experience keeps its own ``index``,
    batch sizes and transforms, so the accuracy matrix lines up with the original stream's.

    Args:
        stream: a training stream whose experiences view one base dataset.

    Returns:
        The cumulative stream, with the same name.

    Raises:
        ValueError: if the experiences view different base datasets.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> stream = SplitDigits(n_experiences=5).train_stream
        >>> [e.classes_in_this_experience for e in cumulative(stream)][:3]
        [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
        >>> sum(len(e) for e in stream[:3]) == len(cumulative(stream)[2])
        True
    """
    experiences = list(stream)
    return Stream(str(stream.name), [_union(experiences[: i + 1]) for i in range(len(experiences))])


def joint(stream: Stream) -> Stream:
    """One experience holding all the data of ``stream``: joint (offline) training.

    The non-continual upper bound (Avalanche's ``JointTraining``). The experience takes the
    ``index`` and settings of the stream's last experience, so evaluating on the test stream
    fills the last row of the accuracy matrix.

    Args:
        stream: a training stream whose experiences view one base dataset.

    Returns:
        A stream of one experience.

    Raises:
        ValueError: if the experiences view different base datasets.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> stream = SplitDigits(n_experiences=5).train_stream
        >>> (only,) = joint(stream)
        >>> only.index, only.classes_in_this_experience == list(range(10)), len(only) == sum(map(len, stream))
        (4, True, True)
    """
    return Stream(str(stream.name), [_union(list(stream))])
