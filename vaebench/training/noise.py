"""Counter-based Gaussian noise: every run of a stack draws its own stream in one batched computation.

A torch generator is one stream per object, so M runs with their own streams cost M kernel launches
per draw, and a CUDA graph replay refreshes each registered generator from the host (18 ms for
1,024 runs on an H100: benchmarks/results/gpu-h100.md). Here a draw is a pure function of the
run's key and the update count, in the manner of SplitMix64 (Steele, Lea & Flood, OOPSLA 2014):
element i of update t of a run with key k is mix(k + (t * n + i) * GAMMA), where mix is SplitMix64's
finalizer and n the elements per update; the 64 bits give two 24-bit uniforms and Box-Muller one
normal. So a draw is one chain of elementwise kernels over the whole stack, for several updates
at once (the engine draws ahead and each update copies its slice), and nothing needs saving for a
resume: update t draws the same numbers however the run got there.

The fused engine uses it on CUDA (recorded in env.json as ``noise``); on the CPU each run keeps its
torch generator, whose numbers the stored fixture pins (tests/test_numbers.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

MASK64 = (1 << 64) - 1


def _i64(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits (torch's int64 arithmetic wraps)."""
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


GAMMA = _i64(0x9E3779B97F4A7C15)
C1, C2 = _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)
NAME = "counter (SplitMix64 + Box-Muller)"


def run_key(seed: int) -> int:
    """A run's 64-bit noise key from its seed (independent of its init, data-order and torch-noise streams)."""
    return _i64(int(np.random.SeedSequence([seed, 3]).generate_state(1, np.uint64)[0]))


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> on int64 is arithmetic)."""
    return torch.bitwise_and(torch.bitwise_right_shift(z, s), (1 << (64 - s)) - 1)


def mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer (bit-for-bit as in C on uint64), in place on int64 ``z``."""
    z = z.bitwise_xor_(_shr(z, 30)).mul_(C1)
    z = z.bitwise_xor_(_shr(z, 27)).mul_(C2)
    return z.bitwise_xor_(_shr(z, 31))


def normal(keys: torch.Tensor, t: int | torch.Tensor, n: int, steps: int = 1,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normals for the runs with keys ``keys`` (M,) at updates t .. t + steps - 1, n per run
    and update: (M, n), or (M, steps, n) when steps > 1. Element (j, s, i) depends on keys[j],
    t + s and i only, so a draw of many updates at once equals the updates drawn one by one."""
    ctr = (torch.arange(steps * n, device=keys.device, dtype=torch.int64) + t * n).mul_(GAMMA)
    z = mix(keys.view(-1, 1) + ctr)  # (M, steps * n)
    # two 24-bit uniforms in (0, 1) from the high and the low half, exact in float32
    u1 = _shr(z, 40).to(torch.float32).add_(0.5).mul_(2.0 ** -24)
    u2 = torch.bitwise_and(z, (1 << 24) - 1).to(torch.float32).add_(0.5).mul_(2.0 ** -24)
    r = u1.log_().mul_(-2.0).sqrt_()
    res = u2.mul_(2.0 * math.pi).cos_().mul_(r)
    res = res.view(len(keys), steps, n) if steps > 1 else res
    if out is not None:
        out.copy_(res.view(out.shape))
        return out
    return res
