"""Components with hyperparameters of their own, as a user writes them in their own file.

``leaky`` is a plain class: its config keys come from its constructor's signature, their facts from
``about``. ``free_bits`` declares a config model, each key stated once with ``key``.
"""

from typing import Annotated

import torch
from torch import nn

from vaebench.components import KL_ESTIMATORS, ACTIVATIONS
from vaebench.registry import ComponentConfig, about, key


@ACTIVATIONS.register("leaky")
class Leaky(nn.Module):
    """scale * x for x > 0, slope * x below."""

    def __init__(self, slope: Annotated[float, about("slope for negative inputs", "leaky slope")] = 0.01,
                 scale: Annotated[float, about("slope for positive inputs", "leaky scale")] = 1.0):
        super().__init__()
        self.slope, self.scale = slope, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, self.scale * x, self.slope * x)


class FreeBitsConfig(ComponentConfig):
    threshold: float = key(0.0, "nats below which a latent's KL is not penalized", "free-bits threshold")
    per_dim: bool = key(True, "the threshold applies to each latent dimension (else to their sum)",
                        "free bits per dimension")


@KL_ESTIMATORS.register("free_bits", config=FreeBitsConfig)
def free_bits(mu, sigma, z, prior=None, threshold: float = 0.0, per_dim: bool = True):
    """The analytic KL, each dimension's (or the total) at least ``threshold`` (Kingma et al. 2016)."""
    per = 0.5 * (mu**2 + sigma**2 - 1.0 - 2.0 * torch.log(sigma))
    if per_dim:
        return torch.clamp(per, min=threshold).sum(-1)
    return torch.clamp(per.sum(-1), min=threshold)

