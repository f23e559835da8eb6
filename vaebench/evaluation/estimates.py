"""Held-out estimates as pure functions of a model and a batch of binary images.

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
from ..components.likelihoods import Bernoulli
from ..components.networks import fast_forward

# Rows (images x samples) of decoder work per chunk, and samples per chunk: on CPU 4,000 to
# 16,000 rows ran equally fast (README, Evaluation) and fewer pay Python overhead per chunk;
# a GPU wants far more rows to be busy.
CHUNK_ROWS = {"cpu": 8_192, "cuda": 262_144}
CHUNK_SAMPLES = 1_024


def _split_decoder(model) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear] | None:
    """(everything but the last layer, the last Linear) for a Sequential decoder, else None."""
    dec = model.decoder
    if isinstance(dec, nn.Sequential) and len(dec) and isinstance(dec[-1], nn.Linear):
        return nn.Sequential(*list(dec)[:-1]), dec[-1]
    return None


def _log_weights_fused(body, last: nn.Linear, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                       eps: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """log p(x, z) - log q(z|x) for z = mu + sigma * eps, shape (B, S) for eps (B, S, L).

    Bernoulli with logits l: log p(x|z) = x.l - sum softplus(l), and softplus(l) = (l + |l|)/2
    + log(1 + exp(-|l|)). The linear parts need no logits: x.l - sum(l)/2 = h.(x W - sum_d W_d/2)
    + x.b - sum(b)/2, one matvec per image. What needs the (rows, D) logits is sum |l| and
    log prod (1 + exp(-|l|)) over groups of at most 120 pixels (each factor is in (1, 2]): four
    memory-bound passes instead of torch's softplus, which is twice as slow on CPU.
    log p(z) - log q(z|x) = sum(eps^2 - z^2)/2 + sum log sigma: the 2 pi terms cancel.
    """
    b, s, lat = eps.shape
    z = torch.addcmul(mu.unsqueeze(1), sigma.unsqueeze(1), eps)
    prior_ratio = 0.5 * (eps.square() - z.square()).sum(-1) + torch.log(sigma).sum(-1, keepdim=True)
    h = fast_forward(body, z.view(b * s, lat))
    v = x @ last.weight - 0.5 * last.weight.sum(0)  # (B, H)
    c = x @ last.bias - 0.5 * last.bias.sum()  # (B,)
    linear = torch.bmm(h.view(b, s, -1), v.unsqueeze(-1)).squeeze(-1) + c.unsqueeze(-1)
    a = torch.addmm(last.bias, h, last.weight.t(), out=buf[: b * s]).abs_()
    half_abs = 0.5 * a.sum(-1)
    log1p_term = elbo.sum_log1p_exp_neg_by_sigmoid_(a)
    return linear - (half_abs + log1p_term).view(b, s) + prior_ratio


def _log_weights_generic(model, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                         eps: torch.Tensor) -> torch.Tensor:
    """The same quantity through the model's own likelihood, for any decoder or likelihood."""
    z = elbo.reparameterize(mu.unsqueeze(1), sigma.unsqueeze(1), eps)
    log_px = model.likelihood.log_prob(model.decode(z), x.unsqueeze(1))
    return log_px + elbo.standard_normal_log_prob(z) - elbo.gaussian_log_prob(z, mu.unsqueeze(1), sigma.unsqueeze(1))


@torch.inference_mode()
def iw_log_likelihood(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                      batch: int | None = None, chunk: int | None = None,
                      fused: bool = True, progress: Callable[[int], None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (IW estimate of log p(x), ELBO estimate = mean log weight), each (N,) float64.
    ``progress(images)`` is called after each batch with the number of images it finished.

    Noise: for each batch of images, then each chunk of samples, eps ~ N(0, I) of shape
    (batch, chunk, latent) from ``generator``; results depend on batch and chunk sizes only
    through which draws go where.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n, lat = len(x), model.latent
    chunk = chunk or min(k, CHUNK_SAMPLES)
    batch = batch or max(1, CHUNK_ROWS.get(x.device.type, CHUNK_ROWS["cpu"]) // chunk)
    split = _split_decoder(model) if fused and isinstance(model.likelihood, Bernoulli) else None
    buf = torch.empty((batch * chunk, x.shape[1]), device=x.device, dtype=x.dtype) if split else None
    iw, mean_w = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for i in range(0, n, batch):
        xb = x[i:i + batch]
        mu, sigma = model.encode(xb)
        lse, total = [], torch.zeros(len(xb), dtype=torch.float64, device=x.device)
        for j in range(0, k, chunk):
            eps = torch.randn((len(xb), min(chunk, k - j), lat), generator=generator, device=x.device,
                              dtype=x.dtype)
            if split:
                w = _log_weights_fused(*split, xb, mu, sigma, eps, buf)
            else:
                w = _log_weights_generic(model, xb, mu, sigma, eps)
            w = w.double()
            lse.append(torch.logsumexp(w, dim=1))
            total += w.sum(1)
        iw[i:i + batch] = (torch.logsumexp(torch.stack(lse), dim=0) - math.log(k)).cpu()
        mean_w[i:i + batch] = (total / k).cpu()
        if progress is not None:
            progress(len(xb))
    return iw, mean_w


@torch.inference_mode()
def posterior_stats(model, x: torch.Tensor, batch: int = 2_000) -> tuple[torch.Tensor, torch.Tensor]:
    """E_q[z|x] and the analytic KL(q(z|x) || N(0, I)) per latent dimension, each (N, L)."""
    mus, kls = [], []
    for i in range(0, len(x), batch):
        mu, sigma = model.encode(x[i:i + batch])
        mus.append(mu.double().cpu())
        kls.append((0.5 * (mu**2 + sigma**2 - 1.0) - torch.log(sigma)).double().cpu())
    return torch.cat(mus), torch.cat(kls)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Dimensions u with Cov_x(E_q[z_u|x]) > threshold (Burda et al. 2016, section 5.2)."""
    return int((mu.var(dim=0, unbiased=False) > threshold).sum())


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean over images and its standard error, std / sqrt(n) (0 for a single image)."""
    v = values.double()
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se
