"""--executor ray against a cluster started with `ray start --head` on 127.0.0.1, with token
authentication, one of its workers killed mid-run. Every Ray process stays on loopback: if this Ray
cannot be held there, the test skips saying so."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vaebench import runs

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="the Ray executor needs the optional extra vaebench[ray]")
REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs_under(parent: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _find(temp: str, name: str) -> list[int]:
    """Pids whose command line names ``name`` and this head's temp folder (or whose parent's does)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [p for p in pids if name in _cmdline(p) and temp in _cmdline(p)]


@pytest.fixture
def head():
    """A Ray head on 127.0.0.1 with token authentication; (address, env for clients, temp folder)."""
    if not Path("/proc/self/task").is_dir() or not RAY.exists():
        pytest.skip("needs Linux /proc and Ray's `ray` command")
    temp = tempfile.mkdtemp(prefix="vbray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                          "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        raylets = []
        while not raylets and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
            raylets = _find(temp, "raylet/raylet")
        if not raylets:
            pytest.skip(f"ray start --head did not come up on 127.0.0.1 (exit {p.poll()})")
        node_ip = next((a.split("=", 1)[1] for a in _cmdline(raylets[0]).split() if a.startswith("--node_ip_address=")),
                       None)
        if node_ip != "127.0.0.1":
            pytest.skip(f"this Ray version put its node on {node_ip}, not 127.0.0.1; Ray tests stay on loopback")
        time.sleep(2)
        yield f"127.0.0.1:{port}", env, temp
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the head and what it started: this test's own processes
            p.wait(timeout=30)
        except ProcessLookupError:
            pass
        for pid in _find(temp, ""):  # anything of this head's that left its process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_on_loopback_with_a_worker_killed(tmp_path, head):
    address, env, temp = head
    study = {"name": "st", "data": {"per_class": 20, "val_size": 20}, "seeds": 4,
             "train": {"steps": 1500, "batch_size": 20, "eval_every": 500, "flush_every": 50,
                       "checkpoint_every": 100, "threads": 1, "engine": "torch"},
             "eval": {"splits": ["val"], "k": 5}}  # a cheap end-of-run evaluation (not 10,000 test images)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "ray"
    client_env = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # vaebench sets it
    p = subprocess.Popen([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", "ray", "--executor", "ray",
                          "--ray-address", address], cwd=tmp_path, env=client_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        victim = None
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.3)
            started = [d for d in (out / "st").glob("*") if (d / runs.CHECKPOINT).is_file()] if out.exists() else []
            workers = [w for w in _find(temp, "") if _cmdline(w).startswith("ray::execute")] or \
                [w for r in _find(temp, "raylet/raylet") for w in _procs_under(r) if _cmdline(w).startswith("ray::execute")]
            if started and workers:
                victim = workers[0]
        assert victim is not None, ("no Ray worker reached a checkpoint", p.poll(), p.stderr.read() if p.poll() else "")
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=400)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 1, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "of 4 runs are not done" in lines[0] and "Traceback" not in stderr, stderr
    # every run of the study, from grid.yaml: one killed before it wrote its config has only its status
    states = {name: runs.run_state(out / "st" / name) for name in runs.read_grid(out / "st")}
    assert len(states) == 4
    failed = [s for s in states.values() if s.state == "failed"]
    assert len(failed) == 1 and "Ray worker died" in failed[0].reason, states
    assert sum(s.state == "done" for s in states.values()) == 3, states

    local = subprocess.run([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", "local", "-j", "1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr
    want = {d.name: d for d in runs.find_runs(tmp_path / "local")}
    for d in runs.find_runs(out):
        if states[d.name].state == "done":
            pd.testing.assert_frame_equal(runs.read_metrics(d), runs.read_metrics(want[d.name]))
            assert runs.read_final(d) == runs.read_final(want[d.name])
