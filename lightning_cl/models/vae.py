"""A small variational autoencoder: the generator of generative replay for MNIST-sized inputs."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MNIST_NORMALISED_RANGE", "VAE", "VAE_LIKELIHOODS"]

VAE_LIKELIHOODS = ("bernoulli", "gaussian")
"""The decoder's likelihoods: ``"bernoulli"`` (inputs in [0, 1]) or ``"gaussian"`` (any scale)."""

MNIST_NORMALISED_RANGE = ((0.0 - 0.1307) / 0.3081, (1.0 - 0.1307) / 0.3081)
"""The pixel range of MNIST under its usual normalisation (mean 0.1307, std 0.3081): about (-0.424, 2.821)."""


def _mlp(sizes: Sequence[int], batch_norm: bool, last_activation: bool) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, each hidden one followed by [batch norm and] ReLU."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    r"""A multilayer-perceptron VAE (Kingma and Welling, 2014) over inputs of one fixed shape.

    The encoder maps the flattened input through ReLU layers of ``encoder_sizes`` units (by
    default two of ``hidden_size``) to the mean :math:`\mu` and log-variance
    :math:`\log\sigma^2` of a diagonal Gaussian over ``latent_size`` codes; the decoder maps a
    code back through ReLU layers of ``decoder_sizes`` units to the input. :meth:`loss` is the
    negative evidence lower bound (Kingma and Welling, 2014, eq. 10), per sample, averaged over
    the batch:

    .. math:: -\log p(x \mid z) + \tfrac12 \sum_j (\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1),
              \quad z = \mu + \sigma \epsilon,\ \epsilon \sim \mathcal N(0, I)

    with :math:`-\log p(x \mid z)` the binary cross-entropy summed over the input's entries
    (``likelihood="bernoulli"``, the decoder ends in a sigmoid: inputs in [0, 1], as MNIST and
    SplitDigits are) or, with ``likelihood="gaussian"``, the squared error summed over them and
    divided by :math:`2 v` (``variance`` :math:`v`, the constant dropped): :math:`v = 1` is half
    the squared error, :math:`v = 1/2` the whole summed squared error of Avalanche's
    ``VAE_loss``. :meth:`sample` decodes codes drawn from the prior :math:`\mathcal N(0, I)` and
    returns the decoder's means (no pixel noise).

    ``output_range=(low, high)`` bounds the Gaussian decoder's means to that interval,
    :math:`low + (high - low)\,\mathrm{sigmoid}(\cdot)`: the pixel range of normalised inputs, so
    samples stay images the solver has seen the like of (Avalanche's ``MlpVAE`` ends in a sigmoid
    followed by MNIST's normalisation: ``output_range=MNIST_NORMALISED_RANGE``). ``batch_norm``
    puts a batch normalisation after every hidden linear layer, before its ReLU (as ``MlpVAE``).
    :meth:`avalanche_mlp_vae` builds ``MlpVAE``'s layout.

    Args:
        input_shape: the shape of one input, without the batch dimension (``(1, 8, 8)``).
        hidden_size: width of the two hidden layers of encoder and decoder where
            ``encoder_sizes`` / ``decoder_sizes`` are not given.
        latent_size: number of latent codes.
        likelihood: one of :data:`VAE_LIKELIHOODS`.
        encoder_sizes: widths of the encoder's hidden layers, input side first.
        decoder_sizes: widths of the decoder's hidden layers, code side first.
        batch_norm: batch normalisation after each hidden linear layer.
        output_range: ``(low, high)`` bounds of the Gaussian decoder's means, or ``None``
            (unbounded).
        variance: the Gaussian likelihood's variance :math:`v` (> 0).

    Raises:
        ValueError: for an empty or non-positive ``input_shape``, sizes that are not ints >= 1
            (or empty layer lists), an unknown ``likelihood``, an ``output_range`` that is not
            two finite numbers ``low < high`` or that is given with the Bernoulli likelihood, or
            a ``variance`` that is not a number > 0 (or other than 1 with the Bernoulli likelihood).

    Example:
        >>> vae = VAE((1, 8, 8), hidden_size=32, latent_size=4)
        >>> tuple(vae.sample(3, generator=torch.Generator().manual_seed(0)).shape)
        (3, 1, 8, 8)
        >>> float(vae.loss(torch.rand(5, 1, 8, 8)).detach()) > 0
        True
        >>> bounded = VAE((1, 8, 8), 16, 2, "gaussian", output_range=(-1.0, 2.0))
        >>> s = bounded.sample(100)
        >>> bool(s.min() >= -1.0) and bool(s.max() <= 2.0)
        True
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_size: int = 400,
        latent_size: int = 32,
        likelihood: str = "bernoulli",
        encoder_sizes: Sequence[int] | None = None,
        decoder_sizes: Sequence[int] | None = None,
        batch_norm: bool = False,
        output_range: Sequence[float] | None = None,
        variance: float = 1.0,
    ):
        super().__init__()
        shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(f"input_shape must be a non-empty sequence of ints >= 1, got {input_shape!r}")
        for name, value in (("hidden_size", hidden_size), ("latent_size", latent_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if likelihood not in VAE_LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {VAE_LIKELIHOODS}, got {likelihood!r}")
        sizes: dict[str, tuple[int, ...]] = {}
        for name, layers in (("encoder_sizes", encoder_sizes), ("decoder_sizes", decoder_sizes)):
            if layers is None:
                sizes[name] = (hidden_size, hidden_size)
                continue
            if (
                not isinstance(layers, Sequence)
                or not layers
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in layers)
            ):
                raise ValueError(f"{name} must be a non-empty sequence of ints >= 1 or None, got {layers!r}")
            sizes[name] = tuple(layers)
        if not isinstance(batch_norm, bool):
            raise ValueError(f"batch_norm must be a bool, got {batch_norm!r}")
        bounds: tuple[float, float] | None = None
        if output_range is not None:
            if likelihood != "gaussian":
                raise ValueError(
                    f"output_range bounds the Gaussian decoder's means; the {likelihood!r} likelihood "
                    "has its own range: pass output_range=None"
                )
            ok = (
                isinstance(output_range, Sequence)
                and len(output_range) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in output_range)
            )
            if (
                not ok
                or not (math.isfinite(output_range[0]) and math.isfinite(output_range[1]))
                or not (output_range[0] < output_range[1])
            ):
                raise ValueError(f"output_range must be two finite numbers low < high, got {output_range!r}")
            bounds = (float(output_range[0]), float(output_range[1]))
        if (
            isinstance(variance, bool)
            or not isinstance(variance, int | float)
            or not (math.isfinite(variance) and variance > 0)
        ):
            raise ValueError(f"variance must be a finite number > 0, got {variance!r}")
        self.input_shape = shape
        self.latent_size = latent_size
        self.likelihood = likelihood
        self.output_range = bounds
        if likelihood == "bernoulli" and variance != 1.0:
            raise ValueError(
                f"variance applies to likelihood='gaussian' only, got variance={variance!r} with "
                "likelihood='bernoulli'"
            )
        self.variance = float(variance)
        self._config = {
            "input_shape": list(shape),
            "hidden_size": hidden_size,
            "latent_size": latent_size,
            "likelihood": likelihood,
            "encoder_sizes": list(sizes["encoder_sizes"]),
            "decoder_sizes": list(sizes["decoder_sizes"]),
            "batch_norm": batch_norm,
            "output_range": None if bounds is None else list(bounds),
            "variance": self.variance,
        }
        features = math.prod(shape)
        enc = sizes["encoder_sizes"]
        self.encoder = _mlp([features, *enc], batch_norm, last_activation=True)
        self.to_mean = nn.Linear(enc[-1], latent_size)
        self.to_log_var = nn.Linear(enc[-1], latent_size)
        dec = sizes["decoder_sizes"]
        self.decoder = _mlp([latent_size, *dec, features], batch_norm, last_activation=False)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (``VAE(**vae.config)`` builds the same layout); a copy."""
        return copy.deepcopy(self._config)

    @classmethod
    def avalanche_mlp_vae(
        cls, input_shape: Sequence[int] = (1, 28, 28), latent_size: int = 2, normalised_mnist: bool = True
    ) -> VAE:
        r"""The layout of Avalanche's ``MlpVAE`` (``avalanche.models.generator``, the default generator of its
        ``GenerativeReplay``): encoder 400-128, decoder 64-128-256, batch norm, latent size 2, the summed
        squared error (``variance=0.5``) and, for normalised MNIST, the decoder's means bounded to its
        pixel range (its sigmoid followed by the normalisation).

        Not reproduced: ``MlpVAE``'s LeakyReLU on its first encoder layer (ReLU here) and its
        reparameterisation with :math:`\sigma = \tfrac12 e^{\log\sigma^2}` (here the usual
        :math:`e^{\log\sigma^2 / 2}`).

        Example:
            >>> vae = VAE.avalanche_mlp_vae()
            >>> vae.config["encoder_sizes"], vae.config["decoder_sizes"], vae.output_range is not None
            ([400, 128], [64, 128, 256], True)
        """
        if not isinstance(normalised_mnist, bool):
            raise ValueError(f"normalised_mnist must be a bool, got {normalised_mnist!r}")
        return cls(
            input_shape,
            hidden_size=400,
            latent_size=latent_size,
            likelihood="gaussian",
            encoder_sizes=(400, 128),
            decoder_sizes=(64, 128, 256),
            batch_norm=True,
            output_range=MNIST_NORMALISED_RANGE if normalised_mnist else None,
            variance=0.5,
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and log-variance of the codes of ``x`` (``(B, *input_shape)``), each ``(B, latent)``."""
        hidden = self.encoder(x.flatten(1).float())
        return self.to_mean(hidden), self.to_log_var(hidden)

    def decode_logits(self, z: Tensor) -> Tensor:
        """The decoder's last linear output, shaped as inputs: before its sigmoid (Bernoulli, or a bounded
        Gaussian), or the means themselves (unbounded Gaussian)."""
        return self.decoder(z).reshape(len(z), *self.input_shape)

    def decode(self, z: Tensor) -> Tensor:
        """The decoded inputs (the likelihood's means) of codes ``z`` of shape ``(B, latent_size)``."""
        out = self.decode_logits(z)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.output_range is not None:
            low, high = self.output_range
            return low + (high - low) * torch.sigmoid(out)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x`` from the mean of its codes (no sampling)."""
        mean, _ = self.encode(x)
        return self.decode(mean)

    def loss(self, x: Tensor, generator: torch.Generator | None = None, reduction: str = "mean") -> Tensor:
        """The negative ELBO of ``x`` per sample, averaged over the batch (a float32 scalar).

        Args:
            x: inputs of shape ``(B, *input_shape)``.
            generator: a CPU generator for the reparameterisation noise (for repeatable runs).
            reduction: ``"mean"`` (the batch's average, a scalar) or ``"none"`` (each sample's
                negative ELBO, shape ``(B,)``: one pass over a batch that joins groups weighed
                differently, as generative replay's current and replayed inputs).

        Raises:
            ValueError: if ``x`` does not have the VAE's input shape, is empty or holds a
                non-finite value, for a ``reduction`` other than ``"mean"`` and ``"none"``, or,
                with the Bernoulli likelihood, for inputs outside [0, 1].

        Example:
            >>> vae = VAE((1, 4, 4), hidden_size=8, latent_size=2)
            >>> tuple(vae.loss(torch.rand(3, 1, 4, 4), reduction="none").shape)
            (3,)
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"the VAE takes inputs of shape (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if len(x) == 0:
            raise ValueError("the VAE's loss takes a batch of at least one input, got an empty batch")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the VAE's loss takes finite inputs, got a batch holding NaN or infinite values")
        mean, log_var = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        z = mean + torch.exp(0.5 * log_var) * noise
        target = x.flatten(1).float()
        if self.likelihood == "bernoulli":
            out = self.decode_logits(z).flatten(1)
            low, high = float(target.min()), float(target.max())
            if low < 0 or high > 1:
                raise ValueError(
                    f"the Bernoulli likelihood takes inputs in [0, 1], got values in [{low:.8g}, {high:.8g}] "
                    "(normalised data?): build the VAE with likelihood='gaussian'"
                )
            nll = F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(1)
        else:
            nll = (self.decode(z).flatten(1) - target).pow(2).sum(1) / (2.0 * self.variance)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1).sum(1)
        per_sample = nll + kl
        return per_sample.mean() if reduction == "mean" else per_sample

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` inputs decoded from codes drawn from the prior, on the VAE's device, no graph.

        Args:
            n: how many samples (>= 0).
            generator: a CPU generator for the codes.

        Raises:
            ValueError: for a negative ``n``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        device = next(self.parameters()).device
        z = torch.randn((n, self.latent_size), generator=generator).to(device)
        return self.decode(z)
