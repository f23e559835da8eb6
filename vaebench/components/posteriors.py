"""How the encoder's second half becomes the posterior's standard deviation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Registry
from .kernels import Posterior

POSTERIORS: Registry[type] = Registry("posterior parameterization")


@POSTERIORS.register("sigma")
class SigmaOutput:
    """The network outputs sigma itself, kept positive by softplus plus a floor.

    The floor (1e-4) keeps log(sigma) in the KL finite when softplus underflows.
    """

    floor = 1e-4

    def sigma(self, raw: torch.Tensor) -> torch.Tensor:
        return F.softplus(raw) + self.floor

    def _sigma_and_dsigma(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma, d sigma / d raw): the fused engine's kernel of ``sigma`` (it reads self.floor)."""
        return F.softplus(raw).add_(self.floor), torch.sigmoid(raw)

    kernels = Posterior(_sigma_and_dsigma)

    def raw(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of ``sigma``: the output that yields this sigma."""
        s = sigma - self.floor
        return s + torch.log(-torch.expm1(-s))


@POSTERIORS.register("log_sigma")
class LogSigmaOutput:
    """The network outputs log sigma; exp maps it to any positive value."""

    def sigma(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(raw)

    def _sigma_and_dsigma(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma, d sigma / d raw): the fused engine's kernel of ``sigma``."""
        sigma = torch.exp(raw)
        return sigma, sigma

    kernels = Posterior(_sigma_and_dsigma)

    def raw(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma)
