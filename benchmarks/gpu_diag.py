"""Where a captured stacked step's time goes on CUDA: the host's replay call (one prologue per
registered generator) against the GPU's time per replay, for stacks of M runs.

    python benchmarks/gpu_diag.py [--stacks 1,256,1024] [--out CSV]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_io import write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import BATCH, config  # noqa: E402
from vaebench.training.graphs import Stepper  # noqa: E402
from vaebench.training.fused import FusedStack  # noqa: E402
from vaebench.training.trainer import Trainer  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default="1,8,256,1024")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu-diag.csv"))
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for m in map(int, args.stacks.split(",")):
        ts = [Trainer(config(100, 1, "fast", s, stack=m), tmp / f"{m}-{s}", dev) for s in range(m)]
        stack = FusedStack(ts, dev)
        step = Stepper(stack)
        idx = torch.stack([t.perm[:BATCH] for t in ts]).to(dev)
        out = torch.empty((m, 3), device=dev)
        for t in range(1, 4):
            step(idx, t, out)
        torch.cuda.synchronize()
        host, gpu = [], []
        for t in range(4, 44):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            h0 = time.perf_counter()
            step.graph.replay()
            host.append(time.perf_counter() - h0)
            b.record()
            torch.cuda.synchronize()
            gpu.append(a.elapsed_time(b) / 1e3)
        # eager noise alone: M generator draws, as the step makes them
        torch.cuda.synchronize()
        h0 = time.perf_counter()
        for _ in range(5):
            for j, tr in enumerate(stack.members):
                torch.randn((stack.k, stack.b, stack.latent), generator=tr.noise_gen, out=stack.noise[j])
        torch.cuda.synchronize()
        noise = (time.perf_counter() - h0) / 5
        row = {"M": m, "captured": step.captured, "host_replay_call_ms": 1e3 * statistics.median(host),
               "gpu_per_replay_ms": 1e3 * statistics.median(gpu), "eager_noise_draws_ms": 1e3 * noise,
               "step_updates_per_s_at_gpu_time": m / statistics.median(gpu), "device": torch.cuda.get_device_name()}
        rows.append(row)
        print(row, flush=True)
        del step, stack, ts
        torch.cuda.empty_cache()
    write_csv(args.out, rows)


if __name__ == "__main__":
    main()
