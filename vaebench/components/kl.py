"""KL(q(z|x) || p(z)) estimators, selected by ``objective.kl``.

An estimator is called ``(mu, sigma, z, prior)``: the posterior's mean and standard deviation
(B, L), its K samples z (K, B, L) and the model's prior (vaebench.components.priors; None means
N(0, I)). A user's estimator may leave ``prior`` out of its signature; its keyword parameters with
defaults are its hyperparameters (config keys ``objective.kl.<name>``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from .. import elbo
from ..registry import Registry
from .kernels import KLEstimator

KL_ESTIMATORS: Registry = Registry("KL estimator", context=("prior",))


@KL_ESTIMATORS.register("analytic")
def analytic(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, prior: Any = None) -> torch.Tensor:
    """Closed form (the prior's ``kl``); ignores z, so it adds no noise to the gradient."""
    return elbo.kl_analytic(mu, sigma) if prior is None else prior.kl(mu, sigma)


@KL_ESTIMATORS.register("monte_carlo")
def monte_carlo(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, prior: Any = None) -> torch.Tensor:
    """log q(z|x) - log p(z) averaged over the same K samples as the reconstruction term."""
    if prior is None:
        return elbo.kl_monte_carlo(z, mu, sigma)
    return (elbo.gaussian_log_prob(z, mu, sigma) - prior.log_prob(z)).mean(0)


def takes_prior(estimator: Callable) -> bool:
    """Whether an estimator (or a functools.partial of one) accepts the ``prior`` argument."""
    fn = getattr(estimator, "func", estimator)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "prior" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def closed_form(estimator: Callable) -> bool:
    """Whether an estimator is the analytic one (it needs a prior with a closed-form ``kl``)."""
    return getattr(estimator, "func", estimator) is analytic


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
