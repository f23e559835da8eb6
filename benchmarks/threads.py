"""Threads per run on a shared machine: idle vs one busy core, default vs 1 vs 2 torch threads.

    python benchmarks/threads.py [--steps 4000] [--repeat 3] [--out CSV]

For each setting, `vaebench run experiments/baseline.yaml --set train.steps=N` (a single run) and
a 4-run study (`--set seed=0,1,2,3 train.stack=off -j 2`) are timed as whole processes, once with
the machine as it is ("idle") and once with one extra process spinning on a core ("busy").
Settings: default (train.threads unset: vaebench.devices.DEFAULT_THREADS), 1 and 2 threads.
The CSV has every time, the busy / idle ratio per round (median and range), the machine and the
load average before the start. The policy's target: busy / idle <= 1.25 for the default.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_io import timed, write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]
SPIN = "while True: pass"


def command(kind: str, threads: str, steps: int, out: str) -> list[str]:
    exe = str(Path(sys.executable).with_name("vaebench"))
    cmd = [exe, "run", "experiments/baseline.yaml", "--out", out, "--set", f"train.steps={steps}"]
    if threads != "default":
        cmd += ["--set", f"train.threads={threads}"]
    if kind == "study":
        cmd += ["--set", "seed=0,1,2,3", "--set", "train.stack=off", "-j", "2"]
    return cmd


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kinds", default="single,study")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "threads.csv"))
    args = ap.parse_args(argv)
    load = os.getloadavg()
    machine = f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"
    print(f"{machine}; load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.steps} updates", flush=True)
    rows = []
    for r in range(args.repeat):
        for kind in args.kinds.split(","):
            for threads in ("default", "1", "2"):
                times = {}
                for state in ("idle", "busy"):
                    spin = subprocess.Popen([sys.executable, "-c", SPIN]) if state == "busy" else None
                    try:
                        with tempfile.TemporaryDirectory() as tmp:
                            times[state] = timed(command(kind, threads, args.steps, tmp))
                    finally:
                        if spin is not None:
                            spin.kill()
                            spin.wait()
                row = {"round": r + 1, "kind": kind, "threads": threads, "steps": args.steps,
                       "idle_s": round(times["idle"], 2), "busy_s": round(times["busy"], 2),
                       "busy_over_idle": round(times["busy"] / times["idle"], 2), "machine": machine,
                       "load_before": " ".join(f"{v:.2f}" for v in load),
                       "load_now": " ".join(f"{v:.2f}" for v in os.getloadavg())}
                rows.append(row)
                print(row, flush=True)
    for kind in args.kinds.split(","):
        for threads in ("default", "1", "2"):
            sel = [x for x in rows if x["kind"] == kind and x["threads"] == threads]
            q = [x["busy_over_idle"] for x in sel]
            print(f"{kind:6s} threads {threads:7s}: idle {statistics.median(x['idle_s'] for x in sel):6.1f} s, "
                  f"busy {statistics.median(x['busy_s'] for x in sel):6.1f} s, busy/idle median "
                  f"{statistics.median(q):.2f} (range {min(q):.2f}-{max(q):.2f})")
    write_csv(args.out, rows)


if __name__ == "__main__":
    main()
