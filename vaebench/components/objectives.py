"""Training objectives. Each returns the ELBO's terms by name, so curves stay comparable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from .. import elbo
from ..registry import ComponentConfig, Registry, component, key
from .gradients import GRADIENTS
from .kernels import Objective
from .kl import KL_ESTIMATORS, closed_form, takes_prior

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
    gradient: component(GRADIENTS, "reparam") = key(
        "reparam", "the gradient estimator: reparam (autograd of the objective as written), stl (sticking the "
        "landing: q's parameters held fixed in log q; needs kl: monte_carlo for the elbo) or dreg (doubly "
        "reparameterized, for iwae)", "gradient estimator")
    free_bits: Annotated[float, Field(ge=0)] = key(
        0.0, "free bits (Kingma et al. 2016): the loss's KL is max(free_bits, batch-mean KL) per group, in nats; "
        "0: the plain ELBO (elbo only)", "free bits (nats)")
    free_bits_per: Literal["dimension", "total"] = key(
        "dimension", "the free-bits groups: each latent dimension (free_bits nats each) or the total KL",
        "free-bits groups")


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
    kernels = Objective(example=lambda cls: [cls(), cls(k=3, kl="monte_carlo", beta=0.5, warmup=4)],
                        departs=lambda self: self.departs())

    def __init__(self, k: int = 1, kl: Any = "analytic", beta: float = 1.0, warmup: int = 0,
                 gradient: Any = "reparam", free_bits: float = 0.0, free_bits_per: str = "dimension"):
        self.k, self.beta, self.warmup = k, beta, warmup
        self.kl = KL_ESTIMATORS.build(kl)  # a name, a config or a mapping with its hyperparameters
        self._kl_prior = takes_prior(self.kl)
        self.gradient_name = GRADIENTS.configure(gradient).name
        self.gradient = GRADIENTS.build(gradient)
        self.free_bits, self.free_bits_per = float(free_bits), free_bits_per

    name = "elbo"

    def departs(self) -> str | None:
        """Why this instance is not the plain ELBO the fused engine computes (None: it is)."""
        if self.gradient_name != "reparam":
            return f"objective.gradient: {self.gradient_name}"
        if self.free_bits:
            return "objective.free_bits"
        return None

    def refuses(self, model) -> str | None:
        """Why this objective cannot train ``model`` (one line, naming the keys to change), or None."""
        flow = getattr(model, "flow", None) is not None
        kl_name = getattr(getattr(self.kl, "func", self.kl), "__name__", "")
        only = self.gradient.objectives
        if only is not None and self.name not in only:
            return (f"objective.gradient: {self.gradient_name} is defined for objective.name: {' or '.join(only)}, "
                    f"not {self.name} (use objective.gradient: stl for the elbo)")
        if flow and kl_name != "monte_carlo":
            return ("model.flow: a flow's KL has no closed form; use objective.kl: monte_carlo "
                    "(log q(z|x) - log p(z) on the flow's samples)")
        if self.gradient.stop_q and flow:
            return (f"objective.gradient: {self.gradient_name} needs log q at z with q's parameters fixed, which a "
                    f"flow does not give in closed form; use objective.gradient: reparam with model.flow")
        if self.gradient.stop_q and self.name == "elbo" and kl_name != "monte_carlo":
            return (f"objective.gradient: {self.gradient_name} drops the score term of a Monte Carlo KL; use "
                    f"objective.kl: monte_carlo")
        if self.gradient_name == "dreg" and (self.beta != 1.0 or self.warmup):
            return ("objective.gradient: dreg's identity holds for the IWAE bound itself; set objective.beta: 1 "
                    "and objective.warmup: 0 (or use objective.gradient: stl)")
        if self.free_bits and self.free_bits_per == "dimension":
            prior = getattr(model, "prior", None)
            per_dim = "kl_per_dim" if closed_form(self.kl) else "kl_monte_carlo_per_dim"
            if flow or kl_name not in ("analytic", "monte_carlo") or not callable(getattr(prior, per_dim, None)):
                return ("objective.free_bits_per: dimension needs a KL per latent dimension (a factorized prior "
                        "such as standard_normal, no flow, kl analytic or monte_carlo); use "
                        "objective.free_bits_per: total")
        return None

    def kl_loss(self, model, mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """The KL part of the loss (before its weight): the batch mean of ``kl``, or with free bits the
        sum over groups of max(free_bits, the group's batch-mean KL)."""
        if not self.free_bits:
            return kl.mean()
        if self.free_bits_per == "total":
            return elbo.free_bits(kl.unsqueeze(-1), self.free_bits)
        if closed_form(self.kl):
            per_dim = model.prior.kl_per_dim(mu, sigma)
        else:
            per_dim = model.prior.kl_monte_carlo_per_dim(z, mu, sigma)
        return elbo.free_bits(per_dim, self.free_bits)

    def q_params(self, mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q's parameters as log q(z|x) sees them: held fixed (detached) under a stop_q estimator."""
        return (mu.detach(), sigma.detach()) if self.gradient.stop_q else (mu, sigma)

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
        eps = draw_eps(self.k, mu, generator)
        flow = getattr(model, "flow", None) is not None
        if flow:
            z, log_q = model.draw(mu, sigma, eps)
        else:
            z = elbo.reparameterize(mu, sigma, eps)
        rec = elbo.k_sample_mean(model.log_likelihood(z, x))
        q_mu, q_sigma = self.q_params(mu, sigma)
        if flow:  # the Monte Carlo KL of the flow's q (refuses() asks for kl: monte_carlo)
            kl = (log_q - model.prior.log_prob(z)).mean(0)
        else:
            kl = self.kl_term(model, q_mu, q_sigma, z)
        if self.free_bits:
            loss = -rec.mean() + self.kl_weight(step) * self.kl_loss(model, q_mu, q_sigma, z, kl)
        else:
            loss = -(rec - self.kl_weight(step) * kl).mean()
        return Terms(rec=rec, kl=kl, elbo=rec - kl, loss=loss)


@OBJECTIVES.register("iwae", config=ObjectiveConfig)
class IWAE(ELBO):
    """The importance-weighted bound (Burda et al. 2016): log (1/K) sum_k p(x|z_k) [p(z_k)/q(z_k|x)]^beta.

    The loss is minus that bound (beta = 1, warm-up aside); the logged rec, kl and elbo are the
    usual K-sample ELBO terms on the same draws, so curves compare with objective: elbo. With
    K = 1 it is the ELBO with the Monte-Carlo KL, gradient for gradient.
    """

    name = "iwae"

    def departs(self) -> str | None:
        return "objective.name: iwae"

    def __call__(self, model, x: torch.Tensor, generator: torch.Generator | None = None,
                 step: int | None = None) -> Terms:
        mu, sigma = model.encode(x)
        eps = draw_eps(self.k, mu, generator)
        q_mu, q_sigma = self.q_params(mu, sigma)
        flow_log_q = None
        if getattr(model, "flow", None) is None:
            z = elbo.reparameterize(mu, sigma, eps)
        else:
            z, flow_log_q = model.draw(mu, sigma, eps)
        prior = getattr(model, "prior", None)
        weight = self.kl_weight(step)

        def log_weights(z: torch.Tensor, log_q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            log_px = model.log_likelihood(z, x)  # (K, B)
            log_prior = elbo.standard_normal_log_prob(z) if prior is None else prior.log_prob(z)
            if log_q is None:
                log_q = elbo.gaussian_log_prob(z, q_mu, q_sigma)
            return log_px, log_px + weight * (log_prior - log_q)

        log_px, log_w = log_weights(z, flow_log_q)
        z_grad = self.gradient.iwae_z(z, log_w)
        if z_grad is not z:  # the same values, differentiated through z_grad (dreg; no flow: refuses())
            log_w = log_weights(z_grad, None)[1]
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.k)
        rec = elbo.k_sample_mean(log_px)
        if flow_log_q is None:
            kl = self.kl_term(model, mu, sigma, z)
        else:
            kl = (flow_log_q - model.prior.log_prob(z)).mean(0)
        return Terms(rec=rec, kl=kl, elbo=rec - kl, loss=-bound.mean())
