"""How long `vaebench report` takes on a study of many runs (issue 15: the first report of 100 runs
in under a minute on 2 cores, the rerun with nothing changed in under 3 s).

    python benchmarks/report_speed.py RESULTS/ablations [--runs 100] [--jobs N] [--repeat 3] [--out CSV]

Builds a study of N runs by copying finished run folders (e.g. the 20,000-update runs of
experiments/ablations.yaml, so every run has full-length metrics and a real checkpoint), giving each
copy its own seed so they form one study. Then, each round:

- first: ``build_report`` into a new report folder, in this process (the wall time of its phases:
  read the runs, draw, write the index; and the CPU seconds of this process and its workers);
- rerun: ``build_report`` again with nothing changed;
- rerun_cli: the whole ``vaebench report`` command with nothing changed, as a process (Python's
  start and the imports included: what a user waits for);
- one_changed: one run's eval.json rewritten (same bytes, new time), then ``build_report``: that run
  and its study are redrawn, the other runs reused.

The CSV has every round's times, the machine and the load average before the start and after each
round, then a median, a min and a max row. The targets are absolute (no straightforward version of
the report to compare with): first under 60 s, rerun under 3 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_io import write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)
from vaebench import runs
from vaebench.report import build_report

ROOT = Path(__file__).resolve().parents[1]


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


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the drawing workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed_build(study: Path, out: Path, jobs: int | None):
    wall, cpu = time.perf_counter(), cpu_seconds()
    rep = build_report(study, out=out, jobs=jobs)
    return rep, time.perf_counter() - wall, cpu_seconds() - cpu


def load_text() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a results folder with finished runs to copy")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=None, help="drawing processes (default: one per core)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "report-speed-cpu.csv"))
    args = ap.parse_args(argv)
    load = load_text()
    machine = f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"
    print(f"{machine}; load before {load}; {args.runs} runs, jobs={args.jobs or 'one per core'}", flush=True)
    cli = [str(Path(sys.executable).with_name("vaebench")), "report"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study = synthetic_study(args.source, args.runs, Path(tmp))
        for r in range(args.repeat):
            out = Path(tmp) / f"report-{r}"
            first, first_s, first_cpu = timed_build(study, out, args.jobs)
            again, again_s, _ = timed_build(study, out, args.jobs)
            assert not again.drawn, f"a rerun with nothing changed redrew {again.drawn}"
            t = time.perf_counter()
            subprocess.run([*cli, str(study), "--out", str(out), *(["--jobs", str(args.jobs)] if args.jobs else [])],
                           check=True, capture_output=True, cwd=ROOT)
            cli_s = time.perf_counter() - t
            changed = sorted(study.iterdir())[r]
            (changed / runs.EVAL).write_bytes((changed / runs.EVAL).read_bytes())  # same bytes, a new time
            one, one_s, _ = timed_build(study, out, args.jobs)
            assert one.drawn == [changed.name, "study bench"], one.drawn
            figures = len(list(out.rglob("*.png")))
            row = {"round": r + 1, "runs": args.runs, "png_figures": figures,
                   "first_s": round(first_s, 2), "first_cpu_s": round(first_cpu, 1),
                   **{f"first_{k}_s": round(v, 2) for k, v in first.seconds.items()},
                   "rerun_s": round(again_s, 2), "rerun_cli_s": round(cli_s, 2), "one_changed_s": round(one_s, 2),
                   "jobs": args.jobs or os.cpu_count(), "machine": machine, "load_before": load,
                   "load_now": load_text()}
            rows.append(row)
            print(row, flush=True)
            shutil.rmtree(out)
    times = [k for k in rows[0] if k.endswith("_s")]
    for name, f in (("median", statistics.median), ("min", min), ("max", max)):
        rows.append({"round": name, **{k: round(f(r[k] for r in rows[:args.repeat]), 2) for k in times}})
    med = rows[args.repeat]
    print(f"{args.runs} runs: first report median {med['first_s']:.1f} s (range {rows[-2]['first_s']:.1f}-"
          f"{rows[-1]['first_s']:.1f}), rerun with nothing changed {med['rerun_s']:.2f} s in process, "
          f"{med['rerun_cli_s']:.2f} s as a command; one run changed {med['one_changed_s']:.1f} s; load before {load}")
    write_csv(args.out, rows)


if __name__ == "__main__":
    main()
