"""Signals as schedulers and terminals send them: SIGTERM or SIGKILL to the `vaebench run` process
alone, SIGTERM to one pool worker, Ctrl-C while the workers start, and an interrupted report. After
each, a plain rerun resumes every run to the numbers of an uninterrupted study."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import vaebench
from vaebench import runs

REPO = Path(__file__).resolve().parents[2]
STUDY = {"name": "st", "data": {"per_class": 20, "val_size": 20}, "seeds": 4, "eval": {"enabled": False},
         "train": {"steps": 600, "batch_size": 20, "eval_every": 100, "flush_every": 50, "checkpoint_every": 100,
                   "threads": 1, "engine": "torch"}}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds processes through /proc (Linux)")]


def _study(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def _start(*args: str) -> subprocess.Popen:
    """A vaebench command in its own session (a signal to it reaches it alone, not this test)."""
    return subprocess.Popen([sys.executable, "-m", "vaebench.cli", *args], cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """A child inherits an ignored SIGINT (a worker's SIG_IGN left in this test process by an earlier
    test would make Python skip its Ctrl-C handler): start it as a shell would, SIGINT at default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _reaped(p: subprocess.Popen):
    """The command, SIGKILLed with its workers if a check fails while it runs."""
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaebench.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to read its status."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _workers(pid: int) -> list[int]:
    """The pool workers among ``pid``'s children (not multiprocessing's resource tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for kid in map(int, (task / "children").read_text().split()):
            try:
                if "spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes().decode(errors="replace"):
                    out.append(kid)
            except OSError:
                pass
    return out


def _wait_for(p: subprocess.Popen, out: Path, checkpoints: int, workers: int = 0) -> list[int]:
    """Wait until ``checkpoints`` runs have written one and ``workers`` pool workers are up."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        have = len(list(out.glob("st/*/" + runs.CHECKPOINT))) if out.exists() else 0
        kids = _workers(p.pid) if workers else []
        if have >= checkpoints and len(kids) >= workers:
            return kids
        time.sleep(0.2)
    raise AssertionError(f"no {checkpoints} checkpoints and {workers} pool workers in time")


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(map(_alive, pids)):
        time.sleep(0.2)
    return [pid for pid in pids if _alive(pid)]


def _same_numbers(got: Path, want: Path) -> None:
    a = {d.name: d for d in runs.find_runs(got)}
    b = {d.name: d for d in runs.find_runs(want)}
    assert set(a) == set(b) and a
    for name in a:
        assert runs.run_state(a[name]).state == "done", name
        ma, mb = (runs.read_metrics(x[name]).sort_values(["split", "step"]).reset_index(drop=True) for x in (a, b))
        pd.testing.assert_frame_equal(ma, mb)
        assert runs.read_final(a[name]) == runs.read_final(b[name])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted study, trained in this process (its numbers are those of any -j)."""
    folder = tmp_path_factory.mktemp("ref")
    res = vaebench.run_study(_study(folder), out=folder / "r", jobs=1, progress=False)
    assert not res.failed and all(runs.run_state(d).state == "done" for d in res.run_dirs)
    return folder / "r" / "st"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_main_process_alone_signalled_takes_its_workers_and_a_rerun_resumes(tmp_path, reference, sig):
    path, out = _study(tmp_path), tmp_path / "r"
    with _reaped(_start("run", str(path), "--out", str(out), "-j", "2")) as p:
        workers = _wait_for(p, out, checkpoints=1, workers=2)
        os.kill(p.pid, sig)  # the command alone, as a scheduler or `kill PID` does, not its process group
        _, stderr = p.communicate(timeout=60)
        assert _gone_within(workers, 10) == [], "pool workers outlived their parent by 10 s"
    if sig == signal.SIGTERM:
        assert p.returncode == 143, stderr
        assert stderr.strip() == "vaebench: interrupted by SIGTERM; run the same command again to resume", stderr
    states = [runs.run_state(d) for d in runs.find_runs(out)]
    assert states and all(s.state in ("partial", "done", "new") for s in states), states  # none running, none failed
    again = _run("run", str(path), "--out", str(out), "-j", "2")
    assert again.returncode == 0, again.stderr
    _same_numbers(out / "st", reference)


def test_sigterm_to_one_worker_pauses_its_run_only(tmp_path, reference):
    path, out = _study(tmp_path), tmp_path / "r"
    with _reaped(_start("run", str(path), "--out", str(out), "-j", "2")) as p:
        victim = _wait_for(p, out, checkpoints=2, workers=2)[0]
        os.kill(victim, signal.SIGTERM)  # a scheduler preempting one worker
        stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "of 4 runs are not done (1 partial)" in stderr and "run the same command again" in stderr, stderr
    states = {d.name: runs.run_state(d) for d in runs.find_runs(out)}
    paused = [s for s in states.values() if s.state == "partial"]
    assert len(paused) == 1 and sum(s.state == "done" for s in states.values()) == 3, states
    assert f"pid {victim}" in paused[0].reason and "SIGTERM" in paused[0].reason, paused[0].reason
    again = _run("run", str(path), "--out", str(out), "-j", "2")  # plain: no --retry-failed
    assert again.returncode == 0, again.stderr
    _same_numbers(out / "st", reference)


def test_sigterm_to_a_single_process_run_leaves_it_partial_and_resumable(tmp_path, reference):
    path, out = _study(tmp_path, seeds=1), tmp_path / "r"
    with _reaped(_start("run", str(path), "--out", str(out), "-j", "1")) as p:
        _wait_for(p, out, checkpoints=1)
        os.kill(p.pid, signal.SIGTERM)
        _, stderr = p.communicate(timeout=60)
    assert p.returncode == 143, stderr
    assert stderr.strip() == "vaebench: interrupted by SIGTERM; run the same command again to resume", stderr
    (d,) = runs.find_runs(out)
    st = runs.run_state(d)
    assert st.state == "partial" and 0 < st.step < 600, st
    again = _run("run", str(path), "--out", str(out))
    assert again.returncode == 0, again.stderr
    want = [r for r in runs.find_runs(reference) if r.name == d.name]
    assert want
    pd.testing.assert_frame_equal(runs.read_metrics(d), runs.read_metrics(want[0]))


def test_ctrl_c_while_the_workers_start_prints_one_line(tmp_path):
    path, out = _study(tmp_path), tmp_path / "r"
    with _reaped(_start("run", str(path), "--out", str(out), "-j", "2")) as p:
        _wait_for(p, out, checkpoints=0, workers=2)
        time.sleep(0.5)  # the workers are importing torch
        os.killpg(p.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert stderr.strip() == "vaebench: interrupted; run the same command again to resume", stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_report_stops_at_once_quietly(tmp_path, sig):
    """Enough runs that the report draws in a pool of workers; interrupted while they draw."""
    out = tmp_path / "r"
    train = {**STUDY["train"], "steps": 20, "eval_every": 10, "flush_every": 10, "checkpoint_every": 10}
    made = vaebench.run_study(_study(tmp_path, seeds=12, train=train), out=out, jobs=1, progress=False)  # not the point
    assert not made.failed and len(made.run_dirs) == 12
    with _reaped(_start("report", str(out), "-j", "2")) as p:
        workers = _wait_for(p, out, checkpoints=0, workers=2)
        time.sleep(1.0)
        os.killpg(p.pid, sig) if sig == signal.SIGINT else os.kill(p.pid, sig)
        _, stderr = p.communicate(timeout=10)  # a timeout, not a measurement: queued drawings are dropped
        assert _gone_within(workers, 10) == []
    assert p.returncode == 128 + sig, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("vaebench: interrupted"), stderr
