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

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)
