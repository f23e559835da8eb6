"""Encoder and decoder networks."""

from __future__ import annotations

from typing import Annotated, Any, Sequence

import torch
from pydantic import Field
from torch import nn

from ..registry import ComponentConfig, Registry, component, key
from . import kernels as _kernels
from .kernels import Activation, Network

# torch's activation modules take an ``inplace`` flag: never a hyperparameter
ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation", exclude=("inplace",))
# a network is built with its input and output widths; everything else is its config
NETWORKS: Registry[type[nn.Module]] = Registry("network", context=("n_in", "n_out"))


def tanh_from_sigmoid_(y2: torch.Tensor) -> torch.Tensor:
    """tanh(a) = 2 sigmoid(2a) - 1 in place, given y2 = 2a (a matmul scales for free): torch's
    vectorized tanh is 2-3x slower than its sigmoid on CPU; the two agree to ~2e-7."""
    return torch.sigmoid_(y2).mul_(2.0).sub_(1.0)


# The activations with kernels (vaebench.components.kernels.Activation): torch's modules, plus the
# fused engine's scaled in-place forward and backward, and the evaluator's in-place forward.
@ACTIVATIONS.register("tanh")
class Tanh(nn.Tanh):
    kernels = Activation(2.0, lambda self, y2: tanh_from_sigmoid_(y2), lambda self, g, y: torch.ops.aten.tanh_backward(g, y),
                         inplace_forward_=lambda self, a: torch.tanh_(a))


@ACTIVATIONS.register("relu")
class ReLU(nn.ReLU):
    kernels = Activation(1.0, lambda self, y: torch.relu_(y), lambda self, g, y: torch.ops.aten.threshold_backward(g, y, 0),
                         inplace_forward_=lambda self, a: torch.relu_(a))


@ACTIVATIONS.register("sigmoid")
class Sigmoid(nn.Sigmoid):
    kernels = Activation(1.0, lambda self, y: torch.sigmoid_(y), lambda self, g, y: torch.ops.aten.sigmoid_backward(g, y),
                         inplace_forward_=lambda self, a: torch.sigmoid_(a))


for _name, _cls in {"elu": nn.ELU, "softplus": nn.Softplus, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}.items():
    ACTIVATIONS.register(_name)(_cls)


@torch.no_grad()
def forward_columns(net: nn.Sequential, h_t: torch.Tensor, out: torch.Tensor, layers: int | None = None
                    ) -> torch.Tensor | None:
    """``net`` (its first ``layers`` modules; None: all) on the columns of ``h_t`` (features + 1,
    rows), whose last row is ones, written to ``out`` (features_out, rows), without autograd; None
    (nothing written) unless those are Linears and activations that declare an in-place forward
    kernel (Activation.inplace_forward_). Rows last: the held-out evaluator's layout, where the next
    matmul then runs over contiguous samples; the ones row carries the first layer's bias inside
    its matmul. The MLP's Network.columns kernel."""
    mods = list(net)[:layers]
    acts = {i: _kernels.of(m, "activation") for i, m in enumerate(mods) if not isinstance(m, nn.Linear)}
    if not mods or not isinstance(mods[0], nn.Linear) or any(k is None or k.inplace_forward_ is None
                                                            for k in acts.values()):
        return None
    last_linear = max(i for i, m in enumerate(mods) if isinstance(m, nn.Linear))
    for i, m in enumerate(mods):
        dst = {"out": out} if i == last_linear else {}
        if i == 0:
            w = m.weight if m.bias is None else torch.cat([m.weight, m.bias.unsqueeze(1)], 1)
            h_t = torch.mm(w, h_t if m.bias is not None else h_t[:-1], **dst)
        elif isinstance(m, nn.Linear):
            h_t = (torch.mm(m.weight, h_t, **dst) if m.bias is None
                   else torch.addmm(m.bias.unsqueeze(1), m.weight, h_t, **dst))
        else:
            h_t = acts[i].inplace_forward_(h_t)
    return h_t


class MLPConfig(ComponentConfig):
    name: str = key("mlp", "the network (any registered network)", "network", in_id_at_default=True)
    hidden: list[Annotated[int, Field(gt=0)]] = key([128], "widths of the hidden layers, input side first",
                                                    "hidden width", in_id_at_default=True)
    activation: component(ACTIVATIONS, "tanh") = key(
        "tanh", "the nonlinearity after each hidden layer (any registered activation; a name, or a mapping "
        "with its name and hyperparameters)", "activation", in_id_at_default=True)
    dropout: Annotated[float, Field(ge=0, lt=1)] = key(
        0.0, "probability of zeroing a hidden unit while training (after each activation); 0: no dropout "
        "layers at all", "dropout")


class Dropout(nn.Module):
    """Inverted dropout drawing its mask from the run's own noise generator (``generator``, set by the
    trainer), so a run stays deterministic and resumes exactly; nn.Dropout draws from torch's global one."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def fused_layers(net: nn.Sequential) -> tuple[list[nn.Linear], list] | str:
    """``net`` as (linears, the bound activation kernel between each two), or why the fused engine
    cannot run it: the MLP's Network.layers kernel."""
    mods = list(net)
    linears, acts = mods[0::2], mods[1::2]
    if not linears or any(type(m) is not nn.Linear or m.bias is None for m in linears):
        return f"{type(net).__name__} is not Linear layers with biases between activations"
    kernels = [_kernels.of(a, "activation") for a in acts]
    for a, k in zip(acts, kernels):
        if k is None:
            return f"activation {type(a).__name__} declares no fused kernel"
    return linears, kernels


@NETWORKS.register("mlp", config=MLPConfig)
class MLP(nn.Sequential):
    """Fully connected layers with one activation between them and none after the last.

    The seed's encoder is MLP(196, [128], 16) and its decoder MLP(8, [128], 196):
    the decoder's sigmoid lives in the likelihood, which works on logits. With ``dropout`` > 0 a
    Dropout follows each activation (none at 0, so the layers are the seed's exactly).
    """

    kernels = Network(fused_layers, forward_columns,
                      example=lambda cls: [cls(3, [5, 4], 2, activation=a) for a in ("tanh", "relu", "sigmoid", "elu")])

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: Any = "tanh",
                 dropout: float = 0.0):
        act = ACTIVATIONS.configure(activation)
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS.build(act)]
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_out))
        super().__init__(*layers)
