"""The ELBO's terms as small pure functions, each checkable against a closed form.

Shapes: ``x`` is (B, D); latent tensors are (B, L) or, with K samples, (K, B, L).
Every function returns one value per example (summed over pixels or latent
dimensions, in nats); averaging over examples is the caller's choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) summed over the last dim; stable because it never forms log(sigmoid(.))."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(sigma^2)) summed over the last dim."""
    return (-0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)


def kl_analytic_per_dim(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) in closed form, per latent dimension."""
    return 0.5 * (mu**2 + sigma**2 - 1.0 - 2.0 * torch.log(sigma))


def kl_analytic(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) in closed form, summed over the last dim (scaling by 1/2
    commutes exactly with the sum, so this is the per-dimension KL summed, bit for bit)."""
    return kl_analytic_per_dim(mu, sigma).sum(-1)


def kl_monte_carlo(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL estimated as the mean over the K samples z (K, B, L) of log q(z|x) - log p(z).

    Uses the same z as the reconstruction term, so the two estimates share their noise.
    """
    return (gaussian_log_prob(z, mu, sigma) - standard_normal_log_prob(z)).mean(0)


def reparameterize(mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps: gradients reach the encoder through mu and sigma."""
    return mu + sigma * eps


def k_sample_mean(log_liks: torch.Tensor) -> torch.Tensor:
    """Average of per-sample log-likelihoods over the K axis (dim 0): the K-sample estimate of E_q[log p(x|z)]."""
    return log_liks.mean(0)


def gaussian_log_prob_per_dim(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, sigma^2) per latent dimension (the terms gaussian_log_prob sums)."""
    return -0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * LOG_2PI


def kl_monte_carlo_per_dim(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """kl_monte_carlo per latent dimension (N(0, I) factorizes): (B, L) from z (K, B, L)."""
    return (gaussian_log_prob_per_dim(z, mu, sigma) + 0.5 * z**2 + 0.5 * LOG_2PI).mean(0)


def mixture_log_prob(z: torch.Tensor, log_weights: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log sum_c w_c N(z; mu_c, diag sigma_c^2) for z (..., L), components (C, L), log_weights (C,)
    normalized: the mixture priors' density (MoG; VampPrior with mu_c, sigma_c = q(z|u_c))."""
    # sum_l ((z_l - m_cl) / s_cl)^2 expanded as z^2 . (1/s^2) - 2 z . (m/s^2) + sum m^2/s^2: two matmuls
    # instead of a (..., C, L) tensor (a VampPrior's C = 500 made that 4x the rest of a step)
    inv = sigma.pow(-2)
    quad = (z * z) @ inv.t() - 2.0 * (z @ (mu * inv).t()) + (mu * mu * inv).sum(-1)
    comp = -0.5 * quad - torch.log(sigma).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI  # (..., C)
    return torch.logsumexp(comp + log_weights, dim=-1)


def free_bits(kl: torch.Tensor, floor: float) -> torch.Tensor:
    """Kingma et al. (2016), eq. 15: sum over groups of max(floor, the group's KL averaged over the
    batch); ``kl`` (B, G), one column per group (a latent dimension, or one column: the total)."""
    return torch.clamp(kl.mean(0), min=floor).sum()
