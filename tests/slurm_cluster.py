"""A real single-node Slurm for tests: munged, slurmctld and slurmd on 127.0.0.1, all in one folder.

Everything lives under the folder given (its own munge socket and key, slurm.conf, spool and state
folders, logs, free ports), so it touches neither /etc/slurm nor a munged already running. Clients
find it through $SLURM_CONF. ``python tests/slurm_cluster.py FOLDER`` starts one by hand (until
Ctrl-C) and prints the line to export.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from vaebench.signals import term_with_parent

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
                                      None)


def missing() -> str | None:
    """Why a cluster cannot start here (None when it can be tried)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "Slurm runs on Linux only"
    gone = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if gone:
        return f"Slurm is not installed ({', '.join(gone)} not found; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root (it runs jobs as their users)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _memory_mb() -> int:
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        return max(512, kb // 1024 - 512)
    except (OSError, StopIteration, ValueError):
        return 2048


class SlurmCluster:
    """One controller and one node named localhost with every core, partition debug."""

    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.env: dict[str, str] = {}

    def _log(self, name: str) -> str:
        p = self.root / "log" / f"{name}.log"
        return p.read_text(errors="replace")[-1500:] if p.is_file() else ""

    def start(self, timeout: float = 30.0) -> dict[str, str]:
        """Start the three daemons and wait for the node to be idle; return the clients' environment.
        Raises RuntimeError with the daemons' logs when it doesn't come up."""
        r = self.root
        for sub in ("munge", "spool", "state", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        sock = r / "munge" / "munge.socket"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={r / 'munge' / 'munged.pid'}", f"--seed-file={r / 'munge' / 'seed'}",
                               f"--log-file={r / 'log' / 'munged.log'}"])
        self._wait(lambda: sock.exists(), timeout, "munged")
        ctld_port, node_port = _free_ports(2)
        self.conf.write_text(f"""\
ClusterName=vaebench-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=5
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r / 'log' / 'jobcomp.txt'}
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self.env = {"SLURM_CONF": str(self.conf)}
        env = dict(os.environ, **self.env)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], env)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)], env)

        def idle() -> bool:
            out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        self._wait(idle, timeout, "the node to be idle")
        return self.env

    def _spawn(self, name: str, cmd: list, env: dict | None = None) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")
        # term_with_parent: a test session killed with -9 leaves no daemon behind
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True, preexec_fn=term_with_parent))
        out.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        logs = " | ".join(f"{n}: {(self._log(n) or (self.root / 'log' / f'{n}.out').read_text(errors='replace') if (self.root / 'log' / f'{n}.out').exists() else '').strip()[-400:]}"
                          for n in DAEMONS)
        self.stop()
        raise RuntimeError(f"Slurm did not start (waiting for {what}): {logs}")

    def stop(self) -> None:
        """SIGTERM each daemon, slurmd first, and SIGKILL what is left after a few seconds; jobs still
        running on the node are cancelled first."""
        if self.env and self.procs:
            subprocess.run([_which("scancel"), "--full", "-u", "root"], env=dict(os.environ, **self.env),
                           capture_output=True, timeout=10)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


if __name__ == "__main__":
    import sys

    why = missing()
    if why:
        sys.exit(f"slurm_cluster: {why}")
    cluster = SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vaebench-slurm"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the daemons too
    env = cluster.start()
    print(f"export SLURM_CONF={env['SLURM_CONF']}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
