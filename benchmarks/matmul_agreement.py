"""train.matmul: reduced against exact on the baseline over seeds (issue 23, rule c).

    vaebench run experiments/matmul.yaml -j 2 --out RESULTS
    python benchmarks/matmul_agreement.py RESULTS/matmul [--out benchmarks/results/matmul-agreement.csv]

Per seed: the last validation ELBO (10,000 training images never trained on) and the test IW
log p(x) (k = 250, evaluated in float32 for both paths) of each path, their difference, and the
seed-to-seed spread of the exact path (standard deviation over seeds) the difference is measured
against. Numbers only: the time the two paths take is benchmarks/study.py's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from bench_io import write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vaebench  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "matmul-agreement.csv"))
args = ap.parse_args()

df = vaebench.load(args.results, final=True)
need = {"val_elbo", "test_iw_ll"}
if df.empty or not need <= set(df.columns):
    sys.exit(f"{args.results}: no finished, evaluated runs of experiments/matmul.yaml")
table = df.pivot_table(index="seed", columns="train.matmul", values=sorted(need))
rows = []
spread = {m: float(table[(m, "exact")].std(ddof=1)) for m in sorted(need)}
for seed in table.index:
    row = {"seed": int(seed)}
    for m in sorted(need):
        e, r = float(table.loc[seed, (m, "exact")]), float(table.loc[seed, (m, "reduced")])
        row |= {f"{m}_exact": round(e, 4), f"{m}_reduced": round(r, 4), f"{m}_diff": round(r - e, 4),
                f"{m}_seed_sd": round(spread[m], 4), f"{m}_diff_over_sd": round((r - e) / spread[m], 3)}
    row |= {"machine": f"{platform.node() and 'vm'} {platform.machine()} {os.cpu_count()} cpus",
            "torch": vaebench.__version__ and __import__("torch").__version__}
    rows.append(row)
write_csv(args.out, rows)
for r in rows:
    print(r)
