"""Optimizers, selected by ``optim.name``; each takes the parameters and the optim config."""

from __future__ import annotations

import torch

from ..registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("adam")
def adam(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    # foreach=True: one fused kernel per step over all tensors instead of one per tensor.
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                            foreach=True)


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    """Plain SGD with momentum betas[0]; eps is unused."""
    return torch.optim.SGD(params, lr=lr, momentum=betas[0], weight_decay=weight_decay, foreach=True)
