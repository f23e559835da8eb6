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


def sum_log1p_exp_neg_(a: torch.Tensor, group: int = 120) -> torch.Tensor:
    """sum over the last dim of log(1 + exp(-a)) for a >= 0, overwriting ``a``.

    The softplus part of a Bernoulli log-likelihood, softplus(l) = max(l, 0) + log(1 + exp(-|l|)),
    as one exp per element and one log per group of at most ``group`` elements (a product of
    up to 120 factors in (1, 2] fits in float32): torch's softplus and logsigmoid are ~3x slower
    than its exp on CPU.
    """
    d = a.shape[-1]
    g = max(c for c in range(1, min(d, group) + 1) if d % c == 0)
    return a.neg_().exp_().add_(1.0).view(*a.shape[:-1], d // g, g).prod(-1).log_().sum(-1)


def sum_log1p_exp_neg_by_sigmoid_(a: torch.Tensor, group: int = 120) -> torch.Tensor:
    """sum_log1p_exp_neg_ in two passes instead of four, overwriting ``a`` (a >= 0):
    log(1 + exp(-a)) = -log sigmoid(a), and a product of up to 120 sigmoids of a >= 0, each in
    [1/2, 1), fits in float32. The evaluator's hot loop (it runs over billions of logits)."""
    d = a.shape[-1]
    g = max(c for c in range(1, min(d, group) + 1) if d % c == 0)
    return torch.sigmoid_(a).view(*a.shape[:-1], d // g, g).prod(-1).log_().sum(-1).neg_()


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(sigma^2)) summed over the last dim."""
    return (-0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)


def kl_analytic(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) in closed form, summed over the last dim."""
    return 0.5 * (mu**2 + sigma**2 - 1.0 - 2.0 * torch.log(sigma)).sum(-1)


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
