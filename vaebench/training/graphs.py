"""CUDA graph capture of an engine's step, on CUDA devices only (the loop calls a Stepper).

A step of these small models is a few dozen kernels of microseconds each, so on a GPU the host's
launch overhead, not the arithmetic, sets the speed. An engine whose step has fixed shapes,
preallocated buffers and no host sync says so (Engine.graph_unsupported is None; the fused engine
does); its step is captured into a torch.cuda.CUDAGraph and replayed: the batch indices go into a
static buffer and the update count into the engine's own (Engine.count) before a replay, the
metrics come out of one after. The host values a step bakes in (the learning rate at this step,
the KL weight) are its graph_key: a step whose key differs from the graph's runs eagerly, and a
key that holds two steps in a row is captured anew (a schedule's next stage, the end of a KL
warmup). Each torch generator the step draws from (Engine.generators) is registered with the graph
(CUDAGraph.register_generator_state): a replay draws from it what an eager step would draw and
advances it as far, so a run's numbers, checkpoints and resumes do not depend on whether its step
was captured. Which path ran is recorded in each run's env.json (``cuda_graph``).

VAEBENCH_CUDA_GRAPH=0 turns capture off (for A/B benchmarks and debugging).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .. import runs

ENV_VAR = "VAEBENCH_CUDA_GRAPH"


def why_not(device: torch.device, engine=None) -> str | None:
    """Why the steps of ``engine`` on ``device`` are not captured (None: they are)."""
    if device.type != "cuda":
        return f"device is {device.type}"
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV_VAR}=0"
    return None if engine is None else engine.graph_unsupported()


class Stepper:
    """engine.step(idx, t, out), replayed from a CUDA graph where it can be.

    The first step after (re)building the engine's buffers runs eagerly (lazy initialisations such
    as cuBLAS handles happen outside the capture), and so does a step whose graph_key differs from
    the step before; a key seen twice in a row is captured and replayed while it holds. A capture
    that fails falls back to eager steps for the rest of the run, and says why in env.json."""

    def __init__(self, engine):
        self.engine = engine
        self.reason = why_not(engine.device, engine)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_key: Any = None
        self.last_key: Any = None
        self.built_for = None  # the buffers the graph was captured on
        self.replays = 0
        self.eager = 0
        self.captures = 0

    @property
    def captured(self) -> bool:
        return self.replays > 0

    def __call__(self, x_idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        en = self.engine
        if self.reason is not None:
            self.eager += 1
            return en.step(x_idx, t, out)
        built = tuple(map(id, en.members))  # the engine rebuilds its buffers when a run leaves
        key = en.graph_key(t)
        last, self.last_key = self.last_key, key
        if built != self.built_for:  # new buffers (first step, or a run left the stack)
            self._release()
            self.built_for, self.last_key = built, None
        elif self.graph is None or key != self.graph_key:
            if key == last:
                self._release()
                self._capture(x_idx, t, out, key)
        if self.graph is None or key != self.graph_key:
            self.eager += 1
            return en.step(x_idx, t, out)
        self.idx.copy_(x_idx, non_blocking=True)
        en.count(t)
        self.graph.replay()
        out.copy_(self.out, non_blocking=True)
        self.replays += 1

    def _capture(self, x_idx: torch.Tensor, t: int, out: torch.Tensor, key) -> bool:
        en = self.engine
        self.idx = torch.empty_like(x_idx, device=en.device)
        self.out = torch.empty(out.shape, dtype=out.dtype, device=en.device)
        graph = torch.cuda.CUDAGraph()
        try:
            for gen in en.generators():
                graph.register_generator_state(gen)
            with torch.cuda.graph(graph):
                en.counted_step(self.idx, t, self.out)  # the count: read from the engine's tensors
        except Exception as e:  # noqa: BLE001 - any capture failure: train on, eagerly, and say so
            self.reason = f"capture failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            torch.cuda.synchronize(en.device)
            return False
        self.graph, self.graph_key = graph, key
        self.captures += 1
        return True

    def _release(self) -> None:
        if self.graph is not None:
            torch.cuda.synchronize(self.engine.device)
            self.graph.reset()
            self.graph, self.graph_key = None, None

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
