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


def load(path: str | Path = "results") -> pd.DataFrame:
    """Every logged value under ``path`` in long form.

    Columns: run, step, split (train/val), term (rec/kl/elbo), value, state, and the
    run's resolved config as dotted-key columns (``objective.k``, ``model.latent``, ...).
    """
    root = Path(path)
    frames = []
    for run_dir in runs.find_runs(root):
        m = runs.read_metrics(run_dir)
        long = m.melt(id_vars=["step", "split"], value_vars=list(runs.TERMS), var_name="term", value_name="value")
        long.insert(0, "run", _run_label(run_dir, root))
        long["state"] = runs.read_status(run_dir).get("state", "new")
        for key, value in flatten(runs.read_config(run_dir)).items():
            long[key] = value
        frames.append(long)
    if not frames:
        raise VaebenchError(f"no runs found under {root}")
    df = pd.concat(frames, ignore_index=True)
    for col in ("run", "split", "term", "state"):
        df[col] = df[col].astype("category")
    return df
