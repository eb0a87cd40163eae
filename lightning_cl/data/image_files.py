"""Image files on disk as a classification dataset: read in loader workers, batched at the end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from lightning_cl.data.transforms import BatchTransform

__all__ = ["IMAGE_EXTENSIONS", "ImageFilesDataset", "read_filelist"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def read_filelist(path: str | Path) -> list[tuple[str, int]]:
    """Read a Caffe-style file list: one ``relative/path.png label`` per line.

    Args:
        path: the text file.

    Returns:
        ``(path, label)`` pairs, in file order.

    Raises:
        ValueError: for a line that is not a path followed by an integer label.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "list.txt")
        >>> _ = open(f, "w").write("s1/o1/a.png 0\\ns1/o2/b.png 1\\n")
        >>> read_filelist(f)
        [('s1/o1/a.png', 0), ('s1/o2/b.png', 1)]
    """
    pairs = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{number}: expected 'path label', got {line.strip()!r}")
            pairs.append((fields[0], int(fields[1])))
    return pairs


class ImageFilesDataset(Dataset):
    """A list of image files and their labels; images are decoded when read, never all held in memory.

    Each sample is opened with PIL, converted to ``mode``, optionally cropped to a box and resized
    to ``size`` (so that samples of different sizes can be batched), and turned into a ``uint8``
    tensor ``(C, H, W)``. ``__getitems__`` stacks the samples of a batch and applies the batched
    ``transform`` (normalisation) once. Loaders with workers decode in parallel, batch by batch.

    Args:
        paths: image files (relative to ``root`` when given).
        targets: one integer label per file.
        root: folder the paths are relative to.
        size: ``(height, width)`` to resize every image to (``None``: keep; then all images must
            share one size to be batched).
        boxes: optional crop box per file, ``(top, left, height, width)``, applied before resizing.
        mode: PIL mode, ``"RGB"`` or ``"L"``.
        transform: batched transform of the stacked ``uint8`` batch.

    Raises:
        ValueError: if the lengths differ or ``mode`` is not ``"RGB"`` or ``"L"``.

    Example:
        >>> ds = ImageFilesDataset(["a.png", "b.png"], [0, 1], root="/data")
        >>> len(ds), ds.targets.tolist()
        (2, [0, 1])
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: Sequence[int] | Tensor,
        *,
        root: str | Path | None = None,
        size: tuple[int, int] | None = None,
        boxes: Sequence[tuple[int, int, int, int]] | None = None,
        mode: str = "RGB",
        transform: BatchTransform | None = None,
    ):
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if len(paths) != len(targets):
            raise ValueError(f"got {len(paths)} paths and {len(targets)} targets")
        if boxes is not None and len(boxes) != len(paths):
            raise ValueError(f"got {len(boxes)} boxes for {len(paths)} paths")
        base = Path(root) if root is not None else None
        self.paths = [str(base / p) if base is not None else str(p) for p in paths]
        self.targets = targets
        self.size = size
        self.boxes = list(boxes) if boxes is not None else None
        self.mode = mode
        self.transform = transform

    @classmethod
    def from_folder(cls, root: str | Path, **kwargs: object) -> ImageFilesDataset:
        """An image folder in torchvision's ``ImageFolder`` layout: ``root/<class name>/<image>``.

        Classes are numbered by their sorted folder names.

        Args:
            root: the folder.
            kwargs: further arguments of :class:`ImageFilesDataset` (``size``, ``mode``, ``transform``).

        Returns:
            The dataset, with ``classes`` (the folder names) set.

        Raises:
            ValueError: if ``root`` holds no class folder with images.
        """
        folder = Path(root)
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        paths: list[str] = []
        targets: list[int] = []
        for label, name in enumerate(classes):
            files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            paths += [str(p) for p in files]
            targets += [label] * len(files)
        if not paths:
            raise ValueError(f"{root} holds no images in class folders (root/<class>/<image>)")
        ds = cls(paths, targets, **kwargs)  # type: ignore[arg-type]
        ds.classes = classes
        return ds

    classes: list[str] = []

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Tensor:
        """Sample ``index`` as a ``uint8`` tensor ``(C, H, W)``, cropped and resized."""
        with Image.open(self.paths[index]) as img:
            img = img.convert(self.mode)
            if self.boxes is not None:
                top, left, height, width = self.boxes[index]
                img = img.crop((left, top, left + width, top + height))
            if self.size is not None and img.size != (self.size[1], self.size[0]):
                img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            return TF.pil_to_tensor(img)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = torch.stack([self.load(i) for i in idx.tolist()])
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[idx]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, size={self.size}, mode={self.mode!r})"
