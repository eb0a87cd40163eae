"""Online streams: experiences cut into mini-experiences of a fixed size."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_cl.data.experience import Experience
from lightning_cl.data.stream import Stream

__all__ = ["OnlineOrigin", "split_online"]


@dataclass(frozen=True)
class OnlineOrigin:
    """Where a mini-experience of an online stream was cut from (Avalanche's names).

    ``Experience.online`` holds it for the mini-experiences that :func:`split_online` makes
    (``None`` for ordinary experiences).

    Args:
        origin_experience: the experience the mini-experience was cut from.
        is_first_subexp: first mini-experience of its origin experience.
        is_last_subexp: last mini-experience of its origin experience.
        sub_stream_length: number of mini-experiences cut from the origin experience.
        access_task_boundaries: whether methods may know where the origin experiences begin and
            end (Avalanche's flag; methods read it, the data does not change).
    """

    origin_experience: Experience
    is_first_subexp: bool
    is_last_subexp: bool
    sub_stream_length: int
    access_task_boundaries: bool = False


def split_online(
    stream: Stream,
    experience_size: int,
    *,
    shuffle: bool = True,
    seed: int | None = 0,
    drop_last: bool = False,
    access_task_boundaries: bool = False,
) -> Stream:
    """Cut every experience of ``stream`` into mini-experiences of ``experience_size`` samples.

    Mini-experiences are views of the origin experience's data (nothing copied) and are
    numbered ``0, 1, ...`` over the whole online stream. Each records, as its ``online``
    (an :class:`OnlineOrigin`), its ``origin_experience``, whether it is the first or last of its
    origin (``is_first_subexp``, ``is_last_subexp``), ``sub_stream_length``, and
    ``access_task_boundaries``: whether methods may use the boundaries between origin
    experiences (Avalanche's flag of the same name; methods read it, the data does not change).

    Args:
        stream: the stream to cut.
        experience_size: samples per mini-experience.
        shuffle: shuffle each experience's samples before cutting.
        seed: the shuffle seed (``None``: torch's global generator).
        drop_last: drop each experience's last mini-experience when it is smaller.
        access_task_boundaries: the flag set on every mini-experience.

    Returns:
        The online :class:`Stream`.

    Raises:
        ValueError: for ``experience_size < 1``, or a stream left empty by ``drop_last``.

    Example:
        >>> from lightning_cl.data import SplitDigits
        >>> online = split_online(SplitDigits(n_experiences=5).train_stream, 100)
        >>> len(online), online[0].online.origin_experience.index, online[2].online.is_last_subexp
        (15, 0, True)
    """
    if not isinstance(experience_size, int) or isinstance(experience_size, bool) or experience_size < 1:
        raise ValueError(f"experience_size must be a positive int, got {experience_size!r}")
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    minis: list[Experience] = []
    for exp in stream:
        n = len(exp.dataset)
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        chunks = list(torch.split(order, experience_size))
        if drop_last and len(chunks[-1]) < experience_size:
            chunks = chunks[:-1]
        for k, chunk in enumerate(chunks):
            view = exp.dataset.subset(chunk)
            minis.append(
                exp.replace(
                    dataset=view,
                    index=len(minis),
                    classes_in_this_experience=torch.unique(view.targets).tolist(),
                    val_dataset=None,
                    online=OnlineOrigin(
                        origin_experience=exp,
                        is_first_subexp=k == 0,
                        is_last_subexp=k == len(chunks) - 1,
                        sub_stream_length=len(chunks),
                        access_task_boundaries=access_task_boundaries,
                    ),
                )
            )
    if not minis:
        raise ValueError(
            f"experience_size={experience_size} with drop_last=True leaves no mini-experience; "
            f"the largest experience has {max(len(e) for e in stream)} samples"
        )
    return Stream(str(stream.name), minis)
