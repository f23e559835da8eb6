"""On a CUDA device: the captured step (vaebench.training.graphs) gives the same numbers as the eager
step, bit for bit, for a single run and for a mixed stack, and a run in a stack (elementwise kernels
over the whole stack, counter-based noise, batched validation) the numbers it gets alone up to float
rounding (cuBLAS picks its algorithm by the stack's shape: at most SOLO_TOL); env.json says which
path ran.

    python benchmarks/gpu_check.py [--steps 300] [--out CSV]

Trains each case twice in one process (VAEBENCH_CUDA_GRAPH=0, then capture on) and compares every
per-step metric, the final parameters and each run's noise-generator state. Writes one CSV row per
case: max |difference| of the metrics and parameters, generator states equal, env.json's cuda_graph.
Then trains some members of the stacks alone (captured) and compares them with the stack's run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_io import write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaebench import runs  # noqa: E402
from vaebench.config import resolve  # noqa: E402
from vaebench.training import train_group  # noqa: E402

CASES = {
    "single": [{"seed": 0}],
    "single-dynamic-k1": [{"seed": 3, "data.binarize": "dynamic", "objective.k": 1}],
    "stack-mixed-4": [{"seed": 0}, {"seed": 1, "optim.lr": 3e-3},
                      {"seed": 2, "objective.kl": "monte_carlo"}, {"seed": 3, "model.posterior": "log_sigma"}],
    "stack-8-dynamic": [{"seed": s, "data.binarize": "dynamic"} for s in range(8)],
    # the learning rate and KL weight change with the step: graphs keyed on them, captured anew
    "warmup-iwae-schedule": [{"seed": 4, "objective.warmup": 40, "optim.schedule": "iwae"},
                             {"seed": 5, "objective.warmup": 40, "optim.schedule": "iwae"}],
}
SOLO_TOL = 1e-3  # nats or parameter units: float rounding over 300 updates, far below any effect
SOLO = [("stack-mixed-4", 1), ("stack-mixed-4", 3), ("stack-8-dynamic", 0), ("stack-8-dynamic", 6)]


def train(case: list[dict], steps: int, root: Path, capture: bool, device: torch.device) -> list[Path]:
    os.environ["VAEBENCH_CUDA_GRAPH"] = "1" if capture else "0"
    cfgs = [resolve({"name": f"r{i}"}, {"train.steps": steps, "train.eval_every": 50, "train.flush_every": 100,
                                        "train.checkpoint_every": 150, "train.engine": "fast", "train.stack": 64,
                                        **over}) for i, over in enumerate(case)]
    dirs = [root / f"r{i}" for i in range(len(case))]
    train_group(cfgs, dirs, device, False, force=True)
    return dirs


def compare(a: Path, b: Path) -> dict:
    ma, mb = runs.read_metrics(a), runs.read_metrics(b)
    assert len(ma) == len(mb) and (ma["step"].to_numpy() == mb["step"].to_numpy()).all()
    cols = [c for c in ma.columns if ma[c].dtype.kind == "f"]
    dm = float(np.nanmax(np.abs(ma[cols].to_numpy() - mb[cols].to_numpy())))
    ca = torch.load(a / runs.CHECKPOINT, map_location="cpu", weights_only=True)
    cb = torch.load(b / runs.CHECKPOINT, map_location="cpu", weights_only=True)
    dp = max(float((x - cb["model"][k]).abs().max()) for k, x in ca["model"].items())
    gen = bool(torch.equal(ca["noise_gen"].cpu(), cb["noise_gen"].cpu()))
    return {"rows": len(ma), "max_abs_metric_diff": dm, "max_abs_param_diff": dp, "noise_gen_equal": gen,
            "env_eager": runs.read_json(a / runs.ENV).get("cuda_graph"),
            "env_captured": runs.read_json(b / runs.ENV).get("cuda_graph"),
            "reason_captured": runs.read_json(b / runs.ENV).get("cuda_graph_reason", ""),
            "noise": runs.read_json(b / runs.ENV).get("noise", "")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu-check.csv"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="vaebench-gpucheck-"))
    rows = []
    for name, case in CASES.items():
        eager = train(case, args.steps, tmp / name / "eager", False, device)
        captured = train(case, args.steps, tmp / name / "captured", True, device)
        for i, (a, b) in enumerate(zip(eager, captured)):
            row = {"case": name, "run": i, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
                   **compare(a, b)}
            rows.append(row)
            print(row, flush=True)
    for name, i in SOLO:  # the same run alone, captured: equal to its run in the stack
        solo = train([CASES[name][i]], args.steps, tmp / f"solo-{name}-{i}", True, device)[0]
        row = {"case": f"solo-vs-{name}", "run": i, "device": rows[0]["device"], "torch": torch.__version__,
               **compare(solo, tmp / name / "captured" / f"r{i}")}
        row["env_eager"] = row.pop("env_eager")  # here: the solo run's cuda_graph
        rows.append(row)
        print(row, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    write_csv(args.out, rows)
    def right(r):
        tol = SOLO_TOL if r["case"].startswith("solo") else 0.0
        return (r["max_abs_metric_diff"] <= tol and r["max_abs_param_diff"] <= tol and r["noise_gen_equal"]
                and r["env_captured"] is True and r["env_eager"] is r["case"].startswith("solo"))

    ok = all(right(r) for r in rows)
    print(f"captured == eager bit for bit, solo == stack within {SOLO_TOL}, env.json right: {ok}; wrote {args.out}")


if __name__ == "__main__":
    main()
