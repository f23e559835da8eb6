"""A convolutional encoder/decoder for square images (mnist14, mnist28).

Like every network it is built with (n_in, n_out) and maps flat vectors: the image is the side of
the perfect square among the two widths (the wider one when both are). Encoder (image in): (1, s, s)
-> one stride-2 conv + activation per ``channels`` entry -> flatten -> [Linear(hidden) + activation]
-> Linear(n_out). Decoder (image out): Linear(n_in) -> [activation -> Linear] -> activation ->
reshape to the encoder's last (channels, side, side) -> transposed convs back through the encoder's
sides exactly -> 1 channel -> n_out logits, no activation at the end (the likelihood works on logits).

The kernel is odd and padded by (kernel - 1) / 2, so each conv halves the side rounding up
(14 -> 7 -> 4) for any side, and each transposed conv, (side - 1) * 2 + 1 + output_padding, gets it
back with output_padding 1 where the side it restores is even (4 -> 7 -> 14). It declares no fused
kernels: the fused engine refuses it, the generic engine (torch.func vmap) stacks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Sequence

import torch
from pydantic import AfterValidator, BeforeValidator, Field
from torch import nn

from ..errors import ConfigError
from ..registry import ComponentConfig, component, key
from .networks import ACTIVATIONS, NETWORKS


def _odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError(f"kernel must be odd (1, 3, 5, ...), got {k}: its padding (kernel - 1) / 2 halves "
                         f"every side rounding up")
    return k


class ConvConfig(ComponentConfig):
    name: str = key("conv", "the network (any registered network)", "network", in_id_at_default=True)
    channels: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = key(
        [32, 64], "channels of the stride-2 convs, image side first (one conv per entry, each halving the "
        "side rounding up); the decoder mirrors them", "conv channels")
    kernel: Annotated[int, Field(gt=0), AfterValidator(_odd)] = key(
        3, "side of each conv kernel, odd (padding (kernel - 1) / 2)", "conv kernel")
    activation: component(ACTIVATIONS, "relu") = key(
        "relu", "the nonlinearity after each conv and each hidden layer (any registered activation)",
        "activation")
    hidden: Annotated[int, Field(ge=0), BeforeValidator(lambda v: 0 if v is None else v)] = key(
        256, "width of one fully connected layer between the conv stack and the latent side; 0 (or null): "
        "none, the conv stack meets the latent side in one Linear", "conv hidden width")

    def parameters(self, n_in: int, n_out: int) -> int:
        """The built network's parameter count, without building it (vaebench.config.check_fits)."""
        return layout(n_in, n_out, self.channels, self.kernel).parameters(self.hidden)

    def widest(self, n_in: int, n_out: int) -> int:
        """The most values one sample has at any layer (check_fits' activation bound)."""
        return layout(n_in, n_out, self.channels, self.kernel).widest(self.hidden)


def _square_side(n: int) -> int | None:
    s = math.isqrt(n)
    return s if s * s == n else None


@dataclass(frozen=True)
class Layout:
    """The shapes of one conv network: ``sides``, the image side before each conv and after the last
    (s, ceil(s / 2), ...), ``chans``, the channels there (1, *channels)."""

    encoder: bool
    n_in: int
    n_out: int
    kernel: int
    sides: tuple[int, ...]
    chans: tuple[int, ...]

    @property
    def flat(self) -> int:
        return self.chans[-1] * self.sides[-1] ** 2

    @property
    def latent_side(self) -> int:
        return self.n_out if self.encoder else self.n_in

    def parameters(self, hidden: int) -> int:
        k2 = self.kernel ** 2
        convs = sum((a * k2 + 1) * b for a, b in zip(self.chans, self.chans[1:]))  # conv: a -> b
        if not self.encoder:  # transposed: b -> a, a bias per output channel
            convs = sum((b * k2 + 1) * a for a, b in zip(self.chans, self.chans[1:]))
        widths = [self.flat, hidden, self.latent_side] if hidden else [self.flat, self.latent_side]
        if not self.encoder:
            widths = widths[::-1]
        return convs + sum((a + 1) * b for a, b in zip(widths, widths[1:]))

    def widest(self, hidden: int) -> int:
        maps = [c * s * s for c, s in zip(self.chans, self.sides)]
        return max([*maps, hidden, self.n_in, self.n_out])


def layout(n_in: int, n_out: int, channels: Sequence[int], kernel: int) -> Layout:
    """The shapes a conv network (n_in, n_out) has, or a one-line ConfigError naming
    model.encoder/model.decoder and what to change."""
    sq_in, sq_out = _square_side(n_in), _square_side(n_out)
    encoder = sq_in is not None and (sq_out is None or n_in > n_out)
    role = "model.encoder" if (encoder or (sq_out is None and n_in > n_out)) else "model.decoder"
    side = sq_in if encoder else sq_out
    if side is None:
        raise ConfigError(f"{role}: a conv network needs a square image on one side, got {n_in} -> {n_out} "
                          f"values; use data.dataset: mnist14 or mnist28, or {role}.name: mlp")
    sides = [side]
    for _ in channels:
        if sides[-1] < 2:
            break
        sides.append(-(-sides[-1] // 2))
    if len(sides) <= len(channels):
        most = len(sides) - 1
        raise ConfigError(f"{role}.channels: {list(channels)} asks for {len(channels)} stride-2 convs but a "
                          f"{side}x{side} image halves only {most} times (to 1x1); give at most {most} entries")
    return Layout(encoder, n_in, n_out, int(kernel), tuple(sides), (1, *map(int, channels)))


class _Image(nn.Module):
    """Flat (N, C * s * s) <-> images (N, C, s, s), as a layer (so the stack is one Sequential)."""

    def __init__(self, shape: tuple[int, ...] | None):
        super().__init__()
        self.shape = shape  # None: flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.shape is None else x.reshape(len(x), *self.shape)

    def extra_repr(self) -> str:
        return "flatten" if self.shape is None else f"to {self.shape}"


def build_conv(cfg: ConvConfig, n_in: int, n_out: int) -> "ConvNet":
    return ConvNet(n_in, n_out, cfg.channels, cfg.kernel, cfg.activation, cfg.hidden)


@NETWORKS.register("conv", config=ConvConfig, build=build_conv)
class ConvNet(nn.Module):
    """Stride-2 convs (encoder) or their mirror in transposed convs (decoder): see the module's
    docstring. Takes (..., n_in), any leading dims (the objectives' (K, B, L), the evaluator's
    (B, S, L)), and gives (..., n_out)."""

    def __init__(self, n_in: int, n_out: int, channels: Sequence[int] = (32, 64), kernel: int = 3,
                 activation: Any = "relu", hidden: Optional[int] = 256):
        super().__init__()
        self.layout = lay = layout(n_in, n_out, channels, kernel)
        self.n_in, self.n_out, hidden = n_in, n_out, hidden or 0
        act = ACTIVATIONS.configure(activation)
        pad = kernel // 2
        last = (lay.chans[-1], lay.sides[-1], lay.sides[-1])
        layers: list[nn.Module] = []
        if lay.encoder:
            layers.append(_Image((1, lay.sides[0], lay.sides[0])))
            for a, b in zip(lay.chans, lay.chans[1:]):
                layers += [nn.Conv2d(a, b, kernel, stride=2, padding=pad), ACTIVATIONS.build(act)]
            layers.append(_Image(None))
            if hidden:
                layers += [nn.Linear(lay.flat, hidden), ACTIVATIONS.build(act)]
            layers.append(nn.Linear(hidden or lay.flat, n_out))
        else:
            if hidden:
                layers += [nn.Linear(n_in, hidden), ACTIVATIONS.build(act)]
            layers += [nn.Linear(hidden or n_in, lay.flat), ACTIVATIONS.build(act), _Image(last)]
            steps = list(zip(lay.chans, lay.chans[1:], lay.sides))[::-1]  # (to, from, side restored)
            for i, (a, b, side) in enumerate(steps):
                layers.append(nn.ConvTranspose2d(b, a, kernel, stride=2, padding=pad,
                                                 output_padding=1 - side % 2))
                if i < len(steps) - 1:
                    layers.append(ACTIVATIONS.build(act))
            layers.append(_Image(None))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*lead, self.n_out)
