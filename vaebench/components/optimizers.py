"""Optimizers, selected by ``optim.name``; each takes the parameters and the optim config."""

from __future__ import annotations

import torch

from ..registry import Registry
from .kernels import Optimizer

OPTIMIZERS: Registry = Registry("optimizer")
# Learning-rate schedules: (update index, total updates) -> factor on optim.lr. A pure function of
# the step, so a resumed run sets the same rate as an uninterrupted one without saving any state.
SCHEDULES: Registry = Registry("learning-rate schedule")


@SCHEDULES.register("none")
def constant(step: int, steps: int) -> float:
    return 1.0


@SCHEDULES.register("iwae")
def iwae(step: int, steps: int) -> float:
    """Burda et al. (2016): stage i = 0..7 lasts 3^i epochs at lr * 10^(-i/7), 3,280 epochs in all.

    Stages are fractions of train.steps, so steps = 3,280 epochs of updates is the paper's
    schedule and fewer steps compress it.
    """
    done = 3_280 * step / steps  # epochs done, on the paper's clock
    i = 0
    while i < 7 and done >= (3 ** (i + 1) - 1) // 2:
        i += 1
    return 10.0 ** (-i / 7)


@OPTIMIZERS.register("adam")
def adam(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    # fused=True: one pass over parameters, moments and gradients per tensor (the kernel _adam_fused
    # runs), 2-3 times faster than foreach=True on CPU.
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                            fused=True)


def _adam_fused(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, step: torch.Tensor, lr: float,
                betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
    """The fused engine's kernel of ``adam``: torch.optim.Adam(fused=True)'s update of each tensor of
    the lists (bias correction, eps, L2 weight decay) in one pass over parameters, moments and gradients."""
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params), amsgrad=False, lr=lr,
                       beta1=betas[0], beta2=betas[1], weight_decay=weight_decay, eps=eps, maximize=False)


# the kernel's two state lists, as torch.optim.Adam names them
adam.kernels = Optimizer(_adam_fused, moments=("exp_avg", "exp_avg_sq"))


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    """Plain SGD with momentum betas[0]; eps is unused."""
    return torch.optim.SGD(params, lr=lr, momentum=betas[0], weight_decay=weight_decay, foreach=True)
