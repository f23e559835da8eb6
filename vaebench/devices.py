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


# -- matmul precision (train.matmul) ----------------------------------------------------------------
MATMULS = ("exact", "reduced")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def matmul_path(mode: str, device: torch.device) -> str:
    """What ``train.matmul`` computes on this device, in words (env.json records it)."""
    if mode == "exact":
        return "exact: float32 matmuls"
    if device.type == "cuda":
        return "reduced: TF32 inputs, float32 accumulation (cuBLAS)"
    bf16 = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if bf16:
        return f"reduced: bfloat16 inputs, float32 accumulation (oneDNN; CPU has {', '.join(bf16)})"
    return "reduced asked, but this CPU has no bfloat16 instructions: oneDNN computes float32"


class matmul_precision:
    """Within it, float32 matmuls on ``device`` run at ``mode``'s precision: exact (float32) or
    reduced (bf16 inputs on CPUs with oneDNN, TF32 on CUDA; float32 accumulation and outputs).
    Torch's setting is process-wide, so it is set for the training of one group and put back after:
    a run's end-of-run evaluation is always float32."""

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, device
        self.saved: tuple[str, str] | None = None

    def __enter__(self):
        if self.mode != "exact":
            cpu, cuda = torch.backends.mkldnn.matmul, torch.backends.cuda.matmul
            self.saved = (cpu.fp32_precision, cuda.fp32_precision)
            if self.device.type == "cuda":
                cuda.fp32_precision = "tf32"
            else:
                cpu.fp32_precision = "bf16"
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision = self.saved
        return False
