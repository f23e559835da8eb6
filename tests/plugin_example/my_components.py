"""My own VAE components: an activation and a KL estimator, registered by name."""

import torch
from torch import nn

from vaebench import elbo
from vaebench.components import ACTIVATIONS, KL_ESTIMATORS


@ACTIVATIONS.register("silu")
class SiLU(nn.Module):
    """x * sigmoid(x) (Elfwing et al. 2018)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


@KL_ESTIMATORS.register("stl")
def sticking_the_landing(mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The Monte Carlo KL with q's parameters held fixed in log q(z|x), so its gradient flows only
    through z (Roeder et al. 2017, "Sticking the landing"): the same value, without the score term."""
    return (elbo.gaussian_log_prob(z, mu.detach(), sigma.detach()) - elbo.standard_normal_log_prob(z)).mean(0)
