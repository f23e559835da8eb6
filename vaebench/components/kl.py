"""KL(q(z|x) || N(0, I)) estimators, selected by ``objective.kl``."""

from __future__ import annotations

import torch

from .. import elbo
from ..registry import Registry
from .kernels import KLEstimator

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("analytic")
def analytic(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Closed form; ignores z, so it adds no noise to the gradient."""
    return elbo.kl_analytic(mu, sigma)


@KL_ESTIMATORS.register("monte_carlo")
def monte_carlo(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log q(z|x) - log p(z) averaged over the same K samples as the reconstruction term."""
    return elbo.kl_monte_carlo(z, mu, sigma)


# The fused engine's kernels: (mu (..., B, L), sigma (..., B, L), z (K, ..., B, L), k) -> the KL
# per example (..., B) and its gradient in mu, sigma and z, each holding the other two fixed (z:
# None when it is 0). The leading dims are runs: on CUDA the engine passes a block of runs at once.
def _analytic_fused(mu, sigma, z, k):
    return elbo.kl_analytic(mu, sigma), mu, sigma - 1.0 / sigma, None


def _monte_carlo_fused(mu, sigma, z, k):
    kl = elbo.kl_monte_carlo(z, mu, sigma)
    u = (z - mu) / sigma
    u_s = u / sigma
    return kl, u_s.sum(0) / k, ((u * u - 1.0) / sigma).sum(0) / k, (z - u_s) / k


analytic.kernels = KLEstimator(_analytic_fused)
monte_carlo.kernels = KLEstimator(_monte_carlo_fused)
