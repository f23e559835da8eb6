"""Training objectives. Each returns the ELBO's terms by name, so curves stay comparable."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import elbo
from ..registry import Registry
from .kl import KL_ESTIMATORS

OBJECTIVES: Registry[type] = Registry("objective")


@dataclass
class Terms:
    """Per-example terms in nats (shape (B,)) and the scalar the optimizer minimizes."""

    rec: torch.Tensor
    kl: torch.Tensor
    elbo: torch.Tensor
    loss: torch.Tensor


def draw_eps(k: int, mu: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)


@OBJECTIVES.register("elbo")
class ELBO:
    """The seed's objective: E_q[log p(x|z)] over K samples minus beta * KL (beta = 1 is the ELBO)."""

    def __init__(self, k: int = 1, kl: str = "analytic", beta: float = 1.0, **_: object):
        self.k, self.beta = k, beta
        self.kl = KL_ESTIMATORS.get(kl)

    def __call__(self, model, x: torch.Tensor, generator: torch.Generator | None = None) -> Terms:
        mu, sigma = model.encode(x)
        z = elbo.reparameterize(mu, sigma, draw_eps(self.k, mu, generator))
        rec = elbo.k_sample_mean(model.log_likelihood(z, x))
        kl = self.kl(mu, sigma, z)
        loss = -(rec - self.beta * kl).mean()
        return Terms(rec=rec, kl=kl, elbo=rec - kl, loss=loss)
