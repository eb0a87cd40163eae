"""SplitFMNIST and SplitKMNIST: MNIST-format datasets split by class, held in memory."""

from __future__ import annotations

from torchvision import datasets

from lightning_cl.data.mnist import _SplitIDX

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "KMNIST_MEAN", "KMNIST_STD", "SplitFMNIST", "SplitKMNIST"]

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
KMNIST_MEAN, KMNIST_STD = (0.1918,), (0.3483,)


class SplitFMNIST(_SplitIDX):
    """Fashion-MNIST split by class (Avalanche's ``SplitFMNIST``).

    Loads through :class:`torchvision.datasets.FashionMNIST` (``root/FashionMNIST/raw``);
    normalisation is Avalanche's (mean 0.2860, std 0.3530), no augmentation. 60,000 train and
    10,000 test images of 10 classes, held as ``uint8`` tensors.

    Arguments, defaults and errors are :class:`~lightning_cl.data.SplitMNIST`'s.

    Example:
        >>> SplitFMNIST("data", n_experiences=5).n_classes  # doctest: +SKIP
        10
    """

    dataset_class = datasets.FashionMNIST
    mean, std = FMNIST_MEAN, FMNIST_STD


class SplitKMNIST(_SplitIDX):
    """Kuzushiji-MNIST split by class.

    Avalanche has no KMNIST benchmark; this one follows SplitMNIST's protocol, with KMNIST's own
    training-set statistics for normalisation (mean 0.1918, std 0.3483). Loads through
    :class:`torchvision.datasets.KMNIST` (``root/KMNIST/raw``).

    Arguments, defaults and errors are :class:`~lightning_cl.data.SplitMNIST`'s.

    Example:
        >>> SplitKMNIST("data", n_experiences=2).n_experiences  # doctest: +SKIP
        2
    """

    dataset_class = datasets.KMNIST
    mean, std = KMNIST_MEAN, KMNIST_STD
