"""Held-out estimates as pure functions of a model and a batch of images (0/1, or grey levels).

The importance-weighted estimate (Burda et al. 2016, eq. 8) of log p(x) with k samples
z_i ~ q(z|x):  log (1/k) sum_i p(x, z_i) / q(z_i|x).  It is a lower bound in expectation that
tightens as k grows; k = 1 is the ELBO on that one draw. Images are processed in batches and
the k samples in chunks whose log-sum-exp is combined at the end, so memory is bounded by
``batch * chunk`` rows whatever k is.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .. import elbo
from ..components import kernels

# Rows (images x samples) of decoder work per chunk, and samples per chunk: on CPU 4,000 to
# 16,000 rows ran equally fast (docs/evaluation.md) and fewer pay Python overhead per chunk;
# a GPU wants far more rows to be busy. They also decide which noise draw goes to which image.
CHUNK_ROWS = {"cpu": 8_192, "cuda": 262_144}
CHUNK_SAMPLES = 1_024


def _fused_parts(model) -> tuple[nn.Sequential, nn.Linear, Callable, Callable, Callable] | None:
    """(decoder body, last Linear, the likelihood's linear_log_prob kernel, the decoder's columns
    kernel, the prior's log_ratio kernel) when the components declare what the fused path needs
    (the model's composition, as the VAE writes decode; a decoder with a network kernel, a
    Sequential ending in a Linear; a likelihood kernel for logits from a linear layer; the prior's
    importance-weight kernel); None: the generic path."""
    dec = model.decoder
    if (kernels.of(model, "model") is None or kernels.departs(model, "model") or not isinstance(dec, nn.Sequential)
            or not len(dec) or not isinstance(dec[-1], nn.Linear)):
        return None
    net = kernels.of(dec, "network")
    lik = kernels.of(model.likelihood, "likelihood")
    prior = kernels.of(getattr(model, "prior", None), "prior")
    if net is None or lik is None or lik.linear_log_prob is None or prior is None or prior.log_ratio is None:
        return None
    columns = net.columns or (lambda h_t, out, layers=None: None)
    return nn.Sequential(*list(dec)[:-1]), dec[-1], lik.linear_log_prob, columns, prior.log_ratio


def estimator_path(model, fused: bool = True) -> str:
    """Which path iw_log_likelihood runs for this model: "fused" or "generic"."""
    return "fused" if fused and _fused_parts(model) is not None else "generic"


class _FusedWeights:
    """log p(x, z) - log q(z|x) for a batch of images, from the components' kernels, samples last.

    The decoder body runs on columns (features, B * S) into a block whose extra last row is ones, so
    the last layer's bias is one more column of its weight and per image log p(x|z) is one matmul
    over contiguous samples plus the likelihood's kernel (kernels.Likelihood.linear_log_prob), and
    log p(z) - log q(z|x) is the prior's kernel (kernels.Prior.log_ratio).
    """

    def __init__(self, body: nn.Sequential, last: nn.Linear, lik: Callable, columns: Callable,
                 log_ratio: Callable):
        self.body, self.lik, self.columns, self.log_ratio = body, lik, columns, log_ratio
        self.hidden = last.weight.shape[1]
        self.bias = last.bias is not None
        self.weight = torch.cat([last.weight, last.bias.unsqueeze(1)], 1) if self.bias else last.weight
        self.block: torch.Tensor | None = None  # (K, rows): the body's output, then ones for the bias
        self.z: torch.Tensor | None = None  # (rows, latent + 1): z, then ones for the first bias

    def batch(self, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor):
        log_px = self.lik(x, self.weight)
        log_sigma = torch.log(sigma).sum(-1, keepdim=True)

        def weights(eps: torch.Tensor) -> torch.Tensor:
            b, s, lat = eps.shape
            rows = b * s
            if self.block is None or self.block.shape[1] != rows:
                self.block = torch.empty((self.weight.shape[1], rows), device=eps.device, dtype=eps.dtype)
                self.block[self.hidden:] = 1.0
                self.z = torch.ones((rows, lat + 1), device=eps.device, dtype=eps.dtype)
            z = torch.addcmul(mu.unsqueeze(1), sigma.unsqueeze(1), eps, out=self.z[:, :lat].view(b, s, lat))
            prior = self.log_ratio(eps, z, log_sigma)
            h = self.block[: self.hidden]
            if self.columns(self.z.t(), h, len(self.body)) is None:
                h.copy_(self.body(z.reshape(rows, lat)).t())
            return log_px(self.block.view(-1, b, s).permute(1, 0, 2)) + prior

        return weights


def _log_weights_generic(model, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                         eps: torch.Tensor) -> torch.Tensor:
    """The same quantity through the model's own parts, for any decoder, likelihood, prior and flow
    (log q(z|x) from the model's ``draw``: the flow's log-determinant included)."""
    draw = getattr(model, "draw", None)
    if draw is not None:
        z, log_q = draw(mu.unsqueeze(1), sigma.unsqueeze(1), eps)
    else:
        z = elbo.reparameterize(mu.unsqueeze(1), sigma.unsqueeze(1), eps)
        log_q = elbo.gaussian_log_prob(z, mu.unsqueeze(1), sigma.unsqueeze(1))
    log_px = model.likelihood.log_prob(model.decode(z), x.unsqueeze(1))
    prior = getattr(model, "prior", None)
    log_pz = elbo.standard_normal_log_prob(z) if prior is None else prior.log_prob(z)
    return log_px + log_pz - log_q


@torch.inference_mode()
def iw_log_likelihood(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                      batch: int | None = None, chunk: int | None = None,
                      fused: bool = True, progress: Callable[[int], None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (IW estimate of log p(x), ELBO estimate = mean log weight), each (N,) float64.
    ``progress(images)`` is called after each batch with the number of images it finished.
    ``fused``: the components' kernels where they declare them (estimator_path says which ran).

    Noise: for each batch of images, then each chunk of samples, eps ~ N(0, I) of shape
    (batch, chunk, latent) from ``generator``; results depend on batch and chunk sizes only
    through which draws go where.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n, lat = len(x), model.latent
    chunk = chunk or min(k, CHUNK_SAMPLES)
    batch = batch or max(1, CHUNK_ROWS.get(x.device.type, CHUNK_ROWS["cpu"]) // chunk)
    parts = _fused_parts(model) if fused else None
    engine = _FusedWeights(*parts) if parts else None
    iw, mean_w = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for i in range(0, n, batch):
        xb = x[i:i + batch]
        mu, sigma = model.encode(xb)
        weights = engine.batch(xb, mu, sigma) if engine else None
        lse, total = [], torch.zeros(len(xb), dtype=torch.float64, device=x.device)
        for j in range(0, k, chunk):
            eps = torch.randn((len(xb), min(chunk, k - j), lat), generator=generator, device=x.device,
                              dtype=x.dtype)
            w = weights(eps) if weights else _log_weights_generic(model, xb, mu, sigma, eps)
            w = w.double()
            lse.append(torch.logsumexp(w, dim=1))
            total += w.sum(1)
        iw[i:i + batch] = (torch.logsumexp(torch.stack(lse), dim=0) - math.log(k)).cpu()
        mean_w[i:i + batch] = (total / k).cpu()
        if progress is not None:
            progress(len(xb))
    return iw, mean_w


@torch.inference_mode()
def posterior_stats(model, x: torch.Tensor, batch: int = 2_000) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E_q[z|x] and the analytic KL(q(z|x) || p(z)) per latent dimension, each (N, L); the KL is None
    where it has no per-dimension closed form (a prior without ``kl_per_dim``, a flow)."""
    prior = getattr(model, "prior", None)
    per_dim = getattr(prior, "kl_per_dim", None) if prior is not None else elbo.kl_analytic_per_dim
    if getattr(model, "flow", None) is not None:
        per_dim = None
    mus, kls = [], []
    for i in range(0, len(x), batch):
        mu, sigma = model.encode(x[i:i + batch])
        mus.append(mu.double().cpu())
        if per_dim is not None:
            kls.append(per_dim(mu, sigma).double().cpu())
    return torch.cat(mus), (torch.cat(kls) if kls else None)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Dimensions u with Cov_x(E_q[z_u|x]) > threshold (Burda et al. 2016, section 5.2)."""
    return int((mu.var(dim=0, unbiased=False) > threshold).sum())


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean over images and its standard error, std / sqrt(n) (0 for a single image)."""
    v = values.double()
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se
