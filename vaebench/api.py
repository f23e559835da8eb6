"""The Python API the CLI is a thin layer over; call it from a notebook just the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import runs
from .config import RunConfig, flatten, load_config, resolve
from .errors import VaebenchError


def _as_config(config: str | Path | dict[str, Any] | RunConfig, overrides) -> RunConfig:
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    return resolve(config, overrides)


def run_dir_for(cfg: RunConfig, out: str | Path) -> Path:
    """results/<name>/<hash>: the same config always lands in the same folder."""
    return Path(out) / cfg.name / cfg.run_hash()


def run(config: str | Path | dict[str, Any] | RunConfig, out: str | Path = "results",
        overrides: list[str] | dict[str, Any] | None = None, device: str = "auto",
        progress: bool | None = None, force: bool = False):
    """Train the run a config describes (resuming or skipping it if it exists); return its RunResult."""
    from .training import train_run

    cfg = _as_config(config, overrides)
    return train_run(cfg, run_dir_for(cfg, out), device=device, progress=progress, force=force)


def _run_label(run_dir: Path, root: Path) -> str:
    rel = run_dir.relative_to(root).as_posix()
    return run_dir.name if rel == "." else rel


def _final_row(run_dir: Path) -> dict[str, Any]:
    """Final metrics as flat columns: ``val_elbo``, ``train_rec``, ``test_iw_ll`` ..."""
    row: dict[str, Any] = {}
    for doc in (runs.read_final(run_dir) or {}, runs.read_json(run_dir / runs.EVAL) or {}):
        for split, terms in doc.items():
            if isinstance(terms, dict):
                row.update({f"{split}_{term}": v for term, v in terms.items() if not isinstance(v, (dict, list))})
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
    frames = []
    for run_dir in runs.find_runs(root):
        status = runs.read_status(run_dir)
        config = flatten(runs.read_config(run_dir))
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
    if not final:
        for col in ("run", "split", "term", "state"):
            df[col] = df[col].astype("category")
    return df
