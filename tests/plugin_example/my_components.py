"""My own VAE components: an activation and a prior, each with a hyperparameter, registered by name."""

from typing import Annotated

import torch
from torch import nn

from vaebench.components import ACTIVATIONS, PRIORS
from vaebench.registry import about


@ACTIVATIONS.register("silu")
class SiLU(nn.Module):
    """x * sigmoid(beta * x): SiLU at beta = 1 (Elfwing et al. 2018), Swish-beta otherwise."""

    def __init__(self, beta: Annotated[float, about("the input's scale inside the sigmoid", "SiLU β")] = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)


@PRIORS.register("laplace")
class Laplace(nn.Module):
    """p(z) = prod_l exp(-|z_l| / b) / 2b: heavier tails than N(0, I). No closed-form KL to a Gaussian
    q is declared, so it trains with objective.kl: monte_carlo."""

    def __init__(self, latent: int, scale: Annotated[float, about("the scale b of every dimension", "Laplace b")] = 1.0):
        super().__init__()
        self.latent, self.scale = latent, scale

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return (-z.abs() / self.scale - torch.log(torch.tensor(2.0 * self.scale))).sum(-1)

    def sample(self, n: int, generator=None, device=None, dtype=None) -> torch.Tensor:
        u = torch.rand((n, self.latent), generator=generator, device=device, dtype=dtype) - 0.5
        return -self.scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())
