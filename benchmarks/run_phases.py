"""Where the whole `vaebench run experiments/baseline.yaml` goes: wall seconds per phase, in one process.

    python benchmarks/run_phases.py [--steps 20000] [--out CSV]

Runs the CLI in this process (the way the console script does) with timers around its phases:
Python and package imports, the update steps, validation, parquet parts and checkpoints, the final
train/validation pass and compaction (Trainer.finish), the end-of-run test evaluation, and the rest
(config, data, model build, run folder). The interpreter's start and exit are outside. Writes one
CSV row per phase with the machine and the load average before the start.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench_io import write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "run-phases.csv"))
    args = ap.parse_args(argv)
    load = os.getloadavg()
    t = time.perf_counter()
    from vaebench import cli
    from vaebench.grid import jobs
    from vaebench.training import loop, trainer
    from vaebench.training.fused import FusedStack
    from vaebench.training.trainer import TorchEngine

    imports = time.perf_counter() - t
    spent: dict[str, float] = {}

    def timed(owner, name, phase):
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[phase] = spent.get(phase, 0.0) + time.perf_counter() - t0
        setattr(owner, name, wrapper)

    timed(trainer.Trainer, "__init__", "trainer build (data, model, torch.optim: imports torch._dynamo)")
    for engine in (FusedStack, TorchEngine):
        timed(engine, "step", "update steps")
    timed(trainer.Trainer, "eval_val", "validation every eval_every")
    timed(trainer.Trainer, "flush", "parquet parts")
    timed(loop, "save_checkpoints", "checkpoints")
    timed(trainer.Trainer, "finish", "final train/val pass, compaction")
    timed(jobs, "evaluate_after", "end-of-run test evaluation")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        try:
            cli.cli(["run", str(ROOT / "experiments" / "baseline.yaml"), "--out", tmp,
                     "--set", f"train.steps={args.steps}"], prog_name="vaebench", standalone_mode=False)
        except SystemExit:
            pass
        command = time.perf_counter() - t
    rest = command - sum(spent.values())
    rows = [{"phase": "imports (torch, vaebench, ...)", "seconds": imports}]
    rows += [{"phase": k, "seconds": v} for k, v in spent.items()]
    rows.append({"phase": "the rest (config, run folder, engine, summary)", "seconds": rest})
    total = imports + command
    machine = f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"
    for r in rows:
        r |= {"share": round(r["seconds"] / total, 3), "seconds": round(r["seconds"], 3), "steps": args.steps,
              "machine": machine, "load_before": " ".join(f"{v:.2f}" for v in load)}
        print(f"{r['phase']:>58}  {r['seconds']:8.2f} s  {100 * r['share']:5.1f}%")
    print(f"{'in-process total':>58}  {total:8.2f} s")
    write_csv(args.out, rows)


if __name__ == "__main__":
    sys.exit(main())
