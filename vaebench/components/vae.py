"""The VAE: an encoder to (mu, sigma), an optional flow on q's samples, a decoder to logits, a
likelihood on those logits, a prior.

``ModelConfig`` is the ``model`` section; :func:`build` makes everything one run's config names
(model, objective, optimizer, schedule): the one construction that training, evaluation, the report
and ``vaebench.load_model`` share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable

import torch
from pydantic import Field
from torch import nn

from .. import elbo
from ..errors import ConfigError
from ..registry import Section, component, current, key, section
from .flows import FLOWS
from .kl import closed_form
from .kernels import Model
from .likelihoods import LIKELIHOODS
from .networks import NETWORKS, MLPConfig
from .objectives import OBJECTIVES
from .optimizers import OPTIMIZERS, SCHEDULES
from .posteriors import POSTERIORS
from .priors import PRIORS


class ModelConfig(Section):
    latent: Annotated[int, Field(gt=0)] = key(8, "dimensions of z", "latent dimensions", in_id_at_default=True)
    encoder: component(NETWORKS, "mlp") = section(MLPConfig(), "x -> the mean and sigma of q(z|x)", "encoder")
    decoder: component(NETWORKS, "mlp") = section(MLPConfig(), "z -> the logits of p(x|z)", "decoder")
    posterior: component(POSTERIORS, "sigma") = key(
        "sigma", "how the encoder's second head becomes sigma: sigma (softplus + 1e-4 floor) or log_sigma (exp)",
        "posterior σ parameterization", per_run=True, in_id_at_default=True)
    likelihood: component(LIKELIHOODS, "bernoulli") = key(
        "bernoulli", "p(x|z) given the decoder's output", "likelihood", in_id_at_default=True)
    prior: component(PRIORS, "standard_normal") = key(
        "standard_normal", "p(z): standard_normal (N(0, I)), mog (a learned mixture of Gaussians), vamp (the "
        "VampPrior) or any registered prior", "prior")
    flow: component(FLOWS, "none") = key(
        "none", "a flow applied to q's samples, its log-determinant in log q(z|x): none, planar or iaf",
        "posterior flow")


class VAE(nn.Module):
    # The fused engine (vaebench.training.fused) runs encode, decode and log_likelihood as written
    # here, from the networks', posterior's and likelihood's kernels.
    kernels = Model(example=lambda cls: [cls(6, 2, {"name": "mlp", "hidden": [5]}, {"name": "mlp", "hidden": [5]}),
                                         cls(6, 2, {"name": "mlp", "hidden": [5], "activation": "relu"},
                                             {"name": "mlp", "hidden": [4, 3]}, posterior="log_sigma")],
                    departs=lambda self: "model.flow" if self.flow is not None else None)

    def __init__(self, data_dim: int, latent: int, encoder: Any = "mlp", decoder: Any = "mlp",
                 posterior: Any = "sigma", likelihood: Any = "bernoulli", prior: Any = "standard_normal",
                 flow: Any = "none"):
        super().__init__()
        self.data_dim, self.latent = data_dim, latent
        self.encoder = NETWORKS.build(encoder, n_in=data_dim, n_out=2 * latent)
        self.decoder = NETWORKS.build(decoder, n_in=latent, n_out=data_dim)
        self.posterior = POSTERIORS.build(posterior)
        self.likelihood = LIKELIHOODS.build(likelihood)
        self.prior = PRIORS.build(prior, latent=latent)
        if callable(getattr(self.prior, "bind", None)):
            self.prior.bind(self)  # a prior made of the model's parts (VampPrior: the encoder)
        self.flow = FLOWS.build(flow, latent=latent)  # None: no flow

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.encoder(x).chunk(2, dim=-1)
        return mu, self.posterior.sigma(raw)

    def draw(self, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z from q(z|x) (z0 = mu + sigma * eps, then the flow, if any) and log q(z|x) there:
        log N(z0; mu, sigma) - log |det df/dz0|. Training and the held-out evaluator share it."""
        z = elbo.reparameterize(mu, sigma, eps)
        log_q = elbo.gaussian_log_prob(z, mu, sigma)
        if self.flow is not None:
            z, logdet = self.flow(z)
            log_q = log_q - logdet
        return z, log_q

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z)."""
        return self.decoder(z)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.log_prob(self.decode(z), x)

    def use_generator(self, generator: torch.Generator | None) -> None:
        """Layers that draw noise while training (dropout) draw from ``generator``: the run's own."""
        for m in self.modules():
            if hasattr(m, "generator") and m is not self:
                m.generator = generator

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) at z = E_q0[z] (through the flow, if any): the usual picture of a reconstruction."""
        mu, _ = self.encode(x)
        z = mu if self.flow is None else self.flow(mu)[0]
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Means of p(x|z) for z drawn from the prior."""
        p = next(self.parameters())
        z = self.prior.sample(n, generator, device=p.device, dtype=p.dtype)
        return self.likelihood.mean(self.decode(z))


def model_config(model_cfg: Any) -> ModelConfig:
    """The ``model`` section as its config (from a dict, e.g. a run folder's config.yaml)."""
    if isinstance(model_cfg, ModelConfig):
        return model_cfg
    try:
        return current(ModelConfig).model_validate(model_cfg)
    except Exception as e:  # a run folder's config that no longer validates (a plugin changed)
        raise ConfigError(f"invalid model config: {str(e).splitlines()[-1].strip()}") from None


def build_model(model_cfg: Any, data_dim: int) -> VAE:
    """Build from the ``model`` section of a config (a ModelConfig or its dict)."""
    m = model_config(model_cfg)
    return VAE(data_dim, m.latent, m.encoder, m.decoder, m.posterior, m.likelihood, m.prior, m.flow)


@dataclass
class Parts:
    """What one run's config builds: everything training, evaluation and the report use."""

    model: VAE
    objective: Any
    optimizer_factory: Callable  # (params, lr, **hyperparameters) -> a torch.optim optimizer
    optimizer_kwargs: dict[str, Any]
    schedule: Callable[[int, int], float]

    def optimizer(self, params) -> torch.optim.Optimizer:
        return self.optimizer_factory(params, **self.optimizer_kwargs)


def build(cfg: Any, data_dim: int) -> Parts:
    """The components of a run's config (a vaebench.config.RunConfig): the model (initialized from
    torch's current random state), the objective, the optimizer factory and the schedule."""
    model = build_model(cfg.model, data_dim)
    objective = OBJECTIVES.build(cfg.objective)
    kl = getattr(objective, "kl", None)
    if kl is not None and closed_form(kl) and not callable(getattr(model.prior, "kl", None)):
        raise ConfigError(f"objective.kl: analytic needs a prior with a closed-form KL; the prior "
                          f"{cfg.model.prior.name!r} has none: use objective.kl: monte_carlo")
    refuses = getattr(objective, "refuses", None)
    why = refuses(model) if callable(refuses) else None
    if why:
        raise ConfigError(why)
    return Parts(model, objective, OPTIMIZERS.get(cfg.optim.name), cfg.optim.factory_kwargs(),
                 SCHEDULES.build(cfg.optim.schedule))
