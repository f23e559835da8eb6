"""Priors p(z), selected by ``model.prior``: N(0, I) (``standard_normal``), a learned mixture of
Gaussians (``mog``) and the VampPrior (``vamp``).

A prior is an nn.Module built with the latent width (``latent``), so a learned prior's parameters
train, checkpoint and load with the model's. It offers ``log_prob(z)`` (summed over the last dim),
``sample(n, generator)`` and, where it exists in closed form, ``kl(mu, sigma)``:
KL(N(mu, diag sigma^2) || p) per example; without one, ``objective.kl: analytic`` is refused.
A factorized prior may offer ``kl_per_dim`` and ``log_prob_per_dim`` (per-dimension free bits).
A prior that needs the model (the VampPrior: its encoder and data width) defines ``bind(model)``,
called once by the VAE after it is built.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from .. import elbo
from ..registry import ComponentConfig, Registry, key
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

    def kl_per_dim(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return elbo.kl_analytic_per_dim(mu, sigma)

    def kl_monte_carlo_per_dim(self, z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return elbo.kl_monte_carlo_per_dim(z, mu, sigma)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        return torch.randn((n, self.latent), generator=generator, device=device, dtype=dtype)

    def _log_ratio(self, eps: torch.Tensor, z: torch.Tensor, log_sigma_sum: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) - log N(z; mu, sigma) = sum (eps^2 - z^2) / 2 + sum log sigma: the 2 pi
        terms cancel, and so does most of the rounding of two sums of tens of nats."""
        return 0.5 * ((eps - z) * (eps + z)).sum(-1) + log_sigma_sum

    kernels = Prior(log_ratio=_log_ratio, standard_normal=True, example=lambda cls: [cls(3), cls(7)])


class MoGConfig(ComponentConfig):
    name: str = key("mog", "a learned mixture of Gaussians", "prior", in_id_at_default=True)
    components: Annotated[int, Field(gt=0, le=10_000)] = key(
        10, "mixture components, each with learned mean, diagonal sigma and weight", "MoG components")


@PRIORS.register("mog", config=MoGConfig)
class MixtureOfGaussians(nn.Module):
    """p(z) = sum_c pi_c N(z; m_c, diag s_c^2), every part learned with the model. Means start at
    N(0, I) draws (torch's random state: the run's seed), scales at 1, weights equal. No closed-form
    KL: train it with objective.kl: monte_carlo."""

    def __init__(self, latent: int, components: int = 10):
        super().__init__()
        self.latent = latent
        self.means = nn.Parameter(torch.randn(components, latent))
        self.log_sigmas = nn.Parameter(torch.zeros(components, latent))
        self.logits = nn.Parameter(torch.zeros(components))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return elbo.mixture_log_prob(z, torch.log_softmax(self.logits, 0), self.means, self.log_sigmas.exp())

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        c = torch.multinomial(torch.softmax(self.logits.detach(), 0).to(device), n, replacement=True,
                              generator=generator)
        eps = torch.randn((n, self.latent), generator=generator, device=device, dtype=dtype)
        return self.means[c] + self.log_sigmas[c].exp() * eps


class VampConfig(ComponentConfig):
    name: str = key("vamp", "the VampPrior (Tomczak & Welling 2018)", "prior", in_id_at_default=True)
    pseudo_inputs: Annotated[int, Field(gt=0, le=10_000)] = key(
        500, "learned pseudo-inputs u_k (images); p(z) = mean_k q(z|u_k) through the model's own encoder",
        "VampPrior pseudo-inputs")


@PRIORS.register("vamp", config=VampConfig)
class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k): a mixture of the encoder's posteriors at K learned pseudo-inputs
    (Tomczak & Welling 2018, eq. 9), so the prior trains with the encoder. u_k = sigmoid(r_k), one
    pixel each in (0, 1); r_k starts at N(0, 1) draws. The pseudo-inputs are made when the VAE binds
    the prior (they need its data width); no closed-form KL."""

    def __init__(self, latent: int, pseudo_inputs: int = 500):
        super().__init__()
        self.latent, self.n = latent, pseudo_inputs
        self.raw: nn.Parameter | None = None
        self._encode = None

    def bind(self, model: nn.Module) -> None:
        self.raw = nn.Parameter(torch.randn(self.n, model.data_dim))
        self.__dict__["_encode"] = model.encode  # a plain reference, not a submodule (no cycle)

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.raw)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_k, sigma_k) of q(z | u_k), each (K, L)."""
        if self._encode is None:
            raise RuntimeError("the VampPrior is used before a VAE bound it (VampPrior.bind)")
        return self._encode(self.pseudo_inputs())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.components()
        log_w = torch.full((self.n,), -math.log(self.n), device=z.device, dtype=z.dtype)
        return elbo.mixture_log_prob(z, log_w, mu, sigma)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        mu, sigma = self.components()
        k = torch.randint(self.n, (n,), generator=generator, device=device)
        eps = torch.randn((n, self.latent), generator=generator, device=device, dtype=dtype)
        return mu[k] + sigma[k] * eps
