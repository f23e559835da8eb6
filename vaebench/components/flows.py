"""Posterior flows, selected by ``model.flow``: z0 ~ q0(z|x) = N(mu, diag sigma^2), then z = f(z0),
so log q(z|x) = log q0(z0|x) - log |det df/dz0| (the model's ``draw``).

A flow is an nn.Module built with the latent width (``latent``); ``forward(z0)`` returns
(z, log |det df/dz0|), the log-determinant summed over steps, one per sample (shape z0.shape[:-1]).
Its parameters are the model's (learned, checkpointed, loaded with it); these flows are not
amortized: every image's posterior goes through the same f (its mu and sigma are the encoder's).
``none`` (the default) is no flow: q(z|x) is the encoder's diagonal Gaussian.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..registry import ComponentConfig, Registry, key

FLOWS: Registry = Registry("flow", context=("latent",))


@FLOWS.register("none", build=lambda cfg, **context: None)
class NoFlow:
    """No flow: the model has ``flow = None`` and q(z|x) is the encoder's Gaussian."""


class PlanarConfig(ComponentConfig):
    name: str = key("planar", "planar flow steps (Rezende & Mohamed 2015)", "flow", in_id_at_default=True)
    steps: Annotated[int, Field(gt=0, le=1_000)] = key(4, "planar steps f(z) = z + u tanh(w.z + b)", "flow steps")


class PlanarStep(nn.Module):
    """f(z) = z + u' tanh(w.z + b), with u' = u + (m(w.u) - w.u) w / |w|^2, m(a) = softplus(a) - 1, so
    that w.u' > -1 and f is invertible (Rezende & Mohamed 2015, appendix A); log |det| =
    log(1 + (1 - tanh^2(w.z + b)) w.u')."""

    def __init__(self, latent: int):
        super().__init__()
        self.u = nn.Parameter(0.1 * torch.randn(latent))
        self.w = nn.Parameter(0.1 * torch.randn(latent))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wu = (self.w * self.u).sum()
        u = self.u + (F.softplus(wu) - 1.0 - wu) * self.w / (self.w * self.w).sum()
        h = torch.tanh((z * self.w).sum(-1, keepdim=True) + self.b)
        logdet = torch.log1p((1.0 - h * h).squeeze(-1) * (self.w * u).sum())
        return z + u * h, logdet


@FLOWS.register("planar", config=PlanarConfig)
class Planar(nn.Module):
    """A composition of ``steps`` planar steps."""

    def __init__(self, latent: int, steps: int = 4):
        super().__init__()
        self.steps = nn.ModuleList(PlanarStep(latent) for _ in range(steps))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        for step in self.steps:
            z, logdet = step(z)
            total = total + logdet
        return z, total


class IAFConfig(ComponentConfig):
    name: str = key("iaf", "inverse autoregressive flow steps (Kingma et al. 2016)", "flow", in_id_at_default=True)
    steps: Annotated[int, Field(gt=0, le=100)] = key(2, "autoregressive steps (the order reverses between them)",
                                                     "flow steps")
    hidden: Annotated[int, Field(gt=0, le=10_000)] = key(64, "hidden units of each step's MADE network",
                                                         "IAF hidden units")


class MaskedLinear(nn.Linear):
    """A Linear whose weight is multiplied by a fixed 0/1 mask (a buffer): MADE's autoregressive layers."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """One IAF step (Kingma et al. 2016, eqs. 13-14): (m, s) = MADE(z), sigma = sigmoid(s),
    z' = sigma * z + (1 - sigma) * m; output i depends on z_<i only, so the Jacobian is triangular and
    log |det| = sum log sigma. The gate's bias starts at 1 (the paper's forget-gate bias), so a step
    starts near the identity."""

    def __init__(self, latent: int, hidden: int):
        super().__init__()
        d_in = torch.arange(1, latent + 1)
        d_h = torch.arange(hidden) % max(1, latent - 1) + 1  # deterministic MADE degrees, in 1..L-1
        self.inner = MaskedLinear(latent, hidden, (d_h[:, None] >= d_in[None, :]))
        out_mask = (d_in[:, None] > d_h[None, :])
        self.m = MaskedLinear(hidden, latent, out_mask)
        self.s = MaskedLinear(hidden, latent, out_mask)
        with torch.no_grad():
            self.s.bias.fill_(1.0)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.elu(self.inner(z))
        s = self.s(h)
        gate = torch.sigmoid(s)
        return gate * z + (1.0 - gate) * self.m(h), F.logsigmoid(s).sum(-1)


@FLOWS.register("iaf", config=IAFConfig)
class IAF(nn.Module):
    """``steps`` IAF steps, the latent order reversed between each two (a permutation: log |det| 0)."""

    def __init__(self, latent: int, steps: int = 2, hidden: int = 64):
        super().__init__()
        self.steps = nn.ModuleList(IAFStep(latent, hidden) for _ in range(steps))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        for i, step in enumerate(self.steps):
            if i:
                z = z.flip(-1)
            z, logdet = step(z)
            total = total + logdet
        return z, total
