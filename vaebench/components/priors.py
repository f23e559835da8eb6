"""Priors p(z), selected by ``model.prior``: today's N(0, I) as ``standard_normal``.

A prior is an nn.Module built with the latent width (``latent``), so a learned prior's parameters
train, checkpoint and load with the model's. It offers ``log_prob(z)`` (summed over the last dim),
``sample(n, generator)`` and, where it exists in closed form, ``kl(mu, sigma)``:
KL(N(mu, diag sigma^2) || p) per example; without one, ``objective.kl: analytic`` is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import elbo
from ..registry import Registry
from .kernels import Prior

PRIORS: Registry[type[nn.Module]] = Registry("prior", context=("latent",))


@PRIORS.register("standard_normal")
class StandardNormal(nn.Module):
    """N(0, I): no parameters."""

    def __init__(self, latent: int):
        super().__init__()
        self.latent = latent

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return elbo.standard_normal_log_prob(z)

    def kl(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return elbo.kl_analytic(mu, sigma)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        return torch.randn((n, self.latent), generator=generator, device=device, dtype=dtype)

    def _log_ratio(self, eps: torch.Tensor, z: torch.Tensor, log_sigma_sum: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) - log N(z; mu, sigma) = sum (eps^2 - z^2) / 2 + sum log sigma: the 2 pi
        terms cancel, and so does most of the rounding of two sums of tens of nats."""
        return 0.5 * ((eps - z) * (eps + z)).sum(-1) + log_sigma_sum

    kernels = Prior(log_ratio=_log_ratio, standard_normal=True, example=lambda cls: [cls(3), cls(7)])
