"""How long `vaebench report` takes on a study of many runs (issue: well under a minute for 100).

Builds a study of N runs by copying existing run folders (e.g. the 20,000-update runs of
experiments/ablations.yaml, so every run has full-length metrics and a real checkpoint), giving each
copy its own seed so they form one study, then times a first report and a rerun with nothing changed.

    python benchmarks/report_speed.py results/ablations --runs 100 --jobs 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from vaebench import runs
from vaebench.report import build_report


def synthetic_study(source: Path, n: int, dest: Path) -> Path:
    sources = [d for d in runs.find_runs(source) if runs.read_status(d).get("state") == "done"]
    if not sources:
        raise SystemExit(f"no finished runs under {source}")
    study = dest / "bench"
    for i in range(n):
        src = sources[i % len(sources)]
        dst = study / f"{src.name}-copy{i:03d}"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock"))
        cfg = runs.read_config(dst)
        cfg["seed"] = i  # copies of one config become seeds of it
        (dst / runs.CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a results folder with finished runs to copy")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = synthetic_study(args.source, args.runs, Path(tmp))
        t = time.perf_counter()
        rep = build_report(study, jobs=args.jobs)
        first = time.perf_counter() - t
        t = time.perf_counter()
        build_report(study, jobs=args.jobs)
        again = time.perf_counter() - t
        figures = len(list(rep.out.rglob("*.png")))
    print(f"{args.runs} runs, {figures} PNG figures (+ as many SVG): first report {first:.1f} s, "
          f"rerun with nothing changed {again:.1f} s (jobs={args.jobs or 'one per core'})")


if __name__ == "__main__":
    main()
