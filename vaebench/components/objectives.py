"""Training objectives. Each returns the ELBO's terms by name, so curves stay comparable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field

from .. import elbo
from ..registry import ComponentConfig, Registry, component, key
from .kernels import Objective
from .kl import KL_ESTIMATORS, takes_prior

OBJECTIVES: Registry[type] = Registry("objective")


class ObjectiveConfig(ComponentConfig):
    """The ELBO's and the IWAE bound's keys (a user's objective may subclass this and add its own)."""

    name: str = key("elbo", "elbo (the ELBO, its terms averaged over k samples) or iwae (the "
                    "importance-weighted bound)", "objective", in_id_at_default=True)
    k: Annotated[int, Field(gt=0)] = key(1, "z samples per image", "K (samples)", in_id_at_default=True)
    kl: component(KL_ESTIMATORS, "analytic") = key(
        "analytic", "analytic (closed form) or monte_carlo (from the same z samples)", "KL estimator",
        per_run=True, in_id_at_default=True)
    beta: Annotated[float, Field(ge=0)] = key(1.0, "KL weight in the loss (1 is the ELBO)", "β (KL weight)",
                                              per_run=True, in_id_at_default=True)
    warmup: Annotated[int, Field(ge=0)] = key(0, "updates over which the KL weight ramps from 0 to beta",
                                              "KL warm-up (updates)", in_id_at_default=True)


@dataclass
class Terms:
    """Per-example terms in nats (shape (B,)) and the scalar the optimizer minimizes."""

    rec: torch.Tensor
    kl: torch.Tensor
    elbo: torch.Tensor
    loss: torch.Tensor


def draw_eps(k: int, mu: torch.Tensor, generator: torch.Generator | torch.Tensor | None) -> torch.Tensor:
    """K standard normal draws per latent. A tensor instead of a generator is the draws themselves:
    the stacked engines draw each run's eps from its own generator before a vmapped step."""
    if isinstance(generator, torch.Tensor):
        return generator
    return torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)


def kl_weight(beta: float, warmup: int, step: int | None) -> float:
    """beta, ramped linearly from 0 over the first ``warmup`` updates; ``step`` counts the updates
    done before this one (0 for the first), None means "not training" and gives beta itself."""
    if step is None or warmup <= 0:
        return beta
    return beta * min(1.0, step / warmup)


@OBJECTIVES.register("elbo", config=ObjectiveConfig)
class ELBO:
    """The seed's objective: E_q[log p(x|z)] over K samples minus beta * KL (beta = 1 is the ELBO)."""

    # The fused engine (vaebench.training.fused) computes this __call__ by hand from the model's,
    # the likelihood's and the KL estimator's kernels; a subclass that redefines __call__ has no fused step.
    kernels = Objective(example=lambda cls: [cls(), cls(k=3, kl="monte_carlo", beta=0.5, warmup=4)])

    def __init__(self, k: int = 1, kl: Any = "analytic", beta: float = 1.0, warmup: int = 0):
        self.k, self.beta, self.warmup = k, beta, warmup
        self.kl = KL_ESTIMATORS.build(kl)  # a name, a config or a mapping with its hyperparameters
        self._kl_prior = takes_prior(self.kl)

    def kl_term(self, model, mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The KL estimator on these draws, against the model's prior (N(0, I) if it has none)."""
        prior = getattr(model, "prior", None)
        return self.kl(mu, sigma, z, prior) if self._kl_prior else self.kl(mu, sigma, z)

    def eps_shape(self, batch: int, latent: int) -> tuple[int, ...]:
        """The one noise draw of a step after the binarizer's: what stacked engines draw per run."""
        return (self.k, batch, latent)

    def kl_weight(self, step: int | None) -> float:
        """The weight of the KL term in the loss at update ``step`` (0 for the first)."""
        return kl_weight(self.beta, self.warmup, step)

    def __call__(self, model, x: torch.Tensor, generator: torch.Generator | None = None,
                 step: int | None = None) -> Terms:
        mu, sigma = model.encode(x)
        z = elbo.reparameterize(mu, sigma, draw_eps(self.k, mu, generator))
        rec = elbo.k_sample_mean(model.log_likelihood(z, x))
        kl = self.kl_term(model, mu, sigma, z)
        loss = -(rec - self.kl_weight(step) * kl).mean()
        return Terms(rec=rec, kl=kl, elbo=rec - kl, loss=loss)


@OBJECTIVES.register("iwae", config=ObjectiveConfig)
class IWAE(ELBO):
    """The importance-weighted bound (Burda et al. 2016): log (1/K) sum_k p(x|z_k) [p(z_k)/q(z_k|x)]^beta.

    The loss is minus that bound (beta = 1, warm-up aside); the logged rec, kl and elbo are the
    usual K-sample ELBO terms on the same draws, so curves compare with objective: elbo. With
    K = 1 it is the ELBO with the Monte-Carlo KL, gradient for gradient.
    """

    def __call__(self, model, x: torch.Tensor, generator: torch.Generator | None = None,
                 step: int | None = None) -> Terms:
        mu, sigma = model.encode(x)
        z = elbo.reparameterize(mu, sigma, draw_eps(self.k, mu, generator))
        log_px = model.log_likelihood(z, x)  # (K, B)
        prior = getattr(model, "prior", None)
        log_prior = elbo.standard_normal_log_prob(z) if prior is None else prior.log_prob(z)
        log_ratio = log_prior - elbo.gaussian_log_prob(z, mu, sigma)
        log_w = log_px + self.kl_weight(step) * log_ratio
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.k)
        rec = elbo.k_sample_mean(log_px)
        kl = self.kl_term(model, mu, sigma, z)
        return Terms(rec=rec, kl=kl, elbo=rec - kl, loss=-bound.mean())
