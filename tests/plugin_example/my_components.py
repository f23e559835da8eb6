"""My own VAE components: an activation with a hyperparameter and a KL estimator, registered by name."""

from typing import Annotated

import torch
from torch import nn

from vaebench import elbo
from vaebench.components import ACTIVATIONS, KL_ESTIMATORS
from vaebench.registry import about


@ACTIVATIONS.register("silu")
class SiLU(nn.Module):
    """x * sigmoid(beta * x): SiLU at beta = 1 (Elfwing et al. 2018), Swish-beta otherwise."""

    def __init__(self, beta: Annotated[float, about("the input's scale inside the sigmoid", "SiLU β")] = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)


@KL_ESTIMATORS.register("stl")
def sticking_the_landing(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The Monte Carlo KL with q's parameters held fixed in log q(z|x), so its gradient flows only
    through z (Roeder et al. 2017, "Sticking the landing"): the same value, without the score term."""
    return (elbo.gaussian_log_prob(z, mu.detach(), sigma.detach()) - elbo.standard_normal_log_prob(z)).mean(0)
