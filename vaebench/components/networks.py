"""Encoder and decoder networks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..registry import Registry
from .kernels import Activation, kernel

ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
NETWORKS: Registry[type[nn.Module]] = Registry("network")


def tanh_from_sigmoid_(y2: torch.Tensor) -> torch.Tensor:
    """tanh(a) = 2 sigmoid(2a) - 1 in place, given y2 = 2a (a matmul scales for free): torch's
    vectorized tanh is 2-3x slower than its sigmoid on CPU; the two agree to ~2e-7."""
    return torch.sigmoid_(y2).mul_(2.0).sub_(1.0)


# The activations with fused kernels (vaebench.training.stacked): torch's modules, plus the kernel.
@ACTIVATIONS.register("tanh")
class Tanh(nn.Tanh):
    fused = Activation(2.0, tanh_from_sigmoid_, torch.ops.aten.tanh_backward)


@ACTIVATIONS.register("relu")
class ReLU(nn.ReLU):
    fused = Activation(1.0, torch.relu_, lambda g, y: torch.ops.aten.threshold_backward(g, y, 0))


@ACTIVATIONS.register("sigmoid")
class Sigmoid(nn.Sigmoid):
    fused = Activation(1.0, torch.sigmoid_, torch.ops.aten.sigmoid_backward)


for _name, _cls in {"elu": nn.ELU, "softplus": nn.Softplus, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}.items():
    ACTIVATIONS.register(_name)(_cls)


def fast_forward(net: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """``net(h)`` without autograd, a Linear followed by Tanh as one scaled addmm and
    tanh_from_sigmoid_ (for held-out evaluation, where the decoder runs billions of rows)."""
    mods = list(net)
    i = 0
    while i < len(mods):
        m = mods[i]
        if (isinstance(m, nn.Linear) and m.bias is not None and i + 1 < len(mods)
                and kernel(mods[i + 1], "fused", "forward") is Tanh.fused and h.dim() == 2):
            h = tanh_from_sigmoid_(torch.addmm(m.bias, h, m.weight.t(), beta=2.0, alpha=2.0))
            i += 2
        else:
            h = m(h)
            i += 1
    return h


@NETWORKS.register("mlp")
class MLP(nn.Sequential):
    """Fully connected layers with one activation between them and none after the last.

    The seed's encoder is MLP(196, [128], 16) and its decoder MLP(8, [128], 196):
    the decoder's sigmoid lives in the likelihood, which works on logits.
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "tanh"):
        act = ACTIVATIONS.get(activation)
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, n_out))
        super().__init__(*layers)
