"""Encoder and decoder networks."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..registry import Registry

ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
NETWORKS: Registry[type[nn.Module]] = Registry("network")

for _name, _cls in {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus,
                    "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}.items():
    ACTIVATIONS.register(_name)(_cls)


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
