"""Run a study: find what is missing, run it on an executor, summarise.

Every run is an idempotent job in its own folder ``<out>/<name>/<varied values>-<id>``: a rerun
skips done runs, resumes cut ones from their checkpoint, retries failed ones only when asked.
A run is found again by its id even when an axis added later changes its folder's label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from .. import runs
from ..devices import DEFAULT_THREADS, resolve_device
from ..errors import ConfigError
from .executors import EXECUTORS, ExecOptions, available_cores
from .jobs import Job, execute
from .study import Study, format_value

GRID_FILE = runs.GRID
STATES = ("new", "partial", "running", "failed", "damaged", "done")


def run_state(run_dir: Path) -> str:
    """new / partial / running / failed / damaged / done, as vaebench.runs.run_state derives it."""
    return runs.run_state(run_dir).state


def locate(root: Path, study: Study) -> list[Path]:
    """Each run's folder: the existing one with its id, else a new one named by its varied values."""
    existing: dict[str, Path] = {}
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and (d / runs.CONFIG).is_file():
                existing.setdefault(d.name.rsplit("-", 1)[-1], d)
    return [existing.get(r.hash, root / folder) for r, folder in zip(study.runs, study.folders())]


@dataclass
class StudyResult:
    study: Study
    root: Path
    run_dirs: list[Path]
    states: list[str]  # before this command ran
    before: list[runs.RunState] = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)  # run index -> RunResult of this command

    @property
    def failed(self) -> list[int]:
        return [i for i, r in self.results.items() if r.state == "failed"]

    def state(self, i: int) -> runs.RunState:
        """Run ``i`` now: as derived from its folder, or failed when this command's attempt failed
        (e.g. its evaluation after training)."""
        r = self.results.get(i)
        if r is None and self.before:
            return self.before[i]
        st = runs.run_state(self.run_dirs[i])
        if r is not None and r.state == "failed" and st.state != "running":
            return runs.RunState("failed", st.step, r.reason or st.reason)
        return st

    def table(self) -> pd.DataFrame:
        """One row per run: folder, varied values, state, steps, final validation ELBO."""
        short = self.study.short_names()
        rows = []
        for i, (spec, d) in enumerate(zip(self.study.runs, self.run_dirs)):
            st = self.state(i)
            val = (runs.read_final(d) or {}).get("val", {}) if st.state == "done" else {}
            rows.append({
                "run": d.name, **{short[a]: format_value(spec.varied.get(a)) for a in self.study.axes},
                "state": st.state, "step": st.step, "steps": spec.config.train.steps,
                "val_elbo": val.get("elbo"), "reason": (st.reason or "") if st.state != "done" else "",
            })
        return pd.DataFrame(rows)

    @property
    def not_done(self) -> list[int]:
        """Runs that are not done now (failed, cut, busy elsewhere or never run)."""
        return [i for i in range(len(self.run_dirs)) if self.state(i).state != "done"]


def _todo(states: list[str], force: bool, retry_failed: bool, named: set[int] = frozenset(),
          retry_damaged: bool = False) -> list[int]:
    """What this command runs: new and partial runs; failed ones with --retry-failed, damaged ones
    with --retry-damaged, either when --retry names them (``named``); everything with --force (a
    damaged folder then fails on its identity check, untouched, unless its config is its own)."""
    wanted = {"new", "partial"} | ({"failed"} if retry_failed else set()) | ({"damaged"} if retry_damaged else set())
    return [i for i, s in enumerate(states) if s != "running"
            and (force or s in wanted or (i in named and s in ("failed", "damaged")))]


def match_runs(patterns: list[str] | tuple[str, ...], run_dirs: list[Path], hashes: list[str]) -> set[int]:
    """The runs --retry names: each pattern a folder name, its id or a glob of either (or of the path)."""
    from fnmatch import fnmatchcase

    found: set[int] = set()
    for pat in patterns:
        pat_name = Path(pat).name or pat
        hits = {i for i, (d, h) in enumerate(zip(run_dirs, hashes))
                if fnmatchcase(d.name, pat_name) or fnmatchcase(h, pat_name) or fnmatchcase(str(d), pat)}
        if not hits:
            raise ConfigError(f"--retry {pat} names no run of this study; vaebench run CONFIG --dry-run lists them")
        found |= hits
    return found


def _eval_missing(cfg, run_dir: Path) -> bool:
    """A done run whose end-of-run evaluation was cut (or never ran): the rerun evaluates it."""
    from ..evaluation import planned_evals

    return bool(planned_evals(cfg, run_dir))


def _changed_code(study: Study, run_dirs: list[Path], states: list[str], force: bool,
                  restart: bool) -> list[int]:
    """The runs that would resume or be skipped under plugin code other than their record's; without
    ``restart``, the first of them is refused in one line. vaebench's own version is recorded and
    shown (``ls``'s code column) but not refused: its releases keep a run's numbers (tests/test_reference)."""
    found = []
    for i, (spec, d, s) in enumerate(zip(study.runs, run_dirs, states)):
        if s in ("new", "running") or force:
            continue
        changed = runs.changed_code(d, list(spec.config.imports))
        if changed and not restart:
            raise ConfigError(runs.changed_code_message(
                d, changed, "rerun with --restart-changed to train the changed runs over, or restore its code"))
        if changed:
            found.append(i)
    return found


def _check_inputs(study: Study, todo: list[int], device: str) -> None:
    """Fail before anything runs on what would fail every run: no data, no such device."""
    from ..data import load_splits
    from ..training import resolve_device

    resolve_device(device)
    seen = set()
    for i in todo:
        d = study.runs[i].config.data
        key = (d.dataset, d.root, d.per_class, d.seed, d.val_from, d.val_size)
        if key not in seen:
            seen.add(key)
            splits = load_splits(d)
            batch = max(study.runs[j].config.train.batch_size for j in todo if study.runs[j].config.data == d)
            if batch > len(splits["train"]):
                raise ConfigError(f"train.batch_size {batch} is larger than the {len(splits['train'])} "
                                  f"training images of data.per_class={d.per_class}")


def stack_groups(cfgs: list, device: str) -> list[list[int]]:
    """Indices of ``cfgs`` in groups trained as one stack: runs of a stacked engine with equal stack
    keys, at most train.stack of them, in stacks of nearly equal size (9 runs under a limit of 8
    train as 5 + 4, not 8 + 1); every other run alone."""
    from ..training import resolve_device, stack_key, stack_size

    dev = resolve_device(device)
    order: list[list[int] | str] = []
    by_key: dict[str, list[int]] = {}
    limit: dict[str, int] = {}
    for i, cfg in enumerate(cfgs):
        try:
            size = stack_size(cfg, dev)
        except ConfigError:  # engine=fast on a config it can't train: the run fails alone, with that line
            size = 1
        if size <= 1:
            order.append([i])
            continue
        key = stack_key(cfg)
        if key not in by_key:
            by_key[key], limit[key] = [], size
            order.append(key)
        by_key[key].append(i)
    groups: list[list[int]] = []
    for entry in order:
        if isinstance(entry, list):
            groups.append(entry)
            continue
        members = by_key[entry]
        n = -(-len(members) // limit[entry])  # stacks needed
        cuts = [round(j * len(members) / n) for j in range(n + 1)]
        groups.extend(members[a:b] for a, b in zip(cuts, cuts[1:]))
    return groups


def _makespan(costs: list[float], workers: int) -> float:
    """The finish time of jobs of these costs taken longest first by ``workers`` workers (LPT)."""
    loads = [0.0] * max(1, workers)
    for c in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += c
    return max(loads)


def balance(groups: list[list[int]], cfgs: list, workers: int, split: bool = True) -> list[list[int]]:
    """The groups in the order the workers should take them, longest first by their estimated cost
    (vaebench.config.work), so no core idles through a long tail; with ``split``, a stack is cut
    in halves while that shortens the estimated finish of the whole study (a stack of 3 seeds on
    2 cores trains as 2 + 1). Only where a run's numbers do not depend on its stack (the CPU)."""
    from ..config import STEP_OVERHEAD, work

    def cost(g: list[int]) -> float:
        return sum(work(cfgs[i]) for i in g) + cfgs[g[0]].train.steps * STEP_OVERHEAD

    groups = [list(g) for g in groups]
    while split:
        big = max(groups, key=cost)
        if len(big) < 2:
            break
        half = (len(big) + 1) // 2
        trial = [g for g in groups if g is not big] + [big[:half], big[half:]]
        if _makespan([cost(g) for g in trial], workers) >= _makespan([cost(g) for g in groups], workers):
            break
        groups = trial
    return sorted(groups, key=cost, reverse=True)


def run_study(study: Study, out: str | Path = "results", device: str = "auto", jobs: int | None = None,
              executor: str = "local", ray_address: str | None = None, gpus_per_run: float | None = None,
              force: bool = False, retry_failed: bool = False, dry_run: bool = False,
              progress: bool | None = None, on_result: Callable[[Path, Any], None] | None = None,
              restart_changed: bool = False, retry: list[str] | tuple[str, ...] = (),
              retry_damaged: bool = False, slurm_partition: str | None = None, slurm_time: int | None = None,
              slurm_mem: str | None = None, slurm_cpus_per_task: int | None = None) -> StudyResult:
    """Run every missing run of ``study`` under ``out/<name>/``; see the module docstring.
    ``restart_changed``: runs whose plugin code changed since they started are trained over (without
    it, such a run is refused rather than resumed or skipped under code that did not make it).
    ``retry``: folder names, ids or globs of failed or damaged runs to redo (each damaged one from 0,
    its old files kept in ``.damaged-<time>/``); ``retry_damaged``: every damaged run. ``slurm_*``: what
    each Slurm job asks for with executor="slurm" (submitit's files go to ``out/.slurm/``)."""
    run_executor = EXECUTORS.get(executor)
    root = Path(out) / study.name
    run_dirs = locate(root, study)
    before = [runs.run_state(d) for d in run_dirs]
    states = [b.state for b in before]
    restart = _changed_code(study, run_dirs, states, force, restart_changed)
    for i in restart:
        states[i] = "new"
    result = StudyResult(study, root, run_dirs, states, before)
    named = match_runs(retry, run_dirs, [r.hash for r in study.runs])
    todo = _todo(states, force, retry_failed, named, retry_damaged)
    again = tuple(run_dirs[i] for i in todo if states[i] == "damaged" and (i in named or retry_damaged))
    todo = sorted(todo + [i for i, (s, spec, d) in enumerate(zip(states, study.runs, run_dirs))
                          if s == "done" and i not in todo and _eval_missing(spec.config, d)])
    if dry_run or not todo:
        return result
    _check_inputs(study, todo, device)
    for i in restart:  # asked for, and nothing failed first: these runs start over, and their
        runs.clear(run_dirs[i])  # evaluations (of a model the changed code no longer builds) go too
        (run_dirs[i] / runs.EVAL).unlink(missing_ok=True)

    grid = study.to_dict()
    for entry, d in zip(grid["runs"], run_dirs):
        entry["folder"] = d.name
    runs.clean_temps(root)  # a grid.yaml write cut by a kill
    runs.atomic_write(root / GRID_FILE, yaml.safe_dump(grid, sort_keys=False))

    cores = available_cores()
    cfgs = [study.runs[i].config for i in todo]
    groups = stack_groups(cfgs, device)
    workers = max(1, min(jobs or cores, len(cfgs)))
    groups = balance(groups, cfgs, workers, split=resolve_device(device).type == "cpu")
    workers = min(workers, len(groups))
    job_list = []
    index: dict[Path, int] = {run_dirs[i]: i for i in todo}
    for group in groups:
        cfg = study.runs[todo[group[0]]].config
        threads = cfg.train.threads or DEFAULT_THREADS  # one run per core, one thread each (devices.set_threads)
        job_list.append(Job(tuple(study.runs[todo[g]].config for g in group),
                            tuple(run_dirs[todo[g]] for g in group), device, threads, force, progress,
                            tuple(run_dirs[todo[g]] for g in group if run_dirs[todo[g]] in again)))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(job_list), unit="run", desc=study.name, position=0, dynamic_ncols=True,
               disable=None if progress is None else not progress)

    def done(job: Job, results: list) -> None:
        for r in results:
            result.results[index[Path(r.path)]] = r
            if on_result:
                on_result(root, r)
        bar.update(1)

    gpus = gpus_per_run if gpus_per_run is not None else (1.0 if device == "cuda" else 0.0)
    try:
        run_executor(job_list, done, ExecOptions(
            workers, ray_address, gpus, folder=Path(out) / ".slurm", slurm_partition=slurm_partition,
            slurm_time=slurm_time, slurm_mem=slurm_mem, slurm_cpus_per_task=slurm_cpus_per_task))
    finally:
        bar.close()
    return result


__all__ = ["GRID_FILE", "STATES", "StudyResult", "execute", "locate", "run_state", "run_study"]
