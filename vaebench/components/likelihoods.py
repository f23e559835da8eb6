"""Observation models p(x|z), parameterized by the decoder's logits."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import elbo
from ..registry import Registry
from .kernels import Likelihood

LIKELIHOODS: Registry[type] = Registry("likelihood")


@LIKELIHOODS.register("bernoulli")
class Bernoulli:
    """Binary pixels; the log-probability comes from logits, never log(sigmoid(.))."""

    # A probability of 0/1 pixels: vaebench.config refuses it with a binarizer that keeps grey levels.
    binary_only = True

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return elbo.bernoulli_log_prob(logits, x)

    def _log_prob_and_grad(self, logits: torch.Tensor, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused engine's kernel of ``log_prob``: log p(x | logits) summed over the last dim, and
        its gradient times -scale, (sigmoid(l) - x) * scale, from one logsigmoid and one exp:
        log p = log sigmoid(l) + (x - 1) l, sigmoid(l) = exp(log sigmoid(l))."""
        log_sig = torch.nn.functional.logsigmoid(logits)
        rec = torch.addcmul(log_sig, logits, x - 1.0).sum(-1)
        return rec, log_sig.exp_().sub_(x).mul_(scale)

    def _linear_log_prob(self, x: torch.Tensor, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The held-out evaluator's kernel of ``log_prob`` for logits from a linear layer: given
        images x (B, D) and the layer's weight (D, K), f(h) = log_prob(weight @ h[b], x[b]) for
        h (B, K, S), samples last, shape (B, S). float32 without cancellation (x.l - softplus(l)
        subtracts sums of hundreds of nats).

        log p(x|l) = -sum_d log(1 + exp(m_d)), m = (1 - 2x) l: the signs fold into the weight (per
        image one matmul, no x.l term), and the sum of logs is the log of the product of each group
        of <= 28 factors: one exp per pixel (twice as fast as a sigmoid on CPU), one log per group.
        A sample with a group's product over 1e30 (under -69 nats on those pixels, where float32
        could overflow) is recomputed from its logits with logsigmoid. Images that are not all 0/1
        go through ``log_prob`` itself.
        """
        if not bool(((x == 0) | (x == 1)).all()):
            return lambda h: self.log_prob(torch.matmul(weight, h).transpose(1, 2), x.unsqueeze(1))
        signed = weight * (1.0 - 2.0 * x).unsqueeze(-1)  # (B, D, K)
        d = weight.shape[0]
        g = max(c for c in range(1, min(d, 28) + 1) if d % c == 0)
        bufs: dict[tuple[int, ...], torch.Tensor] = {}

        def log_prob(h: torch.Tensor) -> torch.Tensor:
            b, _, s = h.shape
            key = (b, d, s)
            if key not in bufs:
                bufs.clear()
                bufs[key] = torch.empty(key, device=h.device, dtype=h.dtype)
            m = torch.bmm(signed, h, out=bufs[key])  # h may be a view of a (K, B * S) block: bmm takes its strides
            prods = torch.exp_(m).add_(1.0).view(b, d // g, g, s).prod(2)  # (B, D / g, S)
            high = prods.amax(1) > 1e30
            out = prods.log_().sum(1).neg_()
            if bool(high.any()):
                i, j = high.nonzero(as_tuple=True)
                m_ij = torch.bmm(signed[i], h[i, :, j].unsqueeze(-1)).squeeze(-1)
                out[i, j] = F.logsigmoid(-m_ij).sum(-1)
            return out

        return log_prob

    kernels = Likelihood(_log_prob_and_grad, _linear_log_prob)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli:
    """Pixels in [0, 1] (data.binarize: none): the continuous Bernoulli (Loaiza-Ganem & Cunningham
    2019), the Bernoulli's formula made a density on [0, 1] by its normaliser C(lambda). Its log p(x)
    is a log-density of grey levels: not comparable with a Bernoulli's, and it can be positive.
    No fused kernels: the fused engine refuses it, and the generic and torch engines and the
    held-out evaluator's generic path run this torch code."""

    binary_only = False

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return elbo.continuous_bernoulli_log_prob(logits, x)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return elbo.continuous_bernoulli_mean(logits)
