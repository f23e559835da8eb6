"""The whole `vaebench run experiments/baseline.yaml` command against the plain script, as processes.

    python benchmarks/whole_run.py [--steps 20000] [--repeat 3] [--out CSV]

Each round times, as separate processes from start to exit: `vaebench run experiments/baseline.yaml`
(import, data, model build, training with validation every 100 updates, checkpoints, metrics,
the final train/validation pass, compaction), and benchmarks/plain_vae.py (the same model and
updates, no periodic validation) with torch's default threads and with one thread. The ratio is
the plain script's best of the two over vaebench's time, per round; the CSV has every time, the
median and range of the ratio, the machine and the load average before the start.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from bench_io import timed, write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "whole-run.csv"))
    ap.add_argument("--matmul", default="exact,reduced", help="train.matmul values to time vaebench at")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    machine = f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"
    print(f"{machine}; load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.steps} updates", flush=True)
    exe = Path(sys.executable).with_name("vaebench")
    py = sys.executable
    rows = []
    for r in range(args.repeat):
        ours = {}
        for mode in args.matmul.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                ours[mode] = timed([str(exe), "run", "experiments/baseline.yaml", "--out", tmp,
                                    "--set", f"train.steps={args.steps}", "--set", f"train.matmul={mode}"])
        plain_default = timed([py, "benchmarks/plain_vae.py", "--steps", str(args.steps)])
        plain_1 = timed([py, "benchmarks/plain_vae.py", "--steps", str(args.steps), "--threads", "1"])
        plain = min(plain_default, plain_1)
        row = {"round": r + 1, "steps": args.steps,
               **{f"vaebench_{m}_s": round(t, 2) for m, t in ours.items()},
               "plain_default_threads_s": round(plain_default, 2), "plain_1_thread_s": round(plain_1, 2),
               **{f"ratio_{m}": round(plain / t, 2) for m, t in ours.items()}, "machine": machine,
               "load_before": " ".join(f"{v:.2f}" for v in load),
               "load_now": " ".join(f"{v:.2f}" for v in os.getloadavg())}
        rows.append(row)
        print(row, flush=True)
    for m in args.matmul.split(","):
        ratios = [r[f"ratio_{m}"] for r in rows]
        print(f"plain (best threads) / vaebench run (train.matmul={m}), whole processes: median "
              f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")
    write_csv(args.out, rows)


if __name__ == "__main__":
    main()
