"""--executor slurm on a real single-node Slurm (the ``slurm`` fixture): the pool's numbers, a job
cancelled mid-run left partial with the reason and resumed by the next run, a job warned of its time
limit requeued and finished, SIGTERM to the command, the one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from vaebench import runs

from conftest import REPO, TINY_STUDY as TINY, folders, invoke, one_line_error, run_cli, write_study


def same_numbers(got: Path, want: Path, n: int) -> None:
    """Every run's metrics.parquet and final.json equal, run by run (by id)."""
    a, b = folders(got), folders(want)
    assert a.keys() == b.keys() and len(a) == n
    for rid in a:
        pd.testing.assert_frame_equal(runs.read_metrics(a[rid]).sort_values(["split", "step"], ignore_index=True),
                                      runs.read_metrics(b[rid]).sort_values(["split", "step"], ignore_index=True))
        assert runs.read_final(a[rid]) == runs.read_final(b[rid])


def slurm_jobs(out: Path) -> list[str]:
    """The Slurm job ids submitit filed under OUT/.slurm/."""
    d = out / ".slurm"
    return sorted((p.name for p in d.iterdir() if p.name.isdigit()), key=int) if d.is_dir() else []


def test_a_study_on_slurm_equals_the_local_pool(tmp_path, slurm):
    path = write_study(tmp_path, seeds=4)
    r = run_cli("run", str(path), "--out", str(tmp_path / "slurm"), "--executor", "slurm", "--slurm-time", "10",
                "--slurm-mem", "1G", "--slurm-partition", "debug", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    jobs = slurm_jobs(tmp_path / "slurm")
    assert jobs, "no Slurm job was filed under OUT/.slurm"
    script = (tmp_path / "slurm" / ".slurm" / jobs[0] / f"{jobs[0]}_submission.sh").read_text()
    assert "--partition=debug" in script and "--time=10" in script and "--mem=1G" in script
    assert "--cpus-per-task=1" in script
    pool = run_cli("run", str(path), "--out", str(tmp_path / "pool"), "-j", "2", timeout=120)
    assert pool.returncode == 0, pool.stderr
    same_numbers(tmp_path / "slurm" / "st", tmp_path / "pool" / "st", 4)
    assert "done" in vaebench_ls(tmp_path / "slurm")  # OUT/.slurm is not a run


def vaebench_ls(out: Path) -> str:
    r = invoke("ls", str(out))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_cancelled_job_is_left_partial_a_warned_one_requeues_and_the_next_run_resumes(tmp_path, slurm):
    """scancel (SIGTERM) on one job: its run is partial with the reason and the command exits 1. SIGUSR2
    (submitit's warning before the time limit) on the other: it saves, requeues itself and finishes.
    The next run resumes the first; both end with the numbers of runs never cut."""
    path = write_study(tmp_path, seeds=2, train={**TINY["train"], "steps": 1000, "checkpoint_every": 100})
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(out),
                             "--executor", "slurm"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("st/*/" + runs.CHECKPOINT))) < 2:
        time.sleep(0.05)
    jobs = slurm_jobs(out)
    assert len(jobs) == 2 and proc.poll() is None, "the runs finished before the test could cut them"
    subprocess.run(["scancel", jobs[0]], check=True)
    subprocess.run(["scancel", "--signal=USR2", jobs[1]], check=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stdout + stderr  # some runs are not done (the run command's exit status)
    assert "Traceback" not in stderr
    assert f"its Slurm job {jobs[0]} was" in stdout and "CANCELLED" in stdout, stdout
    assert "1 of 2 runs are not done (1 partial)" in stderr, stderr
    states = {d: runs.run_state(d) for d in folders(out / "st").values()}
    cut = [d for d, st in states.items() if st.state == "partial"]
    assert len(cut) == 1 and f"Slurm job {jobs[0]}" in (states[cut[0]].reason or "")
    shown = subprocess.run(["scontrol", "show", "job", "-o", jobs[1]], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown and "JobState=COMPLETED" in shown, shown
    assert "requeueing Slurm job" in (out / ".slurm" / jobs[1] / f"{jobs[1]}_0_log.err").read_text()

    again = run_cli("run", str(path), "--out", str(out), "--executor", "slurm", timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    ref = run_cli("run", str(path), "--out", str(tmp_path / "ref"), "-j", "2", timeout=120)
    assert ref.returncode == 0, ref.stderr
    same_numbers(out / "st", tmp_path / "ref" / "st", 2)


def test_sigterm_to_the_command_cancels_its_jobs_and_exits_143(tmp_path, slurm):
    import signal

    path = write_study(tmp_path, train={**TINY["train"], "steps": 1000, "checkpoint_every": 100})
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(out),
                             "--executor", "slurm"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("st/*/" + runs.CHECKPOINT)):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the test could stop it"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in stderr and "Traceback" not in stderr, stderr
    jobs = slurm_jobs(out)
    deadline = time.time() + 30
    while time.time() < deadline:  # the job saves its run, then ends CANCELLED
        q = subprocess.run(["squeue", "--states=all", "-h", "-o", "%T", "-j", jobs[0]], capture_output=True, text=True)
        if q.stdout.strip() == "CANCELLED":
            break
        time.sleep(0.2)
    assert q.stdout.strip() == "CANCELLED", q.stdout
    (run,) = folders(out / "st").values()
    assert runs.run_state(run).state == "partial" and runs.run_state(run).step >= 100


def test_a_partition_sbatch_refuses_is_one_line_and_exit_2(tmp_path, slurm):
    one_line_error(run_cli("run", str(write_study(tmp_path)), "--out", str(tmp_path / "r"), "--executor", "slurm",
                           "--slurm-partition", "nope"), "sbatch refused the job", "invalid partition specified: nope")


def test_without_submitit_or_slurm_one_line_and_exit_2(tmp_path, monkeypatch):
    path = write_study(tmp_path)
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    one_line_error(invoke("run", str(path), "--out", str(tmp_path / "r"), "--executor", "slurm"),
                   "--executor slurm needs submitit: pip install 'vaebench[slurm]'")
    monkeypatch.delitem(sys.modules, "submitit")
    pytest.importorskip("submitit", reason="the Slurm executor needs the optional extra vaebench[slurm]")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    one_line_error(invoke("run", str(path), "--out", str(tmp_path / "r"), "--executor", "slurm"),
                   "needs Slurm's commands", "sbatch")
