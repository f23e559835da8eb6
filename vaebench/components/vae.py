"""The VAE: an encoder to (mu, sigma), a decoder to logits, and a likelihood on those logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .kernels import Model
from .likelihoods import LIKELIHOODS
from .networks import NETWORKS
from .posteriors import POSTERIORS


class VAE(nn.Module):
    # The fused engine (vaebench.training.stacked) runs encode, decode and log_likelihood as written
    # here, from the networks', posterior's and likelihood's kernels.
    kernels = Model(example=lambda cls: [cls(6, 2, {"name": "mlp", "hidden": [5]}, {"name": "mlp", "hidden": [5]}),
                                         cls(6, 2, {"name": "mlp", "hidden": [5], "activation": "relu"},
                                             {"name": "mlp", "hidden": [4, 3]}, posterior="log_sigma")])

    def __init__(self, data_dim: int, latent: int, encoder: dict[str, Any], decoder: dict[str, Any],
                 posterior: str = "sigma", likelihood: str = "bernoulli"):
        super().__init__()
        self.data_dim, self.latent = data_dim, latent
        enc, dec = dict(encoder), dict(decoder)
        self.encoder = NETWORKS.get(enc.pop("name"))(data_dim, n_out=2 * latent, **enc)
        self.decoder = NETWORKS.get(dec.pop("name"))(latent, n_out=data_dim, **dec)
        self.posterior = POSTERIORS.get(posterior)()
        self.likelihood = LIKELIHOODS.get(likelihood)()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.encoder(x).chunk(2, dim=-1)
        return mu, self.posterior.sigma(raw)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z)."""
        return self.decoder(z)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.log_prob(self.decode(z), x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) at z = E_q[z]: the usual picture of a reconstruction."""
        mu, _ = self.encode(x)
        return self.likelihood.mean(self.decode(mu))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Means of p(x|z) for z ~ N(0, I)."""
        p = next(self.parameters())
        z = torch.randn((n, self.latent), generator=generator, device=p.device, dtype=p.dtype)
        return self.likelihood.mean(self.decode(z))


def build_model(model_cfg: dict[str, Any], data_dim: int) -> VAE:
    """Build from the ``model`` section of a resolved config (a plain dict)."""
    return VAE(data_dim=data_dim, **model_cfg)
