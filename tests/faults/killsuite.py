"""The seeded kill suite: SIGKILL a small study at many points, rerun after each, and compare every run
with an uninterrupted study. Used by test_kills.py (in `make test`) and `make soak` (more points).

A study of 8 runs: 4 trained as one stack on the fast engine, 4 alone on the torch engine, with a
flush every 5 updates and a checkpoint every 10. Points are of two kinds: exact ones (the command is
killed around the n-th write of a named file, or inside compaction, via inject/sitecustomize.py) and
timed ones (after a seeded delay). Each killed command is followed by a rerun, which may itself be
killed at the next point; the last rerun has no kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).resolve().parent / "inject"

STUDY = {
    "name": "ks",
    "data": {"per_class": 20, "val_size": 20},
    "train": {"steps": 40, "batch_size": 20, "eval_every": 10, "flush_every": 5, "checkpoint_every": 10,
              "threads": 1},
    # the end-of-run evaluation on the 20 validation images with few samples: its path (eval.json, the
    # states that wait for it) without the cost of 250 samples of the 10,000 test images per run
    "eval": {"splits": ["val"], "k": 5},
    "variants": {"stacked": {"train.engine": "fast"},
                 "solo": {"train.engine": "torch", "optim.lr": 0.002}},
    "seeds": 4,
}

# Exact points: where each lands. n counts in one process (with -j 2, in each worker).
EXACT = [
    ("start-up: grid.yaml written, not renamed", "replace:grid.yaml:before:1"),
    ("start-up: a run's config.yaml", "replace:config.yaml:after:2"),
    ("start-up: a run's first status", "replace:status.json:before:1"),
    ("flush: a part written, not renamed", "replace:part-:before:3"),
    ("flush: just after a part", "replace:part-:after:6"),
    ("checkpoint: between two stack members", "replace:checkpoint.pt:before:2"),
    ("checkpoint: just after one", "replace:checkpoint.pt:after:3"),
    ("training: the 9th flush", "replace:part-:after:9"),
    ("checkpoint: a stack's 3rd member, later", "replace:checkpoint.pt:before:7"),
    ("end: final.json written, not renamed", "replace:final.json:before:1"),
    ("compaction: whole file written, parts kept", "replace:metrics.parquet:after:1"),
    ("compaction: after the first part removed", "unlink:part:1"),
    ("compaction: after the fourth part removed", "unlink:part:4"),
    ("end: the done status", "replace:status.json:after:4"),
]
EXACT_POOL = [  # the same places with -j 2: the kill takes the command and both workers
    ("start-up (pool): env.json", "replace:env.json:before:1"),
    ("flush (pool)", "replace:part-:before:4"),
    ("checkpoint (pool): between two stack members", "replace:checkpoint.pt:before:3"),
    ("compaction (pool)", "unlink:part:2"),
    ("compaction (pool): whole file, parts kept", "replace:metrics.parquet:after:1"),
    ("end (pool): final.json", "replace:final.json:after:1"),
]


@dataclass
class Outcome:
    points: int = 0  # kills that landed (the command died by SIGKILL)
    missed: list = field(default_factory=list)  # points whose command finished first
    reruns: int = 0
    runs_compared: int = 0
    rows_compared: int = 0
    max_diff: float = 0.0
    diffs: dict = field(default_factory=dict)  # run folder -> max |difference| (only where not 0)
    problems: list = field(default_factory=list)  # unreadable files, temp files, wrong states


def write_study(folder: Path, study: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study or STUDY, sort_keys=False))
    return path


def command(study: Path, out: Path, jobs: int, kill: str | None = None, timeout: float = 240,
            kill_after: float | None = None) -> int:
    """Run `vaebench run` in its own process group; kill it per ``kill`` or after ``kill_after`` s."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("VAEBENCH_KILL", None)
    if kill:
        env["VAEBENCH_KILL"] = kill
        env["PYTHONPATH"] = os.pathsep.join([str(INJECT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    p = subprocess.Popen([sys.executable, "-m", "vaebench.cli", "run", str(study), "--out", str(out), "-j",
                          str(jobs)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        p.wait(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    return p.returncode


def reference(folder: Path, in_process: bool = False) -> Path:
    """An uninterrupted study: by the command, or with ``in_process`` by vaebench.run_study in this
    process (a test's, which saves a start-up; the killed commands' numbers must equal it all the same)."""
    study = write_study(folder)
    if in_process:
        import vaebench
        from vaebench import runs

        res = vaebench.run_study(study, out=folder / "ref", jobs=1, progress=False)
        done = [runs.run_state(d).state for d in res.run_dirs]
        assert not res.failed and done == ["done"] * len(done), done
    else:
        rc = command(study, folder / "ref", jobs=1)
        assert rc == 0, f"the uninterrupted study exited {rc}"
    return folder / "ref" / STUDY["name"]


def sequence(folder: Path, jobs: int, kills: list[str] | None = None, delays: list[float] | None = None,
             out: Outcome | None = None) -> tuple[Path, Outcome]:
    """A fresh study killed at each point in turn (each command is the previous one's rerun), then
    rerun without kills until it exits 0."""
    out = out or Outcome()
    study = write_study(folder)
    results = folder / "res"
    for kill in kills or []:
        rc = command(study, results, jobs, kill=kill)
        out.points += rc == -signal.SIGKILL
        if rc != -signal.SIGKILL:
            out.missed.append(kill)
        out.reruns += 1
    for delay in delays or []:
        rc = command(study, results, jobs, kill_after=delay)
        out.points += rc == -signal.SIGKILL
        if rc != -signal.SIGKILL:
            out.missed.append(f"after {delay:.2f}s")
        out.reruns += 1
    for _ in range(3):
        rc = command(study, results, jobs)
        out.reruns += 1
        if rc == 0:
            break
    else:
        out.problems.append(f"the final reruns exited {rc}, not 0")
    return results / STUDY["name"], out


def check_folder(root: Path, out: Outcome) -> None:
    """Every file readable, no temp files, every run done by vaebench's own derivation."""
    from vaebench import runs

    for f in root.rglob("*"):
        if f.name.endswith(".tmp"):
            out.problems.append(f"temp file left: {f}")
        elif f.suffix == ".parquet":
            try:
                pq.read_table(f)
            except Exception as e:  # noqa: BLE001
                out.problems.append(f"unreadable {f}: {e}")
        elif f.suffix in (".json",):
            try:
                json.loads(f.read_text())
            except ValueError as e:
                out.problems.append(f"unreadable {f}: {e}")
        elif f.suffix == ".yaml":
            try:
                yaml.safe_load(f.read_text())
            except yaml.YAMLError as e:
                out.problems.append(f"unreadable {f}: {e}")
        elif f.suffix == ".pt":
            import torch

            try:
                torch.load(f, weights_only=True)
            except Exception as e:  # noqa: BLE001
                out.problems.append(f"unreadable {f}: {e}")
    for d in runs.find_runs(root):
        st = runs.run_state(d)
        if st.state != "done":
            out.problems.append(f"{d.name} is {st.state} ({st.reason})")
        if (d / runs.PARTS).exists():
            out.problems.append(f"{d.name} still has metric parts")


def compare(got_root: Path, want_root: Path, out: Outcome) -> None:
    """Rows and values of every run against the uninterrupted study's; final.json too."""
    from vaebench import runs

    want = {d.name.rsplit("-", 1)[-1]: d for d in runs.find_runs(want_root)}
    got = {d.name.rsplit("-", 1)[-1]: d for d in runs.find_runs(got_root)}
    if set(got) != set(want):
        out.problems.append(f"runs differ: {sorted(set(got) ^ set(want))}")
    for rid in sorted(set(got) & set(want)):
        a = runs.read_metrics(got[rid]).sort_values(["split", "step"]).reset_index(drop=True)
        b = runs.read_metrics(want[rid]).sort_values(["split", "step"]).reset_index(drop=True)
        out.runs_compared += 1
        out.rows_compared += len(a)
        if len(a) != len(b) or not (a[["step", "split"]].values == b[["step", "split"]].values).all():
            out.problems.append(f"{got[rid].name}: {len(a)} rows, the uninterrupted run has {len(b)}")
            continue
        diff = float((a[list(runs.TERMS)] - b[list(runs.TERMS)]).abs().max().max())
        fa, fb = runs.read_final(got[rid]), runs.read_final(want[rid])
        for split in ("train", "val"):
            for term in runs.TERMS:
                diff = max(diff, abs(fa[split][term] - fb[split][term]))
        out.max_diff = max(out.max_diff, diff)
        if diff:
            out.diffs[got[rid].name] = diff


def soak_points(seed: int, n: int) -> tuple[list[str], list[float]]:
    """``n`` seeded points: exact ones at random counts, timed ones at random delays."""
    rng = random.Random(seed)
    kinds = [("replace:grid.yaml:before", 1), ("replace:config.yaml:after", 8), ("replace:status.json:before", 12),
             ("replace:status.json:after", 12), ("replace:part-:before", 24), ("replace:part-:after", 24),
             ("replace:checkpoint.pt:before", 12), ("replace:checkpoint.pt:after", 12),
             ("replace:final.json:before", 6), ("replace:metrics.parquet:after", 6), ("unlink:part", 20)]
    exact = []
    for _ in range(n // 2):
        kind, top = rng.choice(kinds)
        exact.append(f"{kind}:{rng.randint(1, top)}")
    return exact, [round(rng.uniform(0.5, 4.0), 2) for _ in range(n - n // 2)]


def frame(out: Outcome) -> pd.DataFrame:
    return pd.DataFrame([{"points": out.points, "reruns": out.reruns, "runs": out.runs_compared,
                          "rows": out.rows_compared, "max_diff": out.max_diff, "problems": len(out.problems)}])


if __name__ == "__main__":  # make soak: python tests/faults/killsuite.py [points] [seed]
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    with tempfile.TemporaryDirectory() as tmp:
        want = reference(Path(tmp) / "ref")
        total = Outcome()
        for i in range(0, n, 4):  # a fresh study every 4 points, so that most land before it is done
            exact, delays = soak_points(seed + i, min(4, n - i))
            got, total = sequence(Path(tmp) / f"soak{i}", jobs=1 + (i // 4) % 2, kills=exact, delays=delays,
                                  out=total)
            check_folder(got, total)
            compare(got, want, total)
            print(f"after {i + min(4, n - i)} points: {frame(total).to_dict('records')[0]}", flush=True)
        print(frame(total).to_string(index=False))
        for name, d in total.diffs.items():
            print(f"differs: {name} by {d:.3g}")
        for p in total.problems:
            print("problem:", p)
        sys.exit(1 if total.problems or total.max_diff else 0)
