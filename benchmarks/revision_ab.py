"""The working tree against an earlier revision, command for command, as whole processes.

    python benchmarks/revision_ab.py REV [--repeat 5] [--out CSV] [--steps 3000]

REV's vaebench is unpacked with `git archive` into a temporary folder and run by the same Python
(the installed project's import finder is bypassed, so REV's own code runs); the working tree runs
as installed. Each round runs both in turn (A B, then B A the next round) for each command:
`vaebench run experiments/ablations.yaml --dry-run` (expanding and validating the 24-run study,
what a user waits for before any training) and `vaebench run experiments/baseline.yaml` with
--steps updates (import, data, build, training, checkpoints, metrics, evaluation at k = 50). The
CSV has every time, the median and range of the ratio this tree / REV per command, the load
average before the start, and whether the two baselines wrote the same metrics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench_io import timed, write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = """import runpy, sys
sys.path.insert(0, {root!r})
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.argv = ["vaebench", *sys.argv[1:]]
runpy.run_module("vaebench.cli", run_name="__main__")
"""


def unpack(rev: str, into: Path) -> Path:
    archive = into / "rev.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "vaebench"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    launcher = into / "launch.py"
    launcher.write_text(LAUNCHER.format(root=str(into / "src")))
    return launcher


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "revision-ab.csv"))
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = [sys.executable, str(unpack(args.rev, tmp))]
        new = [sys.executable, "-m", "vaebench.cli"]
        commands = {
            "ablations --dry-run": ["run", "experiments/ablations.yaml", "--dry-run"],
            f"baseline {args.steps} updates": ["run", "experiments/baseline.yaml", "--force", "--set",
                                               f"train.steps={args.steps}", "--set", "eval.k=50"],
        }
        rows = []
        for name, cmd in commands.items():
            outs = {"tree": ["--out", str(tmp / "tree")], "rev": ["--out", str(tmp / "rev")]}
            extra = (lambda who: outs[who]) if "baseline" in name else (lambda who: [])
            for side in (new, old):  # one warm-up each
                timed(side + cmd + extra("tree" if side is new else "rev"))
            for r in range(args.repeat):
                order = [("tree", new), ("rev", old)] if r % 2 == 0 else [("rev", old), ("tree", new)]
                t = {who: timed(side + cmd + extra(who)) for who, side in order}
                rows.append({"command": name, "round": r, "tree_s": round(t["tree"], 3), "rev_s": round(t["rev"], 3),
                             "ratio": round(t["tree"] / t["rev"], 4), "rev": args.rev, "load_before": load})
        same = None
        try:
            import pandas as pd

            a = [pd.read_parquet(p) for p in sorted((tmp / "tree").rglob("metrics.parquet"))]
            b = [pd.read_parquet(p) for p in sorted((tmp / "rev").rglob("metrics.parquet"))]
            same = len(a) == len(b) == 1 and a[0].equals(b[0])
        except Exception:  # noqa: BLE001 - a missing file just leaves the check empty
            pass
        for row in rows:
            row["same_metrics"] = same
    write_csv(args.out, rows)
    for name in dict.fromkeys(r["command"] for r in rows):
        ratios = [r["ratio"] for r in rows if r["command"] == name]
        print(f"{name}: this tree / {args.rev} = {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f}), {len(ratios)} rounds")
    print(f"load before {load:.2f}; same baseline metrics: {same}; {args.out}")


if __name__ == "__main__":
    main()
