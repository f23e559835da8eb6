from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def pytest_configure(config):
    # Tests train tiny models; one thread keeps them deterministic and fast on 2 cores.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _sigint_restored():
    """Each test starts with Python's own Ctrl-C handler: a test that ran a pool worker's set-up in
    this process (SIGINT ignored) must not leave it for the next, nor for the processes it starts."""
    import signal

    yield
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:  # not the main thread: nothing of this process's to restore
            pass


@pytest.fixture(autouse=True)
def _one_worker_by_default(monkeypatch):
    """A study trained in this process without -j takes one worker, not one per core: spawning a pool
    (each worker importing torch) costs seconds, while pytest-xdist already keeps every core busy. A
    test that is about the pool says -j 2 (jobs=2); the commands run in subprocesses see every core."""
    from vaebench.grid import runner

    monkeypatch.setattr(runner, "available_cores", lambda: 1)


@pytest.fixture
def tiny_overrides() -> list[str]:
    """A run small enough for a unit test (a few seconds on one core)."""
    return ["data.per_class=50", "data.val_size=50", "train.steps=60", "train.batch_size=50",
            "train.eval_every=20", "train.flush_every=20", "train.checkpoint_every=40", "train.threads=1",
            "eval.enabled=false"]


# A study small enough for a unit test, as a config mapping (write_study adds the study's own keys).
TINY_STUDY = {"data": {"per_class": 20, "val_size": 20}, "eval": {"enabled": False},
              "train": {"steps": 40, "batch_size": 20, "eval_every": 20, "flush_every": 20, "checkpoint_every": 20,
                        "threads": 1}}


def write_study(tmp_path: Path, **study) -> Path:
    """``tmp_path/study.yaml``: the study "st" of TINY_STUDY with ``study``'s keys over it."""
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "st", **TINY_STUDY, **study}, sort_keys=False))
    return path


def folders(root: Path) -> dict[str, Path]:
    """A study folder's run folders by id."""
    from vaebench import runs

    return {d.name.rsplit("-", 1)[-1]: d for d in root.iterdir() if (d / runs.CONFIG).is_file()}


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run the real console entry point in a subprocess, as a user would."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "vaebench.cli", *args], cwd=cwd or REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def invoke(*args: str):
    """The command in this process through click's test runner (where a subprocess is not the point):
    a CompletedProcess-like result with returncode, stdout and stderr."""
    from click.testing import CliRunner

    from vaebench.cli import cli

    r = CliRunner().invoke(cli, [str(a) for a in args], prog_name="vaebench")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        # vaebench.cli.main() prints a bug's traceback and exits 70; here the test shows it instead
        raise r.exception.with_traceback(r.exc_info[2])
    return subprocess.CompletedProcess(["vaebench", *args], r.exit_code, r.stdout, r.stderr)


def one_line_error(proc, *needles: str) -> str:
    """A user's mistake as the CLI reports it: exit 2, one line, no traceback, naming ``needles``."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("vaebench: error:"), err
    for n in needles:
        assert n in err, err
    return err


def interrupt_at(monkeypatch, step: int, before=None):
    """A Ctrl-C in the flush at ``step`` of every run trained in this test (``before(run)`` sees
    each flush first); returns the real flush, to put back with monkeypatch.setattr."""
    from vaebench.training.trainer import TrainingRun

    flush = TrainingRun.flush

    def cut(self, terms):
        if before is not None:
            before(self)
        if self.step == step:
            raise KeyboardInterrupt
        return flush(self, terms)

    monkeypatch.setattr(TrainingRun, "flush", cut)
    return flush


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm (tests/slurm_cluster.py) for this session, found by the commands this
    process starts through $SLURM_CONF; the daemons stop at the session's end. Skipped, saying why,
    where Slurm is not installed or cannot start (not root)."""
    from slurm_cluster import SlurmCluster, missing

    why = missing()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2)
    try:
        env = cluster.start()
    except RuntimeError as e:
        pytest.skip(str(e)[:500])
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield cluster
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
