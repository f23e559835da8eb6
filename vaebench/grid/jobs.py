"""One job = one run (or a group of runs trained together), executed under per-run locks.

``execute`` is what every executor calls, in whatever process it runs in. A run's lock is
held for as long as it trains, so a second runner on the same folder skips it ("busy").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .. import plugins, runs
from ..config import RunConfig
from ..errors import reason

_slot = 0  # this worker's progress-bar row (set by init_worker in pool workers)
_interrupted = False


def _mark_interrupted(value: bool = True) -> None:
    global _interrupted
    _interrupted = value


def clear_interrupted() -> None:
    """A new grid in this process (a notebook after a Ctrl-C) runs again."""
    _mark_interrupted(False)


@dataclass(frozen=True)
class Job:
    configs: tuple[RunConfig, ...]
    run_dirs: tuple[Path, ...]
    device: str = "auto"
    threads: int = 1
    force: bool = False
    progress: bool | None = None
    retry: tuple[Path, ...] = ()  # damaged runs to start over (--retry): their files are set aside first

    def absolute(self) -> "Job":
        """This job with absolute folders, for a worker that runs in its own working directory (a Ray
        task, a Slurm job): its run folders and the --retry ones, which it compares with them."""
        return replace(self, run_dirs=tuple(Path(d).absolute() for d in self.run_dirs),
                       retry=tuple(Path(d).absolute() for d in self.retry))


def init_worker(lock: Any, slots: Any) -> None:
    """Share tqdm's lock with the parent and give this worker its own bar row."""
    global _slot
    from tqdm.auto import tqdm

    tqdm.set_lock(lock)
    with slots.get_lock():
        slots.value += 1
        _slot = slots.value


def evaluate_after(cfg: RunConfig, result, job: Job):
    """The config's end-of-run evaluation (eval.splits, by default the whole test split, of the last
    checkpoint and, with train.keep_best, of best.pt), skipping those already evaluated with eval.k;
    off with eval.enabled: false."""
    from ..evaluation import evaluate_run, planned_evals

    for split, checkpoint in planned_evals(cfg, result.path, job.force):
        try:
            evaluate_run(result.path, k=cfg.eval.k, split=split, device=job.device, batch=cfg.eval.batch,
                         checkpoint=checkpoint)
        except Exception as e:  # the training is done and kept; only the evaluation is missing
            result.state = "failed"
            best = " --checkpoint best" if checkpoint == "best" else ""
            result.reason = (f"trained, but evaluation on {split} failed ({type(e).__name__}: {e}); "
                             f"retry with vaebench eval {result.path} --split {split} --k {cfg.eval.k}{best}")
            break
    return result


def execute(job: Job) -> list:
    """Train the job's runs; return one RunResult per run, never raising for a run's own failure."""
    import torch

    from ..training import RunResult, train_group, train_run

    if _interrupted:  # a pool worker that saw Ctrl-C takes no new runs
        return [RunResult(Path(d), "interrupted", 0, "interrupted before it started") for d in job.run_dirs]
    torch.set_num_threads(max(1, job.threads))
    progress: Any = job.progress
    if _slot and progress is not False:
        progress = {"position": _slot, "disable": None if progress is None else False}
    elif progress is not False:
        progress = {"position": 1, "disable": None if progress is None else False}
    results: dict[int, Any] = {}
    locks: list[tuple[int, FileLock]] = []
    for i, run_dir in enumerate(map(Path, job.run_dirs)):
        lock = FileLock(run_dir / runs.LOCK)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0)
        except Timeout:
            st = runs.read_status(run_dir)
            results[i] = RunResult(run_dir, "busy", int(st.get("step", 0)), "being trained by another process")
            continue
        except OSError as e:  # a full disk, a read-only folder: this run fails with the path, the rest go on
            results[i] = RunResult(run_dir, "failed", 0, reason(e))
            continue
        try:
            if run_dir in job.retry:
                runs.set_aside(run_dir, job.configs[i].run_hash())  # kept in .damaged-<time>/, retrained from 0
            elif not job.force:
                runs.repair(run_dir, job.configs[i].run_hash())  # killed writes, a cut compaction, a short done run
        except OSError as e:
            lock.release()
            results[i] = RunResult(run_dir, "failed", 0, reason(e))
            continue
        locks.append((i, lock))
    mine = [i for i, _ in locks]
    try:
        try:
            plugins.load([i for c in job.configs for i in c.imports])  # in a pool worker or a Ray task too
            if len(mine) == 1:
                out = [train_run(job.configs[mine[0]], job.run_dirs[mine[0]], job.device, progress, job.force)]
            else:  # the runs of one stack (vaebench.training.loop)
                out = train_group([job.configs[i] for i in mine], [job.run_dirs[i] for i in mine], job.device,
                                  progress, job.force) if mine else []
            results.update(zip(mine, out))
            for i, r in zip(mine, out):
                cfg = job.configs[i]
                if r.state in ("done", "skipped") and cfg.eval.enabled and cfg.eval.splits:
                    results[i] = evaluate_after(cfg, r, job)
        except KeyboardInterrupt:
            _mark_interrupted()
            raise
        except Exception as e:  # a bug, a crash or a user error must not stop the grid
            why = reason(e)
            for i in mine:
                d = Path(job.run_dirs[i])
                results[i] = RunResult(d, "failed", int(runs.read_status(d).get("step", 0)), why)
    finally:
        for _, lock in locks:
            lock.release()
    return [results[i] for i in range(len(job.run_dirs))]
