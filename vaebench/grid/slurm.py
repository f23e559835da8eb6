"""Jobs as Slurm batch jobs, submitted with submitit: one Slurm job per job of the study.

The results folder must be on a filesystem the nodes share (as for Ray). submitit keeps each job's
sbatch script, pickles and logs in ``OUT/.slurm/<job id>/``. In the Slurm job, SIGTERM (scancel,
a preemption, the time limit) stops the runs as Ctrl-C does: they save their status and are left
partial, so the next ``vaebench run`` resumes them; SIGUSR2, which submitit asks Slurm to send
shortly before the time limit, does the same and then requeues the job, which resumes the runs.
This process decides only from what Slurm says: a job it calls finished is read (its result, or its
final state as the runs' reason), a requeued one is waited for.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..signals import Terminated, raise_on_sigterm
from .jobs import Job, execute

POLL_S = (1.0, 10.0)  # squeue every second at first, then less often (a cluster's controller is shared)
MAX_REQUEUES = 3  # times a job that reaches its time limit requeues itself
# Slurm's states of a job that will not run again (unless requeued by Slurm, which makes it PENDING)
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
STOPPED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE"}  # ended by a signal: the runs saved themselves


def need_slurm():
    """submitit, and Slurm's commands on PATH; else one line saying which is missing."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'vaebench[slurm]'") from None
    gone = [c for c in ("sbatch", "srun", "squeue", "scancel") if shutil.which(c) is None]
    if gone:
        raise ConfigError(f"--executor slurm needs Slurm's commands, and {', '.join(gone)} is not on PATH "
                          f"(run it where jobs are submitted, e.g. a cluster's login node)")
    return submitit


class _Usr2(Terminated):
    """SIGUSR2: Slurm's warning that the job's time limit is near (submitit's --signal=USR2@N)."""

    signum = signal.SIGUSR2


def _raise_usr2(signum, frame) -> None:
    raise _Usr2()


def _task_base():
    try:
        from submitit.helpers import Checkpointable
    except ImportError:  # only this process without submitit imports the module (need_slurm says so)
        return object
    return Checkpointable


class SlurmTask(_task_base()):
    """What a Slurm job runs: ``execute(job)``, with SIGTERM and SIGUSR2 stopping its runs as Ctrl-C
    does. Returns ``{"results": [...]}``, or ``{"stopped": name}`` when a signal stopped it (its runs
    partial on disk); after SIGUSR2 it requeues its own Slurm job instead, up to MAX_REQUEUES times.
    Checkpointable: should submitit's own SIGUSR2 handler run first (before __call__ replaces it), it
    requeues the same job, whose runs resume from their checkpoints."""

    def __call__(self, job: Job) -> dict[str, Any]:
        raise_on_sigterm()
        signal.signal(signal.SIGUSR2, _raise_usr2)
        try:
            return {"results": execute(job)}
        except KeyboardInterrupt as e:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            name = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
            jid = os.environ.get("SLURM_JOB_ID")
            restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
            if isinstance(e, _Usr2) and jid and restarts < MAX_REQUEUES:
                sys.stderr.write(f"vaebench: {name}: the runs saved their status; requeueing Slurm job {jid}\n")
                sys.stderr.flush()
                subprocess.run(["scontrol", "requeue", jid], check=False, timeout=60)
                raise SystemExit(0) from None  # no result: this process waits for the requeued job
            return {"stopped": name}


def states(ids: list[str]) -> dict[str, str] | None:
    """Slurm's state of each job: squeue (jobs the controller still holds, finished ones for
    MinJobAge, 5 minutes by default) and, for the others, sacct where accounting is on. A job missing
    from both is left out; None when squeue cannot reach the controller (it is restarting, say)."""
    out: dict[str, str] = {}
    if not ids:
        return out
    try:
        q = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T", "-j", ",".join(ids)],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if q.returncode != 0 and "invalid job id" not in q.stderr.lower():
        return None
    for line in q.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in ids:
            out[jid] = state.split()[0] if state else "UNKNOWN"
    rest = [j for j in ids if j not in out]
    if rest and shutil.which("sacct"):
        try:
            a = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(rest)],
                               capture_output=True, text=True, timeout=60)
            for line in a.stdout.splitlines() if a.returncode == 0 else []:
                jid, _, state = line.strip().partition("|")
                if jid in rest:
                    out[jid] = (state.split() or ["UNKNOWN"])[0]  # "CANCELLED by 0"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


def _sbatch_error(e: BaseException) -> str:
    """sbatch's error lines as one: "invalid partition specified: x; Batch job submission failed: ..."."""
    lines = [s.strip().removeprefix("sbatch: error: ") for s in str(e).strip().splitlines() if s.strip()]
    return "; ".join(dict.fromkeys(lines or [type(e).__name__]))[:400]


def executor(jobs: list[Job], on_done: Callable, opts, failed: Callable, paused: Callable) -> None:
    """Submit each job as a Slurm job and report each as Slurm ends it; see the module docstring.
    ``failed(job, why)`` and ``paused(job, why)`` are the pool's: runs failed with a reason, or left
    partial with it."""
    submitit = need_slurm()
    folder = Path(opts.folder or ".slurm").absolute()
    ex = submitit.SlurmExecutor(folder=folder / "%j", python=shlex.quote(sys.executable))
    base: dict[str, Any] = {"job_name": "vaebench", "signal_delay_s": 60, "time": opts.slurm_time,
                            "additional_parameters": {"requeue": True},
            "setup": [f"export PYTHONPATH={shlex.quote(_import_root())}${{PYTHONPATH:+:$PYTHONPATH}}"]}
    if opts.slurm_partition:
        base["partition"] = opts.slurm_partition
    if opts.slurm_mem:
        base["mem"] = opts.slurm_mem
    if opts.gpus_per_job:
        import math

        base["gpus_per_node"] = max(1, math.ceil(opts.gpus_per_job))
    pending: dict[str, tuple[Any, Job]] = {}
    try:
        for job in jobs:
            remote = replace(job.absolute(), progress=False)
            ex.update_parameters(**base, cpus_per_task=opts.slurm_cpus_per_task or job.threads)
            before = set(folder.iterdir()) if folder.is_dir() else set()
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's errors, said below
                    sj = ex.submit(SlurmTask(), remote)
            except (submitit.core.utils.FailedJobError, subprocess.SubprocessError, OSError) as e:
                for left in set(folder.iterdir()) - before if folder.is_dir() else ():  # its script and pickle
                    if left.is_file():
                        left.unlink(missing_ok=True)
                raise ConfigError(f"sbatch refused the job: {_sbatch_error(e)}") from None
            pending[str(sj.job_id)] = (sj, job)
        unknown: dict[str, float] = {}
        delay = POLL_S[0]
        while pending:
            now = states(list(pending))
            for jid in list(pending) if now is not None else []:
                sj, job = pending[jid]
                state = now.get(jid)
                if state is None:  # neither squeue nor sacct knows it (any more)
                    if not sj.paths.result_pickle.exists():
                        unknown.setdefault(jid, time.monotonic())
                        if time.monotonic() - unknown[jid] < 60:
                            continue
                elif state not in ENDED:
                    unknown.pop(jid, None)
                    continue
                del pending[jid]
                on_done(job, _outcome(sj, job, state, failed, paused))
            if pending:
                time.sleep(delay)
                delay = min(POLL_S[1], delay * 1.1)
    except BaseException:  # Ctrl-C or SIGTERM here: the jobs' runs save their status (SIGTERM) and end
        for sj, _ in pending.values():
            try:
                sj.cancel(check=False)
            except Exception:  # noqa: BLE001 - a job that is gone already
                pass
        raise


def _outcome(sj, job: Job, state: str | None, failed: Callable, paused: Callable) -> list:
    """The job's RunResults from its result, or from its final state when it left none."""
    jid = sj.job_id
    for _ in range(20 if state == "COMPLETED" else 1):  # a shared filesystem may show the file late
        if sj.paths.result_pickle.exists():
            break
        time.sleep(0.5)
    if sj.paths.result_pickle.exists():
        try:
            kind, value = _load(sj.paths.result_pickle)
        except Exception as e:  # noqa: BLE001 - a truncated pickle: the job died while writing it
            return failed(job, f"its Slurm job {jid} left an unreadable result ({type(e).__name__}); "
                               f"--retry-failed resumes it from its checkpoint")
        if kind == "success" and "results" in value:
            results = value["results"]
            for r, d in zip(results, job.run_dirs):
                r.path = Path(d)
            return results
        if kind == "success":
            how = f" ({state})" if state and state != "COMPLETED" else ""
            return paused(job, f"its Slurm job {jid} was stopped by {value['stopped']}{how}; "
                               f"run the same command again to resume")
        last = [s for s in str(value).strip().splitlines() if s.strip()][-1:] or ["an error"]
        return failed(job, f"its Slurm job {jid} raised {last[0][:200]}; see {sj.paths.stderr}")
    if state in STOPPED:
        return paused(job, f"its Slurm job {jid} was {state} before it started training or saved its result; "
                           f"run the same command again to resume")
    what = f"ended {state}" if state else "is no longer known to Slurm"
    hint = " (out of memory? --slurm-mem asks for more)" if state == "OUT_OF_MEMORY" else ""
    return failed(job, f"its Slurm job {jid} {what}{hint} without a result (see {sj.paths.stderr}); "
                       f"--retry-failed resumes it from its checkpoint")


def _load(path: Path):
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f)


def _import_root() -> str:
    """The folder this vaebench is imported from, so the job imports the same code."""
    return str(Path(__file__).resolve().parents[2])

