"""Optimizers, selected by ``optim.name``: a factory ``(params, lr, **hyperparameters)`` -> a
torch.optim optimizer, whose config is an :class:`OptimConfig` subclass (lr, weight decay and the
schedule are every optimizer's; the rest are its own)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field, model_validator

from ..registry import ComponentConfig, Registry, component, key
from .kernels import Optimizer

# Learning-rate schedules: (update index, total updates) -> factor on optim.lr. A pure function of
# the step, so a resumed run sets the same rate as an uninterrupted one without saving any state.
SCHEDULES: Registry = Registry("learning-rate schedule", context=("step", "steps"))


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


class OptimConfig(ComponentConfig):
    """What every optimizer has: its learning rate, L2 weight decay and learning-rate schedule."""

    name: str = key("adam", "the optimizer", "optimizer", in_id_at_default=True)
    lr: Annotated[float, Field(gt=0)] = key(1e-3, "learning rate", "learning rate", per_run=True,
                                            in_id_at_default=True)
    weight_decay: Annotated[float, Field(ge=0)] = key(0.0, "L2 penalty", "weight decay", per_run=True,
                                                      in_id_at_default=True)
    schedule: component(SCHEDULES, "none") = key(
        "none", "learning-rate schedule over train.steps: none or iwae (Burda et al.'s 3^i-epoch stages)",
        "lr schedule", in_id_at_default=True)

    def factory_kwargs(self) -> dict[str, Any]:
        """The optimizer factory's keyword arguments: every hyperparameter but the schedule."""
        return {k: v for k, v in self.params().items() if k != "schedule"}


# An optimizer's config subclasses OptimConfig (a factory without one gets one from its signature).
OPTIMIZERS: Registry = Registry("optimizer", context=("params",), base=OptimConfig)


class AdamConfig(OptimConfig):
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = key(
        (0.9, 0.999), "decay rates of the moment estimates", "Adam β", per_run=True, in_id_at_default=True)
    eps: Annotated[float, Field(gt=0)] = key(1e-8, "added to the denominator", "Adam ε", per_run=True,
                                             in_id_at_default=True)


class SGDConfig(OptimConfig):
    momentum: Annotated[float, Field(ge=0, lt=1)] = key(
        0.0, "momentum factor (torch.optim.SGD's; 0: plain SGD)", "SGD momentum", per_run=True)
    nesterov: bool = key(False, "Nesterov momentum (needs momentum > 0)", "Nesterov", per_run=True)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov: true needs optim.momentum > 0 (e.g. 0.9)")
        return self


@OPTIMIZERS.register("adam", config=AdamConfig)
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


@OPTIMIZERS.register("sgd", config=SGDConfig)
def sgd(params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    """SGD, with momentum and Nesterov's variant as torch.optim.SGD has them."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                           foreach=True)
