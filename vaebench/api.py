"""The Python API the CLI is a thin layer over; call it from a notebook just the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import runs
from .config import EXECUTION_KEYS, RunConfig, flatten, read_yaml
from .errors import ConfigError, VaebenchError
from .grid import Study, StudyResult, expand
from .grid import run_study as _run_study


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


def _run_label(run_dir: Path, root: Path) -> str:
    rel = run_dir.relative_to(root).as_posix()
    return run_dir.name if rel == "." else rel


def _final_row(run_dir: Path) -> dict[str, Any]:
    """Final metrics as flat columns: ``val_elbo``, ``train_rec``, ``test_iw_ll`` ...

    An evaluation's term that final.json already has (eval.json's val ELBO) is ``val_eval_elbo``.
    """
    row: dict[str, Any] = {}
    for source, doc in (("", runs.read_final(run_dir) or {}), ("eval_", runs.read_json(run_dir / runs.EVAL) or {})):
        for split, terms in doc.items():
            if isinstance(terms, dict):
                for term, v in terms.items():
                    if not isinstance(v, (dict, list)):
                        key = f"{split}_{term}"
                        row[f"{split}_{source}{term}" if key in row else key] = v
    return row


def load(path: str | Path = "results", final: bool = False) -> pd.DataFrame:
    """Every run under ``path`` (any depth) as a DataFrame.

    Long form (default): one row per logged value with columns run, step, split
    (train/val), term (rec/kl/elbo), value, state, and the run's resolved config
    as dotted-key columns (``objective.k``, ``model.latent``, ...).

    ``final=True``: one row per run with its state, last step, final metrics
    (``val_elbo``, ``val_rec``, ``val_kl``, ``train_elbo``, ... and any evaluation
    results such as ``test_iw_ll``) and the same config columns.
    """
    root = Path(path)
    frames, configs = [], []
    for run_dir in runs.find_runs(root):
        status = runs.read_status(run_dir)
        config = flatten(runs.read_config(run_dir))
        configs.append(config)
        label = _run_label(run_dir, root)
        if final:
            frames.append(pd.DataFrame([{"run": label, "state": status.get("state", "new"),
                                         "step": status.get("step", 0), **_final_row(run_dir), **config}]))
            continue
        m = runs.read_metrics(run_dir)
        long = m.melt(id_vars=["step", "split"], value_vars=list(runs.TERMS), var_name="term", value_name="value")
        long.insert(0, "run", label)
        long["state"] = status.get("state", "new")
        for key, value in config.items():
            long[key] = value
        frames.append(long)
    if not frames:
        raise VaebenchError(f"no runs found under {root}")
    df = pd.concat(frames, ignore_index=True)
    df.attrs["varied"] = varied_keys(pd.DataFrame(configs))
    if not final:
        for col in ("run", "split", "term", "state"):
            df[col] = df[col].astype("category")
    return df


def varied_keys(df: pd.DataFrame) -> list[str]:
    """The config columns whose values differ across the runs in ``df``: a study's axes and seeds
    (execution-only keys such as train.threads aside)."""
    config_cols = [c for c in df.columns if "." in c or c == "seed"]
    return [c for c in config_cols if not _execution_key(c) and df[c].astype(str).nunique(dropna=False) > 1]


def _execution_key(col: str) -> bool:
    """``eval.k`` is an execution key because its section ``eval`` is one."""
    return any(col == k or col.startswith(k + ".") for k in EXECUTION_KEYS)


def evaluate(path: str | Path = "results", k: int = 5000, split: str = "test", device: str = "auto",
             batch: int | None = None, force: bool = False, on_result=None) -> pd.DataFrame:
    """Evaluate every done run under ``path`` (a run or a study) on ``split`` with ``k`` importance
    samples per image, into each run's eval.json; runs with that (split, k) already are skipped
    unless ``force``. Returns one row per run: run, state (evaluated / skipped / not done), the
    split's numbers. ``on_result(row)`` is called after each run."""
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
            row |= {"state": "evaluated", **evaluate_run(run_dir, k=k, split=split, device=device, batch=batch)}
        row.pop("kl_per_dim", None)
        rows.append(row)
        if on_result:
            on_result(row)
    return pd.DataFrame(rows)


def ls(path: str | Path = "results") -> pd.DataFrame:
    """One row per run: its varied values, state, progress, final validation ELBO and any held-out
    log-likelihood (``vaebench ls``)."""
    df = load(path, final=True)
    keys = varied_keys(df)
    df = df.rename(columns={"train.steps": "steps"})
    metrics = [c for c in ("val_elbo", "val_rec", "val_kl") if c in df]
    metrics += sorted(c for c in df.columns if c.endswith(("_iw_ll", "_iw_ll_se")))
    return df[["run", *keys, "state", "step", "steps", *metrics]].sort_values("run", ignore_index=True)
