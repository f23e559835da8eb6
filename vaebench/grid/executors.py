"""Executors run a study's jobs: in this process, in a local process pool, or as Ray tasks.

An executor is registered by name and called as ``executor(jobs, on_done, options)``; it runs
``execute(job)`` for every job and calls ``on_done(job, results)`` as each one finishes, in
the caller's process. Jobs are independent, so any order is fine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError
from ..registry import Registry
from .jobs import Job, clear_interrupted, execute, init_worker

OnDone = Callable[[Job, list], None]


@dataclass(frozen=True)
class ExecOptions:
    workers: int  # jobs at once
    ray_address: str | None = None
    gpus_per_job: float = 0.0


EXECUTORS: Registry[Callable[[list[Job], OnDone, ExecOptions], None]] = Registry("executor")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@EXECUTORS.register("local")
def local(jobs: list[Job], on_done: OnDone, opts: ExecOptions) -> None:
    """One job at a time in this process, or a pool of ``workers`` processes (spawned: torch and fork
    don't mix). Each worker draws its own progress-bar row."""
    if opts.workers <= 1 or len(jobs) <= 1:
        clear_interrupted()
        for job in jobs:
            on_done(job, execute(job))
        return
    ctx = mp.get_context("spawn")
    from tqdm.auto import tqdm

    lock, slots = ctx.RLock(), ctx.Value("i", 0)
    tqdm.set_lock(lock)  # one terminal lock for the grid bar here and the run bars in the workers
    with ProcessPoolExecutor(max_workers=min(opts.workers, len(jobs)), mp_context=ctx, initializer=init_worker,
                             initargs=(lock, slots)) as pool:
        pending = {pool.submit(execute, job): job for job in jobs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_done(pending.pop(fut), fut.result())
        except BaseException:  # Ctrl-C: stop queued runs, interrupt running ones (they save their status)
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGINT)
            raise


@EXECUTORS.register("ray")
def ray_tasks(jobs: list[Job], on_done: OnDone, opts: ExecOptions) -> None:
    """Each job as a Ray task asking for its threads as CPUs (and a GPU share on CUDA). With an
    address, the tasks go to that cluster; its nodes need vaebench installed and must see the
    results folder (a shared filesystem)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'vaebench[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=opts.ray_address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **({} if opts.ray_address else {"num_cpus": available_cores()}))
        except ConnectionError as e:
            raise ConfigError(f"cannot reach the Ray cluster at {opts.ray_address!r}: {e}") from None
    task = ray.remote(execute)
    pending = {}
    for job in jobs:
        ref = task.options(num_cpus=job.threads, num_gpus=opts.gpus_per_job, max_retries=0).remote(job)
        pending[ref] = job
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_done(pending.pop(ref), ray.get(ref))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
