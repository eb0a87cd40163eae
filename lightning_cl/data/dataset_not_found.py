"""The error of a dataset whose files are not where the benchmark looks: path, layout and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["DatasetNotFoundError", "check_dataset_files"]


class DatasetNotFoundError(FileNotFoundError, RuntimeError):
    """A dataset's files are missing: the message names the path searched, the layout expected
    and how to get the files.

    It is a ``FileNotFoundError`` (and, as torchvision's own error, a ``RuntimeError``).
    """


def check_dataset_files(
    dataset: str,
    root: str | Path,
    required: Sequence[str],
    *,
    download: str | None = "pass download=True to fetch them",
) -> None:
    """Raise :class:`DatasetNotFoundError` unless every path in ``required`` exists under ``root``.

    Args:
        dataset: the dataset's name, for the message.
        root: the folder the benchmark was given.
        required: paths relative to ``root`` that must exist (the first names the dataset's folder).
        download: how to get the files (``None``: no hint).

    Raises:
        DatasetNotFoundError: naming the first missing path, the layout, and ``root`` one level
            too deep when it points inside the dataset's own folder.

    Example:
        >>> try:
        ...     check_dataset_files("MNIST", "/nowhere", ["MNIST/raw/train-images-idx3-ubyte"])
        ... except DatasetNotFoundError as err:
        ...     print(str(err).split(". ")[0])
        MNIST not found: /nowhere/MNIST/raw/train-images-idx3-ubyte does not exist
    """
    root = Path(root)
    missing = [rel for rel in required if not (root / rel).exists()]
    if not missing:
        return
    layout = ", ".join(f"<root>/{rel}" for rel in required[:3]) + (" ..." if len(required) > 3 else "")
    message = (
        f"{dataset} not found: {root / missing[0]} does not exist. "
        f"Expected layout: {layout}, with root={str(root)!r}"
    )
    top = Path(required[0]).parts[0]
    parts = root.resolve().parts
    if top in parts:  # root points inside the dataset's own folder: ".../MNIST" or ".../MNIST/raw"
        parent = Path(*parts[: parts.index(top)])
        if all((parent / rel).exists() for rel in required):
            raise DatasetNotFoundError(
                f"{message}; root points inside the dataset's folder {top!r}: pass root={str(parent)!r}"
            )
        else:
            message += f"; root points inside the dataset's folder {top!r}: pass the folder that holds it"
    if download:
        message += f"; {download}"
    raise DatasetNotFoundError(message)
