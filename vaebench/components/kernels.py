"""Kernels a fused engine may run instead of a component's torch code, declared beside the component.

A kernel is trusted only where it was declared: a subclass that overrides the math a kernel stands
for (say ``SigmaOutput.sigma``) without overriding the kernel has none, so the fused engine refuses
it and another engine trains it; a subclass that only changes a constant the kernel reads
(``SigmaOutput.floor``) keeps the kernel and gets the same numbers on every engine.
"""

from __future__ import annotations

import types
from typing import Any, Callable, NamedTuple

import torch


class Activation(NamedTuple):
    """An activation as the fused engine runs it, in place on one run's pre-activation.

    scale: the factor the engine applies to the pre-activation (in the matmul, for free) before
    ``forward_``; backward(grad, output) -> grad of the input."""

    scale: float
    forward_: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _owner(cls: type, attr: str) -> type | None:
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def kernel(component: Any, name: str, *math: str) -> Any:
    """``component``'s kernel ``name``, or None when it has none or a subclass below the declaration
    redefines one of the ``math`` attributes the kernel stands for."""
    if isinstance(component, (types.FunctionType, types.BuiltinFunctionType)):
        return getattr(component, name, None)
    cls = component if isinstance(component, type) else type(component)
    owner = _owner(cls, name)
    if owner is None:
        return None
    for attr in math:
        redefined = _owner(cls, attr)
        if redefined is not None and redefined is not owner and issubclass(redefined, owner):
            return None
    return getattr(component, name)
