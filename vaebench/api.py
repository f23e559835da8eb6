"""The Python API the CLI is a thin layer over; call it from a notebook just the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import runs
from .config import RunConfig, read_yaml
from .errors import ConfigError, VaebenchError
from .grid import Study, StudyResult, expand
from .grid import run_study as _run_study
from .results import _run_label, load, ls, varied_keys  # noqa: F401  (re-exported: the API users call)


def _as_raw(config: str | Path | dict[str, Any] | RunConfig) -> tuple[dict[str, Any], str]:
    if isinstance(config, (str, Path)):
        return read_yaml(config), str(config)
    if isinstance(config, RunConfig):
        return config.to_dict(), ""
    return dict(config or {}), ""


def study(config: str | Path | dict[str, Any] | RunConfig,
          overrides: list[str] | dict[str, Any] | None = None) -> Study:
    """The flat list of runs a config or study file describes (with ``--set``-style overrides)."""
    raw, source = _as_raw(config)
    return expand(raw, overrides, source)


def run_dir_for(cfg: RunConfig, out: str | Path) -> Path:
    """results/<name>/<id>: where a lone run of this config lives."""
    return Path(out) / cfg.name / cfg.run_hash()


def run_study(config: str | Path | dict[str, Any] | RunConfig | Study, out: str | Path = "results",
              overrides: list[str] | dict[str, Any] | None = None, device: str = "auto",
              jobs: int | None = None, executor: str = "local", ray_address: str | None = None,
              gpus_per_run: float | None = None, force: bool = False, retry_failed: bool = False,
              dry_run: bool = False, progress: bool | None = None, on_result=None) -> StudyResult:
    """Run every missing run of a study (any config file is a study of one run); see vaebench.grid."""
    s = config if isinstance(config, Study) else study(config, overrides)
    return _run_study(s, out, device=device, jobs=jobs, executor=executor, ray_address=ray_address,
                      gpus_per_run=gpus_per_run, force=force, retry_failed=retry_failed, dry_run=dry_run,
                      progress=progress, on_result=on_result)


def run(config: str | Path | dict[str, Any] | RunConfig, out: str | Path = "results",
        overrides: list[str] | dict[str, Any] | None = None, device: str = "auto",
        progress: bool | None = None, force: bool = False):
    """Train the one run a config describes (resuming or skipping it if it exists); return its RunResult."""
    from .training import RunResult

    s = study(config, overrides)
    if s.axes:
        raise ConfigError(f"{config if isinstance(config, (str, Path)) else 'this config'} describes a study of "
                          f"{len(s.runs)} runs; use vaebench.run_study (or `vaebench run` on the command line)")
    res = _run_study(s, out, device=device, jobs=1, progress=progress, force=force)
    run_dir = res.run_dirs[0]
    if 0 in res.results:
        return res.results[0]
    status = runs.read_status(run_dir)
    state = {"done": "skipped", "running": "busy"}.get(res.states[0], res.states[0])
    return RunResult(run_dir, state, int(status.get("step", 0)), status.get("reason"), runs.read_final(run_dir))


def summary(path: str | Path = "results"):
    """One row per config of every study under ``path``: mean ± 95% CI of the final validation ELBO,
    rec, KL and train-validation gap over seeds, with seeds done / failed / unfinished."""
    from .report import summary as _summary

    return _summary(path)


def report(path: str | Path = "results", out: str | Path | None = None, force: bool = False,
           jobs: int | None = None):
    """Draw every figure of every run and study under ``path`` into ``out`` (default PATH/report)
    with an index.html; redraws only what changed since the last report."""
    from .report import build_report

    return build_report(path, out=out, force=force, jobs=jobs)


def evaluate(path: str | Path = "results", k: int = 5000, split: str = "test", device: str = "auto",
             batch: int | None = None, force: bool = False, on_result=None, threads: int | None = None,
             progress: bool | None = False) -> pd.DataFrame:
    """Evaluate every done run under ``path`` (a run or a study) on ``split`` with ``k`` importance
    samples per image, into each run's eval.json; runs with that (split, k) already are skipped
    unless ``force``. Returns one row per run: run, state (evaluated / skipped / not done), the
    split's numbers. ``on_result(row)`` is called after each run. threads: torch threads (default
    one); progress: a bar of images done and time left per run (None: on a terminal only)."""
    from .evaluation import SPLITS, evaluate_run, has_eval, resolve_device

    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    resolve_device(device)
    root = Path(path)
    run_dirs = runs.find_runs(root)
    if not run_dirs:
        raise VaebenchError(f"no runs found under {root}")
    if len(run_dirs) == 1 and runs.read_status(run_dirs[0]).get("state") != "done":
        if not (run_dirs[0] / runs.CHECKPOINT).is_file():
            raise VaebenchError(f"{run_dirs[0]} has no checkpoint yet; train it first (vaebench run)")
        raise VaebenchError(f"{run_dirs[0]} is not done ({runs.read_status(run_dirs[0]).get('state', 'new')}); "
                            f"finish it first (vaebench run)")
    rows = []
    for run_dir in run_dirs:
        row: dict[str, Any] = {"run": _run_label(run_dir, root), "split": split}
        if runs.read_status(run_dir).get("state") != "done":
            row["state"] = "not done"
        elif has_eval(run_dir, split, k) and not force:
            row |= {"state": "skipped", **runs.read_json(run_dir / runs.EVAL)[split]}
        else:
            row |= {"state": "evaluated", **evaluate_run(run_dir, k=k, split=split, device=device, batch=batch,
                                                             threads=threads, progress=progress)}
        row.pop("kl_per_dim", None)
        rows.append(row)
        if on_result:
            on_result(row)
    return pd.DataFrame(rows)
