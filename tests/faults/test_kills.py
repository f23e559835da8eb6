"""The seeded kill suite (killsuite.py) and the faults it was written for: a compaction cut at any
instant, a short metrics file, honest states, a worker killed from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml
from filelock import FileLock

import vaebench
import vaebench.api
from vaebench import runs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import killsuite as ks  # noqa: E402

pytestmark = pytest.mark.slow


def test_kill_suite_leaves_exactly_the_uninterrupted_numbers(tmp_path):
    """>= 20 SIGKILLs in start-up, training, flushes, checkpoints (between two stack members too),
    compaction and the end, in-process and with a pool; a rerun after each; then every run equals the
    uninterrupted study's: same rows, same values, every file readable, no temp file left."""
    want = ks.reference(tmp_path / "ref", in_process=True)
    got, out = ks.sequence(tmp_path / "j1", jobs=1, kills=[k for _, k in ks.EXACT])
    ks.check_folder(got, out)
    ks.compare(got, want, out)
    got, out = ks.sequence(tmp_path / "j2", jobs=2, kills=[k for _, k in ks.EXACT_POOL], delays=[3.0],
                           out=out)
    ks.check_folder(got, out)
    ks.compare(got, want, out)
    print("\nkill suite:", ks.frame(out).to_dict("records")[0], "missed:", out.missed)
    assert out.problems == []
    assert out.points >= 20, (out.points, out.missed)
    assert out.runs_compared == 16 and out.rows_compared == 16 * runs.expected_rows(40, 10)
    assert out.max_diff == 0.0, out.diffs


def _table(rows: list[tuple[int, str]]) -> pa.Table:
    steps = [s for s, _ in rows]
    return pa.table({"step": steps, "split": [p for _, p in rows], "rec": [float(s) for s in steps],
                     "kl": [0.5 * s for s in steps], "elbo": [-1.5 * s for s in steps]}, schema=runs.METRICS_SCHEMA)


def test_compaction_cut_at_any_instant_never_loses_a_row(tmp_path):
    """Cut after the whole file is written and after each part removal: the next compaction still has
    every row once (issue: 809 of 1,516 rows after a kill inside the removal)."""
    rows = [(0, "val")] + [(s, "train") for s in range(1, 31)] + [(s, "val") for s in (10, 20, 30)]
    for cut in range(0, 4):
        d = tmp_path / f"cut{cut}"
        for end in (10, 20, 30):
            runs.write_table(d / runs.PARTS / f"part-{end:09d}.parquet",
                             _table([r for r in rows if end - 10 < r[0] <= end or (end == 10 and r[0] == 0)]))
        runs.write_table(d / runs.METRICS, runs.read_tables(runs.part_files(d)))  # the compaction's write ...
        for p in runs.part_files(d)[:cut]:  # ... then cut after `cut` of the removals
            p.unlink()
        assert runs.compact_metrics(d) == len(rows)
        assert runs.compact_metrics(d) == len(rows)  # again: idempotent
        m = runs.read_metrics(d).sort_values(["split", "step"])
        assert len(m) == len(rows) and not (d / runs.PARTS).exists()
        assert sorted(zip(m["step"], m["split"])) == sorted(rows)


def _tiny_study(tmp_path: Path, **extra) -> Path:
    study = {"name": "st", "data": {"per_class": 20, "val_size": 20},
             "train": {"steps": 40, "batch_size": 20, "eval_every": 10, "flush_every": 5, "checkpoint_every": 10,
                       "threads": 1, "engine": "torch"},
             "eval": {"splits": ["val"], "k": 5}, **extra}  # a cheap end-of-run evaluation (not 10,000 test images)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_short_done_run_is_not_done_and_the_rerun_repairs_it(tmp_path):
    path = _tiny_study(tmp_path)
    res = vaebench.run_study(path, out=tmp_path / "r", jobs=1, progress=False)
    d = res.run_dirs[0]
    whole = runs.read_metrics(d)
    want = whole.copy()
    runs.write_table(d / runs.METRICS, pa.Table.from_pandas(whole.iloc[: len(whole) // 2], schema=runs.METRICS_SCHEMA,
                                                            preserve_index=False))
    st = runs.run_state(d)
    assert st.state == "partial" and f"holds {len(whole) // 2} of {len(whole)} rows" in st.reason
    assert vaebench.ls(tmp_path / "r")["state"].tolist() == ["partial"]
    assert vaebench.load(tmp_path / "r", final=True)["state"].tolist() == ["partial"]
    dry = subprocess.run([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(tmp_path / "r"),
                          "--dry-run"], cwd=ks.REPO, capture_output=True, text=True)
    assert "1 partial" in dry.stdout
    again = vaebench.run_study(path, out=tmp_path / "r", jobs=1, progress=False)
    assert again.results[0].state == "done" and runs.run_state(d).state == "done"
    pd.testing.assert_frame_equal(runs.read_metrics(d), want)


def test_states_are_derived_one_way_everywhere(tmp_path):
    """Killed mid-training: partial at its last checkpointed step in ls, --dry-run, load and the report;
    running only while a process holds the run's lock."""
    path = _tiny_study(tmp_path)
    out = tmp_path / "r"
    assert ks.command(path, out, jobs=1, kill="replace:checkpoint.pt:after:2") == -signal.SIGKILL
    d = runs.find_runs(out)[0]
    assert runs.read_status(d)["state"] == "running"  # what the killed process left
    st = runs.run_state(d)
    assert (st.state, st.step) == ("partial", 20)
    assert vaebench.ls(out)[["state", "step"]].values.tolist() == [["partial", 20]]
    assert vaebench.load(out, final=True)[["state", "step"]].values.tolist() == [["partial", 20]]
    assert set(vaebench.load(out)["state"]) == {"partial"}
    dry = subprocess.run([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(out), "--dry-run"],
                         cwd=ks.REPO, capture_output=True, text=True)
    assert "partial   20" in dry.stdout.replace("partial  20", "partial   20") and "1 partial" in dry.stdout
    rep = vaebench.api.report(out, jobs=1)
    assert "partial</span> at update 20" in rep.index.read_text()
    with FileLock(d / runs.LOCK):  # a process training it now
        assert runs.run_state(d).state == "running"
        assert vaebench.ls(out)["state"].tolist() == ["running"]
    assert runs.run_state(d).state == "partial"


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def _pool_workers(pid: int) -> list[int]:
    out = []
    for kid in _children(pid):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "spawn_main" in cmd:
            out.append(kid)
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds pool workers through /proc (Linux)")
def test_a_worker_killed_from_outside_fails_its_runs_only(tmp_path):
    path = _tiny_study(tmp_path, seeds=4, optim={"lr": 0.001})
    study = yaml.safe_load(path.read_text())
    study["train"].update(steps=1500, flush_every=100, checkpoint_every=200, eval_every=500)
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(out), "-j", "2"],
                         cwd=ks.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.2)
            started = [d for d in (out / "st").glob("*") if (d / runs.CHECKPOINT).is_file()] if out.exists() else []
            workers = _pool_workers(p.pid)
            if started and len(workers) == 2:
                victim = workers[0]
        assert victim is not None, "no worker reached a checkpoint in time"
        os.kill(victim, signal.SIGKILL)  # as the OOM killer does
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "of 4 runs are not done" in stderr and "failed" in stderr
    # every run of the study, from grid.yaml: one killed before it wrote its config has only its status
    states = {name: runs.run_state(out / "st" / name) for name in runs.read_grid(out / "st")}
    assert len(states) == 4
    failed = [s for s in states.values() if s.state == "failed"]
    assert failed and all(s.state in ("done", "failed") for s in states.values()), states
    assert len(failed) < 4
    for s in failed:
        assert "SIGKILL" in s.reason and f"pid {victim}" in s.reason
    retry = subprocess.run([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(out), "-j", "2",
                            "--retry-failed"], cwd=ks.REPO, capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, retry.stderr
    assert {runs.run_state(d).state for d in runs.find_runs(out)} == {"done"}


def test_ls_with_runs_of_different_steps(tmp_path):
    """The README's own zip over train.steps (ls crashed with KeyError: ['train.steps'] not in index)."""
    path = _tiny_study(tmp_path, zip={"train.steps": [20, 40], "optim.lr": [0.001, 0.002]})
    out = tmp_path / "r"
    vaebench.run_study(path, out=out, jobs=1, progress=False)
    table = vaebench.ls(out)
    assert table["steps"].tolist() == [20, 40] and table["step"].tolist() == [20, 40]
    assert table["state"].tolist() == ["done", "done"]
    r = subprocess.run([sys.executable, "-m", "vaebench.cli", "ls", str(out)], cwd=ks.REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "steps" in r.stdout, r.stderr
