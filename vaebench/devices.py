"""Which torch device a run or an evaluation uses: one rule for the trainer, the grid and the evaluator."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """auto: CUDA when there is a GPU, else the CPU; a device asked for that isn't there is one clear line."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return dev


# Torch threads of a run or an evaluation when none is asked for (train.threads, eval --threads).
DEFAULT_THREADS = 1


def set_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads: ``requested``, else DEFAULT_THREADS; returns the number.

    Why one: at this model size (ops on 10^4 to 10^6 numbers) a second thread buys about 10% on an
    idle machine, and as soon as another process keeps a core busy every op waits at a barrier for
    the thread the scheduler put aside: 2x slower training, up to 10x slower evaluation
    (benchmarks/threads.py). Cores are used by running one run per core (vaebench run -j), and a run
    with a busy neighbour then takes what it takes alone."""
    n = int(requested or DEFAULT_THREADS)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
