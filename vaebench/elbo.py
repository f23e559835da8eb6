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


# |logits| below which the continuous Bernoulli's log normaliser and its mean are their Taylor
# series: their closed forms are 0/0 at 0 and cancel near it (the normaliser's gradient, 1/a -
# e^-a/(1 - e^-a), loses eps/a; the mean, 1/(1 - e^-l) - 1/l, eps/l). At the switch the series'
# first dropped term is under 1e-18 (normaliser) and 2e-15 (mean): the two agree to float64 rounding.
CB_LOG_NORM_TAYLOR = 0.1
CB_MEAN_TAYLOR = 0.5


def continuous_bernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), elementwise: C =
    l / tanh(l/2) (2 at l = 0), so that C lambda^x (1 - lambda)^(1-x), lambda = sigmoid(l), is a
    density on [0, 1]. Even in l; with a = |l|, log C = log(a / -expm1(-a)) + log1p(exp(-a)), which
    never overflows or cancels; near 0 the series log 2 + l^2/12 - 7 l^4/1440 + 31 l^6/90720
    - 127 l^8/4838400 + 73 l^10/34214400.
    Each branch gets a clamped input, so neither puts a NaN or inf into the other's gradient."""
    small = logits.abs() < CB_LOG_NORM_TAYLOR
    l2 = torch.where(small, logits, torch.zeros_like(logits)).square()
    taylor = math.log(2.0) + l2 * (1.0 / 12.0 + l2 * (-7.0 / 1440.0 + l2 * (31.0 / 90720.0 + l2 * (
        -127.0 / 4838400.0 + l2 * (73.0 / 34214400.0)))))
    a = torch.where(small, torch.ones_like(logits), logits.abs())
    closed = torch.log(a / -torch.expm1(-a)) + torch.log1p(torch.exp(-a))
    return torch.where(small, taylor, closed)


def continuous_bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) of the continuous Bernoulli for x in [0, 1], summed over the last dim: the
    Bernoulli's formula (from logits, never log(sigmoid(.))) plus log C(l). A density: it can be
    positive, and it is not comparable with a Bernoulli's log-probability of 0/1 pixels."""
    return bernoulli_log_prob(logits, x) + continuous_bernoulli_log_normalizer(logits).sum(-1)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] of the continuous Bernoulli, elementwise: 1/(1 - exp(-l)) - 1/l (1/2 at l = 0). Near 0
    the series 1/2 + l/12 - l^3/720 + l^5/30240 - l^7/1209600 + l^9/47900160 - 691 l^11/1307674368000
    (Bernoulli numbers); else, with a = |l|, 1/(1 - e^-a) - 1/a for l > 0 and its mirror
    1/a - e^-a/(1 - e^-a) (= 1 - mean(a)) for l < 0, neither of which overflows. Clamped branch
    inputs, as the log normaliser's."""
    small = logits.abs() < CB_MEAN_TAYLOR
    l = torch.where(small, logits, torch.zeros_like(logits))
    l2 = l.square()
    taylor = 0.5 + l * (1.0 / 12.0 + l2 * (-1.0 / 720.0 + l2 * (1.0 / 30240.0 + l2 * (
        -1.0 / 1209600.0 + l2 * (1.0 / 47900160.0 + l2 * (-691.0 / 1307674368000.0))))))
    a = torch.where(small, torch.ones_like(logits), logits.abs())
    d = -torch.expm1(-a)  # 1 - e^-a in [0.39, 1]
    closed = torch.where(logits > 0, 1.0 / d - 1.0 / a, 1.0 / a - torch.exp(-a) / d)
    return torch.where(small, taylor, closed)


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
