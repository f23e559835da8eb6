"""Executors run a study's jobs: in this process, in a local process pool, as Ray tasks or Slurm jobs.

An executor is registered by name and called as ``executor(jobs, on_done, options)``; it runs
``execute(job)`` for every job and calls ``on_done(job, results)`` as each one finishes, in
the caller's process. Jobs are independent, so any order is fine.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..registry import Registry
from ..signals import EXIT_TERM, Terminated, die_with_parent, spawning_workers, stop_pool
from .jobs import Job, clear_interrupted, execute, init_worker

OnDone = Callable[[Job, list], None]


@dataclass(frozen=True)
class ExecOptions:
    workers: int  # jobs at once
    ray_address: str | None = None
    gpus_per_job: float = 0.0
    folder: Path | None = None  # where an executor keeps its own files (Slurm's scripts and logs: OUT/.slurm)
    slurm_partition: str | None = None
    slurm_time: int | None = None  # minutes; None: the partition's default
    slurm_mem: str | None = None  # e.g. 4G; None: the cluster's default
    slurm_cpus_per_task: int | None = None  # None: the job's threads (train.threads)


EXECUTORS: Registry[Callable[[list[Job], OnDone, ExecOptions], None]] = Registry("executor")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@EXECUTORS.register("local")
def local(jobs: list[Job], on_done: OnDone, opts: ExecOptions) -> None:
    """One job at a time in this process, or a pool of ``workers`` processes (spawned: torch and fork
    don't mix). Each worker draws its own progress-bar row. A worker that dies (the OOM killer, a
    kill -9) fails its own runs with that reason; one stopped by SIGTERM (a scheduler) leaves its own
    runs partial; the other jobs go on in a new pool. Workers ignore SIGINT and die with this process."""
    if opts.workers <= 1 or len(jobs) <= 1:
        clear_interrupted()
        for job in jobs:
            on_done(job, execute(job))
        return
    ctx = mp.get_context("spawn")
    from tqdm.auto import tqdm

    lock, slots = ctx.RLock(), ctx.Value("i", 0)
    tqdm.set_lock(lock)  # one terminal lock for the grid bar here and the run bars in the workers
    todo = list(range(len(jobs)))
    for _ in range(len(jobs) + 1):  # each round ends every job or fails at least the dead worker's
        if not todo:
            return
        todo = _pool_round(jobs, todo, on_done, opts, ctx, lock, slots)
    for i in todo:  # workers kept dying before they said which job they had
        on_done(jobs[i], _failed(jobs[i], "worker processes kept dying; --retry-failed tries again"))


def _pool_round(jobs: list[Job], todo: list[int], on_done: OnDone, opts: ExecOptions, ctx, lock, slots) -> list[int]:
    """Run jobs[todo] in one pool; return the jobs to run again when a worker died under it (those
    that were queued or ran in a worker the pool stopped), after failing the dead worker's own."""
    started = ctx.SimpleQueue()  # ("start" or "term", job index, worker pid) as each job starts or is stopped
    with ProcessPoolExecutor(max_workers=min(opts.workers, len(todo)), mp_context=ctx, initializer=_init_pool_worker,
                             initargs=(lock, slots, started, os.getpid())) as pool:
        with spawning_workers():  # submit spawns the workers
            pending = {pool.submit(_execute_reporting, i, jobs[i]): i for i in todo}
        procs: dict[int, mp.Process] = {}
        broken = False
        try:
            while pending and not broken:
                procs.update(getattr(pool, "_processes", None) or {})
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    on_done(jobs[pending.pop(fut)], results)
        except BaseException:  # Ctrl-C or SIGTERM: stop queued runs; running ones save their status and exit
            stop_pool(pool)
            raise
    if not pending:
        return []
    # a worker died: the pool stopped every other worker (SIGTERM: they save their runs and exit) and
    # failed every future
    where: dict[int, int] = {}
    termed: list[int] = []  # workers stopped by SIGTERM, in order: the first is the one signalled from outside
    while not started.empty():
        kind, i, pid = started.get()
        if kind == "start":
            where[i] = pid
        elif pid not in termed:
            termed.append(pid)
    for p in procs.values():
        p.join(timeout=10)
    stopped = (0, -signal.SIGTERM, EXIT_TERM, None)
    dead = {p.pid: p.exitcode for p in procs.values() if p.exitcode not in stopped}
    lost = list(pending.values())
    paused = termed[0] if termed and not dead else None
    if not dead and paused is None:  # every worker ended by SIGTERM before it said so: can't be told apart
        dead = {p.pid: p.exitcode for p in procs.values()}
    again = []
    for i in lost:
        pid = where.get(i)
        if pid in dead:
            on_done(jobs[i], _failed(jobs[i], _death(dead[pid], pid)))
        elif pid is not None and pid == paused:
            on_done(jobs[i], _paused(jobs[i], f"its worker process (pid {pid}) was stopped by SIGTERM; "
                                              f"run the same command again to resume"))
        else:
            again.append(i)
    return again


def _death(exitcode: int | None, pid: int) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            sig = signal.Signals(-exitcode).name
        except ValueError:
            sig = f"signal {-exitcode}"
        how = f"was killed by {sig}" + (" (out of memory? or kill -9)" if sig == "SIGKILL" else "")
    else:
        how = f"exited with status {exitcode}"
    return f"the worker process training it (pid {pid}) {how}; --retry-failed resumes it from its checkpoint"


def _failed(job: Job, why: str) -> list:
    """Mark the job's unfinished runs failed on disk with ``why``; one RunResult per run."""
    from .. import runs
    from ..training import RunResult

    out = []
    for d in map(Path, job.run_dirs):
        st = runs.run_state(d)
        if st.state in ("done", "running"):  # finished before the death, or taken over by another runner
            out.append(RunResult(d, "skipped" if st.state == "done" else "busy", st.step, st.reason,
                                 runs.read_final(d)))
            continue
        status = runs.read_status(d)
        runs.write_json(d / runs.STATUS, {**status, "state": "failed", "step": st.step, "reason": why})
        out.append(RunResult(d, "failed", st.step, why))
    return out


def _paused(job: Job, why: str) -> list:
    """The job's runs as a signal left them: partial (their status says so), done if they finished."""
    from .. import runs
    from ..training import RunResult

    out = []
    for d in map(Path, job.run_dirs):
        st = runs.run_state(d)
        if st.state == "done":
            out.append(RunResult(d, "skipped", st.step, None, runs.read_final(d)))
        else:
            if st.state == "partial":  # say why on disk, where ls and a rerun's table read it
                runs.write_json(d / runs.STATUS, {**runs.read_status(d), "reason": why})
            out.append(RunResult(d, "interrupted", st.step, why))
    return out


_started = None
_in_job = False


def _init_pool_worker(lock, slots, started, parent: int) -> None:
    global _started
    _started = started
    die_with_parent(parent)
    signal.signal(signal.SIGTERM, _on_sigterm)
    init_worker(lock, slots)


def _on_sigterm(signum, frame) -> None:
    """In a pool worker: inside a job, stop it as Ctrl-C does (its runs save their status, their locks
    are released), then exit; between jobs, exit at once. The parent reads who was stopped."""
    global _in_job
    if _in_job:
        _in_job = False
        raise Terminated()
    _say("term", None)
    os._exit(EXIT_TERM)


def _say(kind: str, i: int | None) -> None:
    if _started is not None:
        with contextlib.suppress(OSError, ValueError):
            _started.put((kind, i, os.getpid()))


def _execute_reporting(i: int, job: Job) -> list:
    """execute(job) in a pool worker, after telling the parent which worker took it."""
    global _in_job
    _say("start", i)
    _in_job = True
    try:
        return execute(job)
    except KeyboardInterrupt:  # SIGTERM (SIGINT is ignored): from a scheduler, the parent, or its death
        _in_job = False
        _say("term", i)
        sys.stderr.flush()
        os._exit(EXIT_TERM)
    finally:
        _in_job = False


def loopback(address: str | None) -> bool:
    """Whether a Ray address names this machine's loopback (or none: a local instance)."""
    if not address or address == "local":
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def ray_environment(address: str | None) -> None:
    """Environment Ray reads when it is imported and started: quiet unless VAEBENCH_RAY_VERBOSE=1, on
    loopback only for a local instance or a cluster on this machine, and with token authentication
    when joining a cluster on this machine that has a token (``ray start --head`` turns it on by
    default and keeps the token in ~/.ray/auth_token; Ray itself only uses it with RAY_AUTH_MODE=token)."""
    if not os.environ.get("VAEBENCH_RAY_VERBOSE"):
        for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_DEDUP_LOGS", "0")):
            os.environ.setdefault(key, value)
    if loopback(address):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's single-machine mode
        token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
            (Path.home() / ".ray" / "auth_token").is_file()
        if address and "RAY_AUTH_MODE" not in os.environ and token:
            os.environ["RAY_AUTH_MODE"] = "token"


def ray_init(address: str | None, cpus: int) -> None:
    """Start or join Ray; a local instance, or a cluster on this machine, on 127.0.0.1 only."""
    import logging

    import ray

    verbose = bool(os.environ.get("VAEBENCH_RAY_VERBOSE"))
    kwargs = {} if address else {"num_cpus": cpus}
    if loopback(address) and not (address or "").startswith("ray://"):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # the node address is 127.0.0.1, not the primary interface's
        kwargs["_node_ip_address"] = "127.0.0.1"
    with contextlib.nullcontext() if verbose else _quiet_stderr():  # Ray's C++ warnings while it connects
        ray.init(address=address, include_dashboard=False if not address else None, log_to_driver=verbose,
                 configure_logging=verbose, logging_level=logging.INFO if verbose else logging.ERROR, **kwargs)


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for a while: Ray's C++ core writes there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@EXECUTORS.register("ray")
def ray_tasks(jobs: list[Job], on_done: OnDone, opts: ExecOptions) -> None:
    """Each job as a Ray task asking for its threads as CPUs (and a GPU share on CUDA). With an
    address, the tasks go to that cluster; its nodes need vaebench installed and must see the
    results folder (a shared filesystem). A worker that dies fails its own runs, with the reason."""
    ray_environment(opts.ray_address)
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'vaebench[ray]'") from None
    if not ray.is_initialized():
        try:
            ray_init(opts.ray_address, available_cores())
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ConfigError(f"cannot reach the Ray cluster at {opts.ray_address!r}: {first} (a cluster started "
                              f"with RAY_AUTH_MODE=token needs the same RAY_AUTH_MODE and its RAY_AUTH_TOKEN here)"
                              ) from None
    task = ray.remote(execute)
    pending = {}
    for job in jobs:
        ref = task.options(num_cpus=job.threads, num_gpus=opts.gpus_per_job, max_retries=0).remote(job.absolute())
        pending[ref] = job
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    results = ray.get(ref)
                    for r, d in zip(results, job.run_dirs):
                        r.path = Path(d)
                except ray.exceptions.RayError as e:  # the worker died (OOM, kill -9) or the node went away
                    why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                    results = _failed(job, f"its Ray worker died ({type(e).__name__}: {why}); "
                                           f"--retry-failed resumes it from its checkpoint")
                on_done(job, results)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


@EXECUTORS.register("slurm")
def slurm_jobs(jobs: list[Job], on_done: OnDone, opts: ExecOptions) -> None:
    """Each job as a Slurm batch job through submitit (vaebench.grid.slurm), asking for its threads as
    CPUs. A job cancelled, preempted or out of time leaves its runs partial, with the reason; one
    that died otherwise fails its runs with Slurm's state; the other jobs go on."""
    from . import slurm

    slurm.executor(jobs, on_done, opts, _failed, _paused)
