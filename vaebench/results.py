"""Reading a results folder into pandas: what ``vaebench.load``, ``vaebench ls`` and the report share.

It reads run folders through vaebench.runs only, so it never needs the trainer or the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import runs
from .config import flatten, is_execution_key
from .errors import VaebenchError


def _run_label(run_dir: Path, root: Path) -> str:
    rel = run_dir.relative_to(root).as_posix()
    return run_dir.name if rel == "." else rel


def _study_label(run_dir: Path, root: Path) -> str:
    """The folder that holds a run (``ablations`` for results/ablations/<run>): runs of one study share it."""
    if run_dir == root:
        return run_dir.parent.name or run_dir.name
    parent = run_dir.parent.relative_to(root).as_posix()
    return root.resolve().name if parent == "." else parent


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


def _engine(run_dir: Path) -> dict[str, Any]:
    """The engine that trained the run (env.json) and, under train.engine=auto, why not a faster one."""
    env = runs.read_json(Path(run_dir) / runs.ENV) or {}
    return {"engine": env.get("engine"), "engine_why": env.get("engine_why")}


def study_order(run_dirs: list[Path]) -> tuple[list[Path], dict[Path, dict[str, Any]]]:
    """Runs in their study's order (grid.yaml; runs it does not list after, by name), and each run's
    varied values that are not config keys, such as the name of its variant."""
    grids = {parent: runs.read_grid(parent) for parent in {d.parent for d in run_dirs}}
    position = {parent: {folder: i for i, folder in enumerate(g)} for parent, g in grids.items()}
    ordered = sorted(run_dirs, key=lambda d: (str(d.parent), position[d.parent].get(d.name, len(position[d.parent])),
                                              d.name))
    labels = {d: {k: v for k, v in grids[d.parent].get(d.name, {}).items() if "." not in k and k != "seed"}
              for d in run_dirs}
    return ordered, labels


def load(path: str | Path = "results", final: bool = False) -> pd.DataFrame:
    """Every run under ``path`` (any depth) as a DataFrame.

    Long form (default): one row per logged value with columns run, study (the folder
    holding the run), variant (a study's variant name, when it has variants), step, split (train/val), term (rec/kl/elbo), value, state, and the run's resolved config
    as dotted-key columns (``objective.k``, ``model.latent``, ...).

    ``final=True``: one row per run with its state (vaebench.runs.run_state: done only when its
    metrics are whole), its step (the last checkpointed one for a partial run), the reason of a
    failed or partial run, final metrics
    (``val_elbo``, ``val_rec``, ``val_kl``, ``train_elbo``, ... and any evaluation
    results such as ``test_iw_ll``) and the same config columns.
    """
    root = Path(path)
    frames, configs = [], []
    run_dirs, names = study_order(runs.find_runs(root))
    for run_dir in run_dirs:
        st = runs.run_state(run_dir)
        config = flatten(runs.read_config(run_dir))
        configs.append(config)
        label = _run_label(run_dir, root)
        if final:
            frames.append(pd.DataFrame([{"run": label, "study": _study_label(run_dir, root), **names[run_dir],
                                         "state": st.state, "step": st.step, "reason": st.reason,
                                         **_engine(run_dir),
                                         **(_final_row(run_dir) if st.state == "done" else {}), **config}]))
            continue
        m = runs.read_metrics(run_dir)
        long = m.melt(id_vars=["step", "split"], value_vars=list(runs.TERMS), var_name="term", value_name="value")
        long.insert(0, "run", label)
        long.insert(1, "study", _study_label(run_dir, root))
        for i, (key, value) in enumerate(names[run_dir].items()):
            long.insert(2 + i, key, value)
        long["state"] = st.state
        for key, value in config.items():
            long[key] = value
        frames.append(long)
    if not frames:
        raise VaebenchError(f"no runs found under {root}")
    df = pd.concat(frames, ignore_index=True)
    df.attrs["varied"] = varied_keys(pd.DataFrame(configs))
    if not final:
        for col in ("run", "study", "split", "term", "state", "variant"):
            if col in df:
                df[col] = df[col].astype("category")
    return df


def varied_keys(df: pd.DataFrame) -> list[str]:
    """The config columns whose values differ across the runs in ``df``: a study's axes and seeds
    (execution-only keys such as train.threads aside)."""
    config_cols = [c for c in df.columns if "." in c or c == "seed"]
    return [c for c in config_cols if not is_execution_key(c) and df[c].astype(str).nunique(dropna=False) > 1]


def ls(path: str | Path = "results") -> pd.DataFrame:
    """One row per run, in study order: its variant and varied values, state, progress, final
    validation ELBO and any held-out log-likelihood (``vaebench ls``)."""
    df = load(path, final=True)
    keys = (["variant"] if "variant" in df else []) + [k for k in varied_keys(df) if k != "train.steps"]
    df = df.rename(columns={"train.steps": "steps"})
    metrics = [c for c in ("val_elbo", "val_rec", "val_kl") if c in df]
    metrics += sorted(c for c in df.columns if c.endswith(("_iw_ll", "_iw_ll_se")))
    return df[["run", *keys, "state", "step", "steps", "engine", *metrics]].reset_index(drop=True)
