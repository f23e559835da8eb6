"""The ablation study as a user waits for it: `vaebench run` against a plain script per config under a shell loop.

    python benchmarks/study.py [--steps 10000] [--repeat 2] [--eval off,on] [--matmul exact]
        [--jobs 2] [--plain-threads 1] [--out benchmarks/results/study-cpu.csv]

Each round times, as whole processes from start to exit and in alternating order:
  * `vaebench run experiments/ablations.yaml -j JOBS --set train.steps=STEPS` with the end-of-run
    evaluation off (``eval.enabled=false``) and on (test ELBO and IW log p(x), K = eval.k = 250);
  * the same configs (derived from the study file through vaebench.study, so the two cannot drift)
    as one `benchmarks/plain_vae.py` process per config, validation every eval_every updates on the
    same 10,000 held-out training images, launched `xargs -P JOBS` by the shell, each process
    --plain-threads threads; with evaluation on, each also estimates the test log p(x) at K = 250.
The ratio is the plain loop's time over vaebench's, per round; the CSV has every time, the median
and range of each ratio, the study's training multiply-adds as a share of what the machine's cores
do at one core's measured float32 matmul peak in the same time, the machine and the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_io import timed, write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments" / "ablations.yaml"


def plain_commands(steps: int, threads: int, eval_k: int) -> list[str]:
    """One plain_vae.py command line per run of the study, from the study's own expanded configs."""
    sys.path.insert(0, str(ROOT))
    import vaebench

    out = []
    for spec in vaebench.study(STUDY).runs:
        c = spec.config
        (h_enc,), (h_dec,) = c.model.encoder.hidden, c.model.decoder.hidden
        assert h_enc == h_dec, "plain_vae.py has one width for both networks"
        args = ["--steps", steps, "--threads", threads, "--hidden", h_enc, "--posterior", c.model.posterior,
                "--kl", c.objective.kl, "--k", c.objective.k, "--seed", c.seed, "--val-from", c.data.val_from,
                "--val-size", c.data.val_size, "--val-every", c.train.eval_every]
        if eval_k:
            args += ["--eval-k", eval_k]
        out.append(shlex.join([sys.executable, "benchmarks/plain_vae.py", *map(str, args)]))
    return out


def train_macs(steps: int) -> float:
    """Multiply-adds of the study's training updates (forward and the two backward matmuls: 3x)."""
    sys.path.insert(0, str(ROOT))
    import vaebench

    total = 0.0
    for spec in vaebench.study(STUDY).runs:
        c = spec.config
        h, k, b, z = c.model.encoder.hidden[0], c.objective.k, c.train.batch_size, c.model.latent
        total += 3 * steps * b * (196 * h + h * 2 * z + k * (z * h + h * 196))
    return total


def matmul_peak() -> float:
    """One core's float32 matmul multiply-adds per second (best of 5, 512x512)."""
    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return 20 * 512**3 / best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--eval", default="off,on", help="end-of-run evaluation: off, on or both")
    ap.add_argument("--matmul", default="exact", help="train.matmul values to time vaebench at")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--plain-threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "study-cpu.csv"))
    args = ap.parse_args(argv)
    load = os.getloadavg()
    machine = f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"
    peak = matmul_peak()
    macs = train_macs(args.steps)
    print(f"{machine}; load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.steps} updates per run; "
          f"one core's matmul peak {peak / 1e9:.1f} G multiply-adds/s", flush=True)
    exe = str(Path(sys.executable).with_name("vaebench"))
    evals = args.eval.split(",")
    modes = args.matmul.split(",")
    rows = []
    for r in range(args.repeat):
        row = {"round": r + 1, "steps": args.steps, "jobs": args.jobs}
        for ev in evals:
            eval_k = 250 if ev == "on" else 0
            cmds = plain_commands(args.steps, args.plain_threads, eval_k)

            def plain() -> float:
                with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                    f.write("\n".join(cmds) + "\n")
                try:
                    return timed(["bash", "-c", f"xargs -P {args.jobs} -I CMD sh -c CMD >/dev/null < {f.name}"])
                finally:
                    os.unlink(f.name)

            def ours(mode: str) -> float:
                with tempfile.TemporaryDirectory() as tmp:
                    return timed([exe, "run", str(STUDY), "-j", str(args.jobs), "--out", tmp,
                                  "--set", f"train.steps={args.steps}", "--set", f"train.matmul={mode}",
                                  "--set", f"eval.enabled={'true' if ev == 'on' else 'false'}"])

            order = ["plain", *modes] if r % 2 else [*modes, "plain"]
            times = {what: (plain() if what == "plain" else ours(what)) for what in order}
            row[f"plain_eval_{ev}_s"] = round(times["plain"], 1)
            for m in modes:
                row[f"vaebench_{m}_eval_{ev}_s"] = round(times[m], 1)
                row[f"ratio_{m}_eval_{ev}"] = round(times["plain"] / times[m], 2)
                if ev == "off":
                    row[f"peak_share_{m}"] = round(macs / (times[m] * peak * args.jobs), 3)
            if ev == "off":
                row["peak_share_plain"] = round(macs / (times["plain"] * peak * args.jobs), 3)
            print(row, flush=True)
        row.update(matmul_peak_gmacs=round(peak / 1e9, 1), machine=machine,
                   load_before=" ".join(f"{v:.2f}" for v in load),
                   load_now=" ".join(f"{v:.2f}" for v in os.getloadavg()))
        rows.append(row)
    for key in [k for k in rows[0] if k.startswith("ratio_")]:
        vals = [r[key] for r in rows]
        print(f"{key}: plain loop / vaebench run, whole processes: median {statistics.median(vals):.2f}x "
              f"(range {min(vals):.2f}-{max(vals):.2f})")
    write_csv(args.out, rows)


if __name__ == "__main__":
    main()
