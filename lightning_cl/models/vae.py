"""A small variational autoencoder: the generator of generative replay for MNIST-sized inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VAE", "VAE_LIKELIHOODS"]

VAE_LIKELIHOODS = ("bernoulli", "gaussian")
"""The decoder's likelihoods: ``"bernoulli"`` (inputs in [0, 1]) or ``"gaussian"`` (unit variance)."""


class VAE(nn.Module):
    r"""A multilayer-perceptron VAE (Kingma and Welling, 2014) over inputs of one fixed shape.

    The encoder maps the flattened input through ``hidden_size`` ReLU units (two layers) to the
    mean :math:`\mu` and log-variance :math:`\log\sigma^2` of a diagonal Gaussian over
    ``latent_size`` codes; the decoder maps a code back through two ReLU layers to the input.
    :meth:`loss` is the negative evidence lower bound (Kingma and Welling, 2014, eq. 10), per
    sample, averaged over the batch:

    .. math:: -\log p(x \mid z) + \tfrac12 \sum_j (\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1),
              \quad z = \mu + \sigma \epsilon,\ \epsilon \sim \mathcal N(0, I)

    with :math:`-\log p(x \mid z)` the binary cross-entropy summed over the input's entries
    (``likelihood="bernoulli"``, the decoder ends in a sigmoid: inputs in [0, 1], as MNIST and
    SplitDigits are; the choice of Avalanche's ``MlpVAE``) or half the squared error summed over
    them (``"gaussian"``, unit variance: any input scale). :meth:`sample` decodes codes drawn
    from the prior :math:`\mathcal N(0, I)` and returns the decoder's means (no pixel noise).

    Args:
        input_shape: the shape of one input, without the batch dimension (``(1, 8, 8)``).
        hidden_size: width of the two hidden layers of encoder and decoder.
        latent_size: number of latent codes.
        likelihood: one of :data:`VAE_LIKELIHOODS`.

    Raises:
        ValueError: for an empty or non-positive ``input_shape``, sizes that are not ints >= 1,
            or an unknown ``likelihood``.

    Example:
        >>> vae = VAE((1, 8, 8), hidden_size=32, latent_size=4)
        >>> tuple(vae.sample(3, generator=torch.Generator().manual_seed(0)).shape)
        (3, 1, 8, 8)
        >>> float(vae.loss(torch.rand(5, 1, 8, 8))) > 0
        True
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_size: int = 400,
        latent_size: int = 32,
        likelihood: str = "bernoulli",
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
        self.input_shape = shape
        self.latent_size = latent_size
        self.likelihood = likelihood
        features = math.prod(shape)
        self.encoder = nn.Sequential(
            nn.Linear(features, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size), nn.ReLU()
        )
        self.to_mean = nn.Linear(hidden_size, latent_size)
        self.to_log_var = nn.Linear(hidden_size, latent_size)
        self.decoder = nn.Sequential(
            nn.Linear(latent_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, features),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and log-variance of the codes of ``x`` (``(B, *input_shape)``), each ``(B, latent)``."""
        hidden = self.encoder(x.flatten(1).float())
        return self.to_mean(hidden), self.to_log_var(hidden)

    def decode_logits(self, z: Tensor) -> Tensor:
        """The decoder's output before its sigmoid (Bernoulli) or its means (Gaussian), shaped as inputs."""
        return self.decoder(z).reshape(len(z), *self.input_shape)

    def decode(self, z: Tensor) -> Tensor:
        """The decoded inputs (the likelihood's means) of codes ``z`` of shape ``(B, latent_size)``."""
        out = self.decode_logits(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

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
            ValueError: if ``x`` does not have the VAE's input shape, for a ``reduction``
                other than ``"mean"`` and ``"none"``, or, with the Bernoulli likelihood, for
                inputs outside [0, 1].

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
        mean, log_var = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        z = mean + torch.exp(0.5 * log_var) * noise
        out = self.decode_logits(z).flatten(1)
        target = x.flatten(1).float()
        if self.likelihood == "bernoulli":
            low, high = float(target.min()), float(target.max())
            if low < 0 or high > 1:
                raise ValueError(
                    f"the Bernoulli likelihood takes inputs in [0, 1], got values in [{low:.3g}, {high:.3g}] "
                    "(normalised data?): build the VAE with likelihood='gaussian'"
                )
            nll = F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(1)
        else:
            nll = 0.5 * (out - target).pow(2).sum(1)
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
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        device = next(self.parameters()).device
        z = torch.randn((n, self.latent_size), generator=generator).to(device)
        return self.decode(z)
