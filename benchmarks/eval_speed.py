"""Held-out IW log-likelihood: the whole `vaebench eval` command against a plain batched PyTorch estimate.

    python benchmarks/eval_speed.py [RUN_FOLDER] [--k 5000] [--threads 1] [--repeat 3] [--images 5000] [--out CSV]

RUN_FOLDER is a trained run (default: a model of the seed's shape trained here for 2,000 updates);
eval.json in it is rewritten. First a sweep picks the plain estimate's best chunk of samples (on
--sweep-images images; its best on the 2-core CPU is 25 to 100, well below the 250 to 5,000 first
tried here); then, --repeat times, the plain estimate at that chunk on the first --images test images (timed inside
this process: the model and images are already loaded, which favours it) and the whole
`vaebench eval RUN --k K --force` as a process (import, data, model, estimate, eval.json, exit) on
the 10,000 test images. Both use --threads torch threads and float32 with float64 log-sum-exps.
Because a shared machine's load moves by several times within minutes, each round also times the
two estimates interleaved in slices of --slice images (plain, then vaebench's estimator, on the same
slice, in this process), so both see the same load; whole-command ratio = plain's time over
vaebench's interleaved estimate plus the whole command's fixed cost (its wall time minus its
estimate's seconds). Writes a CSV with the machine, the load average before the start, every time,
and on every row the median and range of both ratios over the rounds (plain projected to 10,000
images when --images is smaller). About 5 minutes on a quiet 2-core machine at the defaults.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vaebench import runs  # noqa: E402
from vaebench.evaluation.estimates import iw_log_likelihood  # noqa: E402
from vaebench.evaluation.run import split_images  # noqa: E402
from bench_io import write_csv  # noqa: E402


@torch.inference_mode()
def plain_iw(model, x: torch.Tensor, k: int, batch: int = 100, chunk: int = 1000) -> torch.Tensor:
    """The reference: batches of images, chunks of samples, torch.distributions-style terms."""
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        mu, sigma = model.encode(xb)
        parts = []
        for j in range(0, k, chunk):
            eps = torch.randn((min(chunk, k - j), *mu.shape))
            z = mu + sigma * eps
            log_px = -F.binary_cross_entropy_with_logits(model.decode(z), xb.expand(len(z), -1, -1),
                                                         reduction="none").sum(-1)
            log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_qz = (-0.5 * eps**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
            parts.append((log_px + log_pz - log_qz).double())
        out.append(torch.logsumexp(torch.cat(parts), 0) - math.log(k))
    return torch.cat(out)


def trained_run(tmp: Path) -> Path:
    import vaebench

    res = vaebench.run({"name": "evalbench", "objective": {"k": 2}, "train": {"steps": 2000}}, out=tmp,
                       progress=False)
    return Path(res.path)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=None)
    ap.add_argument("--images", type=int, default=5_000,
                    help="test images for the plain and the interleaved estimates (projected to 10,000)")
    ap.add_argument("--sweep-images", type=int, default=100)
    ap.add_argument("--chunks", default="25,50,100,250,1000,5000", help="the plain estimate's chunk sweep")
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slice", type=int, default=100, help="images per interleaved slice")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval-speed-cpu.csv"))
    args = ap.parse_args(argv)
    load = os.getloadavg()
    machine = f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"
    print(f"{machine}; load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; k={args.k}, {args.threads} threads",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else trained_run(Path(tmp))
        torch.set_num_threads(args.threads)
        model = runs.load_model(run)
        x = split_images(runs.read_config(run)["data"], "test")
        sweep = {}
        for c in map(int, args.chunks.split(",")):
            torch.manual_seed(0)
            sweep[c], _ = timed(lambda: plain_iw(model, x[:args.sweep_images], args.k, chunk=c))
            print(f"plain chunk {c:>5}: {sweep[c]:.2f} s for {args.sweep_images} images", flush=True)
        best = min(sweep, key=sweep.get)
        rows = []
        exe = Path(sys.executable).with_name("vaebench")
        cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "vaebench.cli"]),
               "eval", str(run), "--k", str(args.k), "--force", "--threads", str(args.threads)]
        for r in range(args.repeat):
            torch.manual_seed(0)
            plain_s, iw = timed(lambda: plain_iw(model, x[:args.images], args.k, chunk=best))
            plain_10k = plain_s * len(x) / min(args.images, len(x))
            ours_s, proc = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
            if proc.returncode:
                sys.exit(f"vaebench eval failed: {proc.stderr.strip().splitlines()[-1:]}")
            entry = runs.find_eval(runs.read_evals(run), "test", args.k)
            fixed = ours_s - entry["seconds"]  # import, data, model, eval.json, exit
            inter_plain = inter_ours = 0.0
            gen = torch.Generator().manual_seed(0)
            for i in range(0, min(args.images, len(x)), args.slice):
                xs = x[i:i + args.slice]
                dt, _ = timed(lambda: plain_iw(model, xs, args.k, chunk=best))
                inter_plain += dt
                dt, _ = timed(lambda: iw_log_likelihood(model, xs, args.k, gen))
                inter_ours += dt
            scale = len(x) / min(args.images, len(x))
            row = {"repeat": r + 1, "plain_chunk": best, "plain_images": min(args.images, len(x)),
                   "plain_s": round(plain_s, 2), "plain_10k_s": round(plain_10k, 2),
                   "plain_iw_ll": round(float(iw.mean()), 4), "vaebench_eval_whole_s": round(ours_s, 2),
                   "vaebench_estimate_s": entry["seconds"], "vaebench_iw_ll": round(entry["iw_ll"], 4),
                   "vaebench_estimator": entry.get("estimator"),
                   "ratio": round(plain_10k / ours_s, 2),
                   "interleaved_plain_10k_s": round(inter_plain * scale, 2),
                   "interleaved_vaebench_10k_s": round(inter_ours * scale, 2), "whole_command_fixed_s": round(fixed, 2),
                   "interleaved_ratio": round(inter_plain * scale / (inter_ours * scale + fixed), 2), "k": args.k, "threads": args.threads,
                   "machine": machine, "load_before": " ".join(f"{v:.2f}" for v in load),
                   "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg())}
            rows.append(row)
            print(row, flush=True)
    sweep_s = " ".join(f"{c}:{s:.2f}s" for c, s in sweep.items())
    for key, what in (("ratio", "timed apart"), ("interleaved_ratio", "interleaved")):
        q = [r[key] for r in rows]
        summary = {f"{key}_median": statistics.median(q), f"{key}_min": min(q), f"{key}_max": max(q)}
        print(f"plain (chunk {best}) / whole vaebench eval, {what}: median {summary[key + '_median']:.2f}x "
              f"(range {min(q):.2f}-{max(q):.2f}, {len(rows)} repeats)")
        for r in rows:
            r.update(summary)
    write_csv(args.out, [r | {"sweep": sweep_s} for r in rows])


if __name__ == "__main__":
    main()
