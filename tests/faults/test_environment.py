"""The user's environment: a path that is a file, a read-only folder, a full disk (at start and
mid-run), permission denied. Each is one line naming the path, exit 2 (a run that hits it mid-way
fails with that line as its reason, exit 1), and nothing already written is damaged.

A full disk and a read-only folder are real: a small tmpfs and a read-only bind mount in a private
user and mount namespace (unshare -rm), so nothing outside the test sees them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaebench import runs

REPO = Path(__file__).resolve().parents[2]
VAEBENCH = [sys.executable, "-m", "vaebench.cli"]
CONFIG = {"name": "st", "data": {"per_class": 20, "val_size": 20},
          "train": {"steps": 20, "batch_size": 20, "eval_every": 10, "flush_every": 5, "checkpoint_every": 10,
                    "threads": 1, "engine": "torch"},
          "eval": {"splits": ["val"], "k": 5}}  # a cheap end-of-run evaluation (not 250 samples of 10,000 images)


def _namespaces() -> str | None:
    if not shutil.which("unshare"):
        return "needs unshare (util-linux) for a private mount namespace"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || exit 3"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"no private user+mount namespace here: {r.stderr.strip()[:120]}"


NS = _namespaces()
needs_ns = pytest.mark.skipif(NS is not None, reason=NS or "")


def vb(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in this process (click's runner): what a user sees, without a Python start-up each time."""
    from click.testing import CliRunner

    from vaebench.cli import cli

    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(cli, list(args), prog_name="vaebench")
    finally:
        os.chdir(old)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


def in_ns(setup: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`vaebench ARGS` after the shell commands ``setup`` (mounts), in a private namespace."""
    cmd = " ".join(map(_quote, [*VAEBENCH, *args]))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"{setup} && exec {cmd}"], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def one_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_results_path_or_study_folder_is_a_file(tmp_path, config):
    (tmp_path / "afile").write_text("x")
    line = one_line(vb("run", str(config), "--out", "afile", cwd=tmp_path))
    assert line == "vaebench: error: --out afile is a file, not a folder; choose another --out or move the file"
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "st").write_text("mine")
    line = one_line(vb("run", str(config), "--out", "o", cwd=tmp_path))
    assert "o/st" in line and "is a file, not a folder" in line
    assert (tmp_path / "o" / "st").read_text() == "mine"
    assert "is a file, not a results folder" in one_line(vb("ls", "afile", cwd=tmp_path))
    assert "is a file" in one_line(vb("report", "afile", cwd=tmp_path))
    assert "is a folder, not a config file" in one_line(vb("run", "o", cwd=tmp_path))


@needs_ns
def test_read_only_results_folder(tmp_path, config):
    assert vb("run", str(config), "--out", "res", "--device", "cpu", cwd=tmp_path).returncode == 0
    before = digest(tmp_path / "res")
    ro = "mount --bind res res && mount -o remount,bind,ro res"
    for args, where in ((["run", str(config), "--out", "res", "--set", "seed=1"], "res/st"),
                        (["report", "res"], "res/report"), (["eval", "res", "--k", "10"], "res/st/")):
        line = one_line(in_ns(ro, *args, cwd=tmp_path))
        assert line.startswith("vaebench: error: read-only file system: cannot write ") and where in line, line
    assert digest(tmp_path / "res") == before  # nothing damaged
    assert vb("ls", "res", cwd=tmp_path).returncode == 0  # reading works


@needs_ns
def test_disk_full_at_start_and_mid_run(tmp_path, config):
    (tmp_path / "full").mkdir()
    fill = "mount -t tmpfs -o size=64k tmpfs full && (dd if=/dev/zero of=full/fill bs=1k count=100 2>/dev/null; true)"
    line = one_line(in_ns(fill, "run", str(config), "--out", "full/res", cwd=tmp_path))
    assert line == ("vaebench: error: no space left on the device writing full/res/st/grid.yaml; free some space, "
                    "then run the same command again")
    (tmp_path / "mid").mkdir()  # room for the config, the parts and status, not for a checkpoint
    r = in_ns("mount -t tmpfs -o size=700k tmpfs mid && mkdir mid/res", "run", str(config), "--out", "mid/res",
              "-j", "1", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "no space left on the device writing mid/res/st/" in r.stdout and "checkpoint.pt" in r.stdout


@pytest.mark.skipif(not shutil.which("setpriv") and os.geteuid() == 0, reason="as root, needs setpriv to drop to nobody")
def test_permission_denied(tmp_path, config):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root passes permission checks: run as nobody
        os.chmod(tmp_path, 0o755)
        config.chmod(0o644)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        env = dict(os.environ, PYTHONPATH=str(REPO), HOME="/tmp")
        probe = subprocess.run([*nobody, *VAEBENCH, "--help"], cwd="/", capture_output=True, env=env, timeout=120)
        if probe.returncode != 0:  # e.g. a checkout under a 0700 folder: nobody cannot reach vaebench
            pytest.skip("the user nobody cannot run vaebench from this checkout (a folder above it is private)")
        r = subprocess.run([*nobody, *VAEBENCH, "run", str(config), "--out", str(locked / "res")], cwd="/",
                           capture_output=True, text=True, env=env, timeout=300)
    else:
        locked.chmod(0o555)
        r = vb("run", str(config), "--out", str(locked / "res"), cwd=tmp_path)
    line = one_line(r)
    assert line == (f"vaebench: error: permission denied: {locked / 'res'}; use a folder you can write to "
                    f"(e.g. another --out) or fix its permissions")
    assert list(locked.iterdir()) == []


def test_result_files_respect_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        runs.write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    runs.write_json(tmp_path / "b.json", {"x": 1})
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o666 & ~old


def test_temp_files_of_killed_writers_are_removed_others_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = runs._HOST
    mine = tmp_path / f".status.json.{host}-{os.getpid()}.abc123.tmp"
    gone = tmp_path / f".status.json.{host}-{dead.pid}.abc123.tmp"
    other_host = tmp_path / f".status.json.elsewhere-{dead.pid}.abc123.tmp"
    for f in (mine, gone, other_host):
        f.write_text("half")
    assert runs.clean_temps(tmp_path) == [gone]
    assert mine.exists() and other_host.exists() and not gone.exists()
