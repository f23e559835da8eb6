"""KL(q(z|x) || N(0, I)) estimators, selected by ``objective.kl``."""

from __future__ import annotations

import torch

from .. import elbo
from ..registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("analytic")
def analytic(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Closed form; ignores z, so it adds no noise to the gradient."""
    return elbo.kl_analytic(mu, sigma)


@KL_ESTIMATORS.register("monte_carlo")
def monte_carlo(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log q(z|x) - log p(z) averaged over the same K samples as the reconstruction term."""
    return elbo.kl_monte_carlo(z, mu, sigma)
