"""Observation models p(x|z), parameterized by the decoder's logits."""

from __future__ import annotations

import torch

from .. import elbo
from ..registry import Registry

LIKELIHOODS: Registry[type] = Registry("likelihood")


@LIKELIHOODS.register("bernoulli")
class Bernoulli:
    """Binary pixels; the log-probability comes from logits, never log(sigmoid(.))."""

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return elbo.bernoulli_log_prob(logits, x)

    def fused_log_prob(self, logits: torch.Tensor, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused engine's kernel of ``log_prob``: log p(x | logits) summed over the last dim, and
        its gradient times -scale, (sigmoid(l) - x) * scale, from one logsigmoid and one exp:
        log p = log sigmoid(l) + (x - 1) l, sigmoid(l) = exp(log sigmoid(l))."""
        log_sig = torch.nn.functional.logsigmoid(logits)
        rec = torch.addcmul(log_sig, logits, x - 1.0).sum(-1)
        return rec, log_sig.exp_().sub_(x).mul_(scale)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)
