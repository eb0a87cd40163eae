"""Batched transforms: each call transforms a whole batch ``(B, C, H, W)``, with per-sample randomness.

torchvision's ``transforms.v2`` accepts batched tensors, but its random transforms draw one set of
parameters per call: on a batch, every image would get the same crop and the same flip, which is
not the augmentation the benchmarks' papers (and Avalanche, transforming sample by sample) use.
The random transforms here draw their parameters per sample and apply them with one vectorised
indexing operation; the deterministic ones (normalisation, fixed rotation, pixel permutation) are
``transforms.v2`` calls or plain tensor indexing. All are ``torch.nn.Module`` objects, so they
compose with :class:`torchvision.transforms.v2.Compose` and pickle into loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "BatchRandomCrop",
    "BatchRandomHorizontalFlip",
    "BatchTransform",
    "Normalize",
    "PixelPermutation",
    "Rotation",
    "normalize",
]

BatchTransform = Callable[[Tensor], Tensor]


class Normalize(nn.Module):
    """``uint8`` batches to ``float32`` in [0, 1], then per-channel ``(x - mean) / std``.

    The same arithmetic as ``v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])``,
    through the ``transforms.v2`` kernels directly: this runs once per batch on the hot path, where
    the per-call dispatch of the transform classes is a measurable share of the time.

    Args:
        mean: per-channel means (of the [0, 1] values).
        std: per-channel standard deviations.

    Example:
        >>> Normalize((0.5,), (0.5,))(torch.zeros(1, 1, 1, 1, dtype=torch.uint8)).item()
        -1.0
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        # uint8 input: one conversion and two in-place ops, x * (1 / (255 std)) - mean / std.
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(-1, 1, 1)
        self._shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)]).view(-1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            if self._scale.device != x.device:  # moved once, not per batch
                self._scale, self._shift = self._scale.to(x.device), self._shift.to(x.device)
            return x.to(torch.float32).mul_(self._scale).sub_(self._shift)
        fresh = x.dtype != torch.float32  # the conversion made a new tensor: normalise it in place
        x = TF.to_dtype_image(x, torch.float32, scale=True)
        return TF.normalize_image(x, self.mean, self.std, inplace=fresh)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def normalize(mean: Sequence[float], std: Sequence[float]) -> Normalize:
    """``uint8`` batches to normalised ``float32``: ``(x / 255 - mean) / std`` (see :class:`Normalize`).

    Args:
        mean: per-channel means (of the [0, 1] values).
        std: per-channel standard deviations.

    Returns:
        A batched transform that accepts batches ``(B, C, H, W)``.

    Example:
        >>> t = normalize((0.5,), (0.5,))
        >>> t(torch.full((2, 1, 2, 2), 255, dtype=torch.uint8)).unique().tolist()
        [1.0]
    """
    return Normalize(mean, std)


class BatchRandomCrop(nn.Module):
    """Pad by ``padding`` on every side, then crop ``size`` at a random place drawn per sample.

    The batched form of ``RandomCrop(size, padding=padding)``. On normalised inputs pass
    ``fill=(-mean / std)`` per channel, so the padding is the normalised black that a crop of the
    raw image would have produced.

    Args:
        size: output height and width (an int for square crops).
        padding: pixels added on each side before cropping.
        fill: padding value, one number or one per channel.

    Raises:
        ValueError: for a negative padding or a crop larger than the padded image.

    Example:
        >>> crop = BatchRandomCrop(4, padding=1)
        >>> tuple(crop(torch.zeros(8, 3, 4, 4)).shape)
        (8, 3, 4, 4)
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0, fill: float | Sequence[float] = 0.0):
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.padding = int(padding)
        self.fill = [float(fill)] if isinstance(fill, int | float) else [float(f) for f in fill]

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.padding
        th, tw = self.size
        if th > h + 2 * p or tw > w + 2 * p:
            raise ValueError(f"crop {self.size} is larger than the padded image {(h + 2 * p, w + 2 * p)}")
        if p:
            fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device)
            padded = fill.reshape(1, -1, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
            padded[..., p : p + h, p : p + w] = x
        else:
            padded = x
        top = torch.randint(0, h + 2 * p - th + 1, (b,), device=x.device)
        left = torch.randint(0, w + 2 * p - tw + 1, (b,), device=x.device)
        rows = (top[:, None] + torch.arange(th, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(tw, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]

    def extra_repr(self) -> str:
        return f"size={self.size}, padding={self.padding}, fill={self.fill}"


class BatchRandomHorizontalFlip(nn.Module):
    """Flip each sample left-right with probability ``p``, drawn per sample.

    Args:
        p: flip probability.

    Raises:
        ValueError: if ``p`` is outside [0, 1].

    Example:
        >>> flip = BatchRandomHorizontalFlip(p=1.0)
        >>> flip(torch.arange(4.0).reshape(1, 1, 2, 2)).flatten().tolist()
        [1.0, 0.0, 3.0, 2.0]
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(flip.reshape(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PixelPermutation(nn.Module):
    """A fixed permutation of the pixels of every image (PermutedMNIST's domain shift).

    Args:
        permutation: a permutation of ``range(H * W)``; channels share it.

    Raises:
        ValueError: if ``permutation`` is not a permutation of ``range(len(permutation))``.

    Example:
        >>> t = PixelPermutation(torch.tensor([3, 2, 1, 0]))
        >>> t(torch.arange(4).reshape(1, 1, 2, 2)).flatten().tolist()
        [3, 2, 1, 0]
    """

    def __init__(self, permutation: Tensor | Sequence[int]):
        super().__init__()
        perm = torch.as_tensor(permutation, dtype=torch.long).reshape(-1)
        if not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError(f"permutation must hold each of 0..{len(perm) - 1} exactly once")
        self.permutation = perm

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(-2)
        if flat.shape[-1] != len(self.permutation):
            raise ValueError(f"images have {flat.shape[-1]} pixels, the permutation {len(self.permutation)}")
        # gather with a broadcast index: the fastest pixel shuffle on CPU (2x index_select for uint8).
        if self.permutation.device != flat.device:  # moved once, not per batch
            self.permutation = self.permutation.to(flat.device)
        return flat.gather(-1, self.permutation.expand_as(flat)).reshape(x.shape)


class Rotation(nn.Module):
    """Rotate every image by the same fixed ``angle`` (degrees, counter-clockwise; RotatedMNIST).

    Pixels rotated in from outside the image are ``fill`` (black for raw images).

    Args:
        angle: rotation in degrees.
        fill: value of the pixels coming from outside the image.

    Example:
        >>> tuple(Rotation(90)(torch.zeros(2, 1, 5, 5, dtype=torch.uint8)).shape)
        (2, 1, 5, 5)
    """

    def __init__(self, angle: float, fill: float = 0.0):
        super().__init__()
        self.angle = float(angle)
        self.fill = float(fill)

    def forward(self, x: Tensor) -> Tensor:
        return TF.rotate(x, self.angle, interpolation=v2.InterpolationMode.NEAREST, fill=[self.fill])

    def extra_repr(self) -> str:
        return f"angle={self.angle}"
