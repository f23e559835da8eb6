"""CUDA graph capture of the fast engine's step (stacked.Stack.step), on CUDA devices only.

A step of these small models is a few dozen kernels of microseconds each, so on a GPU the host's
launch overhead, not the arithmetic, sets the speed. The step has fixed shapes, preallocated
buffers and no host sync, so it is captured once into a torch.cuda.CUDAGraph and replayed: the
batch indices and Adam's step count go into static buffers before a replay, the metrics come out
of one after. Each run's noise generator is registered with the graph
(CUDAGraph.register_generator_state): a replay draws from it what an eager step would draw and
advances it as far, so a run's numbers, checkpoints and resumes do not depend on whether its step
was captured. Which path ran is recorded in each run's env.json (``cuda_graph``).

VAEBENCH_CUDA_GRAPH=0 turns capture off (for A/B benchmarks and debugging).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import runs

ENV_VAR = "VAEBENCH_CUDA_GRAPH"


def why_not(device: torch.device) -> str | None:
    """Why this device's steps are not captured (None: they are)."""
    if device.type != "cuda":
        return f"device is {device.type}"
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV_VAR}=0"
    return None


class Stepper:
    """stack.step(x_idx, t, out), replayed from a CUDA graph where it can be.

    The first step after (re)building the stack's buffers runs eagerly (lazy initialisations such
    as cuBLAS handles and the stack's cached masks happen outside the capture); the next one is
    captured and every later one replays. A capture that fails falls back to eager steps for the
    rest of the run, and says why in env.json."""

    def __init__(self, stack):
        self.stack = stack
        self.reason = why_not(stack.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.built_for = None  # the buffers the graph was captured on
        self.replays = 0
        self.eager = 0

    @property
    def captured(self) -> bool:
        return self.replays > 0

    def __call__(self, x_idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        st = self.stack
        if self.reason is not None:
            self.eager += 1
            return st.step(x_idx, t, out)
        key = (st.flat.data_ptr(), len(st.members))
        if key != self.built_for:  # new buffers (first step, or a run left the stack)
            self._release()
            self.built_for = key
            self.eager += 1
            return st.step(x_idx, t, out)
        if self.graph is None and not self._capture(x_idx, out):
            self.eager += 1
            return st.step(x_idx, t, out)
        self.idx.copy_(x_idx, non_blocking=True)
        st.adam_step.fill_(t)
        self.graph.replay()
        out.copy_(self.out, non_blocking=True)
        self.replays += 1

    def _capture(self, x_idx: torch.Tensor, out: torch.Tensor) -> bool:
        st = self.stack
        self.idx = torch.empty_like(x_idx, device=st.device)
        self.out = torch.empty(out.shape, dtype=out.dtype, device=st.device)
        graph = torch.cuda.CUDAGraph()
        try:
            for m in st.members:
                graph.register_generator_state(m.noise_gen)
            with torch.cuda.graph(graph):
                st.step(self.idx, None, self.out)  # t=None: Adam reads its step from st.adam_step
        except Exception as e:  # noqa: BLE001 - any capture failure: train on, eagerly, and say so
            self.reason = f"capture failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            torch.cuda.synchronize(st.device)
            return False
        self.graph = graph
        return True

    def _release(self) -> None:
        if self.graph is not None:
            torch.cuda.synchronize(self.stack.device)
            self.graph.reset()
            self.graph = None

    def info(self) -> dict:
        """What env.json records: did a captured step run, and if not, why."""
        rec = {"cuda_graph": self.captured}
        if not self.captured:
            rec["cuda_graph_reason"] = self.reason or "no step was replayed"
        return rec


def record(run_dir: Path, info: dict) -> None:
    """Add the step path to a run's env.json (atomically, keeping what is there)."""
    path = Path(run_dir) / runs.ENV
    try:
        env = runs.read_json(path)
    except (OSError, ValueError):
        env = {}
    runs.write_json(path, (env if isinstance(env, dict) else {}) | info)
