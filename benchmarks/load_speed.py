"""How compact and fast `vaebench.load` is on a big study (issue 14: <= 64 bytes per row, <= 3 s).

Writes a synthetic study of N runs (10 variants x N/10 seeds, the ablation study's shape) whose
run folders hold what a 20,000-update run writes: config.yaml, status.json, final.json, eval.json
and a metrics.parquet of 20,000 train rows and 200 validation rows (random walks, not training),
plus the study's grid.yaml; then times `vaebench.load(path)` (the long form, 6 million rows for
100 runs) and measures its memory with `DataFrame.memory_usage(deep=True)`.

    python benchmarks/load_speed.py --runs 100 --steps 20000 [--dir /tmp/loadbench] [--repeat 3]

The folder is reused when it exists (the data it writes depends only on --runs and --steps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

import vaebench
from vaebench import runs

VARIANTS = {
    "baseline": {}, "width32": {"model.encoder.hidden": [32], "model.decoder.hidden": [32]},
    "width512": {"model.encoder.hidden": [512], "model.decoder.hidden": [512]},
    "log_sigma": {"model.posterior": "log_sigma"}, "monte_carlo_kl": {"objective.kl": "monte_carlo"},
    "k1": {"objective.k": 1}, "k5": {"objective.k": 5}, "k10": {"objective.k": 10},
    "lr3e-4": {"optim.lr": 3e-4}, "latent16": {"model.latent": 16},
}


def write_study(root: Path, n_runs: int, steps: int, eval_every: int = 100) -> Path:
    study_dir = root / "bench"
    if (study_dir / runs.GRID).is_file():
        return study_dir
    seeds = max(1, n_runs // len(VARIANTS))
    s = vaebench.study({"name": "bench", "objective": {"k": 2}, "train": {"steps": steps, "eval_every": eval_every},
                        "variants": VARIANTS, "seeds": seeds})
    rng = np.random.default_rng(0)
    folders = s.folders()
    for spec, folder in zip(s.runs[:n_runs], folders):
        d = study_dir / folder
        d.mkdir(parents=True, exist_ok=True)
        runs.atomic_write(d / runs.CONFIG, yaml.safe_dump(spec.config.to_dict(), sort_keys=False))
        runs.write_json(d / runs.STATUS, {"state": "done", "step": steps})
        train_steps = np.arange(1, steps + 1)
        val_steps = np.arange(0, steps, eval_every)
        step = np.concatenate([train_steps, val_steps])
        split = ["train"] * len(train_steps) + ["val"] * len(val_steps)
        rec = -25 - 110 * np.exp(-step / 300) + rng.normal(0, 1, len(step))
        kl = 8 - 8 * np.exp(-step / 500) + rng.normal(0, 0.2, len(step))
        runs.write_table(d / runs.METRICS, pa.table({"step": step, "split": split, "rec": rec, "kl": kl,
                                                     "elbo": rec - kl}, schema=runs.METRICS_SCHEMA))
        terms = {"rec": float(rec[-1]), "kl": float(kl[-1]), "elbo": float(rec[-1] - kl[-1])}
        runs.write_json(d / runs.FINAL, {"train": {**terms, "n": 10_000}, "val": {**terms, "n": 100}})
        runs.write_json(d / runs.EVAL, {"test": {"iw_ll": terms["elbo"] + 1.5, "iw_ll_se": 0.09, "elbo": terms["elbo"],
                                                 "elbo_se": 0.1, "k": 1000, "n": 10_000}})
    grid = s.to_dict()
    grid["runs"] = grid["runs"][:n_runs]
    runs.atomic_write(study_dir / runs.GRID, yaml.safe_dump(grid, sort_keys=False))
    return study_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--dir", default="/tmp/vaebench-loadbench")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.dir) / f"{args.runs}x{args.steps}"
    t = time.perf_counter()
    study = write_study(root, args.runs, args.steps)
    print(f"study: {study} ({time.perf_counter() - t:.1f}s to write or find)")
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        df = vaebench.load(study)
        times.append(time.perf_counter() - t)
        rows = len(df)
        mem = int(df.memory_usage(deep=True).sum())
        del df
    t = time.perf_counter()
    final = vaebench.load(study, final=True)
    t_final = time.perf_counter() - t
    print(f"vaebench {vaebench.__file__}")
    print(f"load(long): {rows:,} rows, {len(vaebench.load(study, final=True).columns)} columns in final; "
          f"{mem / rows:.1f} bytes per row ({mem / 2**20:.0f} MiB); "
          f"{statistics.median(times):.2f}s median of {len(times)} (all: {', '.join(f'{x:.2f}' for x in times)})")
    print(f"load(final=True): {len(final)} rows in {t_final:.2f}s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
