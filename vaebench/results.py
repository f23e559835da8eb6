"""Reading a results folder into pandas: what ``vaebench.load``, ``vaebench ls`` and the report share.

It reads run folders through vaebench.runs only, so it never needs the trainer or the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import runs
from .config import flatten, is_execution_key, key_info
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
                    if not isinstance(v, (dict, list, str)):  # numbers only (eval.json's "estimator" is not)
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


def _sort_key(v: Any) -> tuple:
    """Numbers (and tuples of numbers, such as widths) in numeric order, then text."""
    if isinstance(v, bool):
        return (0, (int(v),), "")
    if isinstance(v, (int, float)):
        return (0, (v,), "")
    if isinstance(v, tuple) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return (1, v, "")
    return (2, (), str(v))


def _categorical(counts: np.ndarray, values: list[Any]) -> pd.Categorical | None:
    """``values[i]`` repeated ``counts[i]`` times, as an ordered categorical; None when every value is empty."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        cats = pd.Index(sorted(set(present)))  # numeric categories: .astype(float) and sorting behave
    else:
        cats = pd.Index(sorted(set(present), key=_sort_key), dtype=object, tupleize_cols=False)
    return _repeat_codes([-1 if v is None else cats.get_loc(v) for v in values], counts, cats, True)


def _labels(counts: np.ndarray, labels: list[str], ordered: bool = False) -> pd.Categorical:
    """``labels[i]`` repeated ``counts[i]`` times, as a categorical whose categories keep ``labels``' order."""
    cats = list(dict.fromkeys(labels))
    position = {c: i for i, c in enumerate(cats)}
    return _repeat_codes([position[v] for v in labels], counts, cats, ordered)


def _repeat_codes(codes: list[int], counts: np.ndarray, cats, ordered: bool) -> pd.Categorical:
    """One code per run, repeated over the run's rows (np.repeat, the cheap way to 6 million rows)."""
    dtype = np.int8 if len(cats) < 127 else np.int16 if len(cats) < 32_000 else np.int32
    if len(set(codes)) == 1:  # a key no run varies: one fill, no per-run repeat
        rows = np.full(int(counts.sum()), codes[0], dtype=dtype)
    else:
        rows = np.repeat(np.array(codes, dtype=dtype), counts)
    return pd.Categorical.from_codes(rows, categories=cats, ordered=ordered)


def _as_list(v: str | list[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = list(allowed) if v is None else [v] if isinstance(v, str) else list(v)
    bad = [x for x in chosen if x not in allowed]
    if bad:
        raise VaebenchError(f"unknown {what} {bad[0]!r}; use one of {', '.join(allowed)}")
    return chosen


def load(path: str | Path = "results", final: bool = False, split: str | list[str] | None = None,
         term: str | list[str] | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Every run under ``path`` (any depth) as a compact, typed DataFrame.

    Long form (default): one row per logged value with columns run, study (the folder holding the
    run), variant (a study's variant name, when it has variants), step, split (train/val), term
    (rec/kl/elbo), value, state, and the run's resolved config as dotted-key columns
    (``objective.k``, ``model.latent``, ...). ``split``, ``term`` (a name or a list) and
    ``columns`` (config or label columns to keep) are applied in pyarrow before pandas.

    ``final=True``: one row per run with its state, last step, final metrics (``val_elbo``,
    ``val_rec``, ``val_kl``, ``train_elbo``, ...), the test evaluation (``test_elbo``,
    ``test_elbo_se``, ``test_iw_ll``, ``test_iw_ll_se``, ...) and the same config columns.

    Labels and config values are ordered categoricals (numeric keys keep numeric categories, lists
    such as widths are tuples), ``variant`` in the study's order; config keys that are empty in every
    run are left out. ``df.attrs["varied"]`` names the config keys that differ across runs,
    ``df.attrs["base"]`` each study's base values (grid.yaml's ``base``), its comparisons' reference.
    """
    root = Path(path)
    run_dirs, names = study_order(runs.find_runs(root))
    if not run_dirs:
        raise VaebenchError(f"no runs found under {root}")
    raw = [runs.read_config(d) for d in run_dirs]
    _import_plugins(raw)
    configs = [flatten(c, tuples=True) for c in raw]
    states = [runs.run_state(d) for d in run_dirs]
    labels = [_run_label(d, root) for d in run_dirs]
    studies = [_study_label(d, root) for d in run_dirs]
    n = len(run_dirs)
    if final:
        metric_rows = [_final_row(d) if st.state == "done" else {} for d, st in zip(run_dirs, states)]
        metric_cols = list(dict.fromkeys(k for r in metric_rows for k in r))
        counts = np.ones(n, dtype=np.int64)
        body = {"step": np.array([st.step for st in states], dtype=np.int64)}
        for col in metric_cols:
            vals = [r.get(col) for r in metric_rows]
            if all(v is None for v in vals):
                continue
            whole = all(isinstance(v, int) and not isinstance(v, bool) for v in vals)  # counts: n, k, active units
            body[col] = np.array(vals, dtype=np.int64) if whole else \
                np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
        order = ["step", *metric_cols]
    else:
        splits = _as_list(split, ("train", "val"), "split")
        terms = _as_list(term, runs.TERMS, "term")
        chunks = [_long_metrics(d, splits, terms) for d in run_dirs]
        counts = np.array([len(c[0]) for c in chunks], dtype=np.int64)
        body = {"step": np.concatenate([c[0] for c in chunks]) if n else np.zeros(0, np.int32),
                "split": pd.Categorical.from_codes(np.concatenate([c[1] for c in chunks]), categories=["train", "val"]),
                "term": pd.Categorical.from_codes(np.concatenate([c[2] for c in chunks]), categories=list(runs.TERMS)),
                "value": np.concatenate([c[3] for c in chunks])}
        order = ["step", "split", "term", "value"]
    cols: dict[str, Any] = {"run": _labels(counts, labels), "study": _labels(counts, studies)}
    extra = list(dict.fromkeys(k for d in run_dirs for k in names[d]))
    for key in extra:
        cols[key] = _labels(counts, [str(names[d].get(key, "")) for d in run_dirs], ordered=True)
    cols.update({k: body[k] for k in order if k in body})
    cols["state"] = _labels(counts, [st.state for st in states])
    if final:  # why a run is not done, and which engine trained it
        cols["reason"] = [st.reason for st in states]
        for key, vals in pd.DataFrame([_engine(d) for d in run_dirs]).items():
            cols[key] = list(vals)
    wanted = set(columns) if columns is not None else None
    for key in dict.fromkeys(k for c in configs for k in c):
        if wanted is not None and key not in wanted:
            continue
        col = _categorical(counts, [c.get(key) for c in configs])
        if col is not None:
            cols[key] = col
    if wanted is not None:
        keep = {"run", "study", "step", "split", "term", "value", "state", "reason", "engine", "engine_why", *(k for k in extra if k == "variant")}
        unknown = [c for c in columns if c not in cols and c not in keep]
        if unknown:
            raise VaebenchError(f"no column {unknown[0]!r} in {root}; columns are: {', '.join(cols)}")
        cols = {k: v for k, v in cols.items() if k in wanted or k in keep}
    df = pd.DataFrame(cols, copy=False)
    df.attrs["varied"] = varied_keys(pd.DataFrame([{k: str(v) for k, v in c.items()} for c in configs]))
    df.attrs["base"] = {s: runs.read_grid_base(d.parent) for s, d in dict(zip(studies, run_dirs)).items()}
    return df


def _long_metrics(run_dir: Path, splits: list[str], terms: list[str]) -> tuple[np.ndarray, ...]:
    """A run's logged terms as flat arrays (step, split code, term code, value), term-major, with
    the split filter applied to the Arrow table before anything becomes a NumPy array."""
    table = runs.read_metrics_table(run_dir)
    if len(splits) < 2:
        table = table.filter(pc.is_in(table["split"], value_set=pa.array(splits)))
    split_codes = pc.index_in(table["split"], value_set=pa.array(["train", "val"])).to_numpy(zero_copy_only=False)
    steps = table["step"].to_numpy().astype(np.int32)
    n = len(steps)
    values = [table[t].to_numpy() for t in terms]
    term_codes = np.repeat(np.array([runs.TERMS.index(t) for t in terms], dtype=np.int8), n)
    return (np.tile(steps, len(terms)), np.tile(split_codes.astype(np.int8), len(terms)), term_codes,
            np.concatenate(values) if values else np.zeros(0))


def format_value(v: Any) -> str:
    """A config value for people: widths (32,) as 32, (256, 128) as 256x128, 2.0 as 2."""
    if isinstance(v, (tuple, list)):
        whole = all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        return ("x" if whole else ", ").join(format_value(x) for x in v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    return str(v)


def _import_plugins(configs: list[dict[str, Any]]) -> None:
    """The plugins the runs were trained with, so their keys have their own labels and facts here
    too; one that no longer imports leaves its keys with readable names (the report says why)."""
    from . import plugins
    from .errors import ConfigError

    items = list(dict.fromkeys(i for c in configs for i in (c.get("imports") or []) if isinstance(i, str)))
    for item in items:
        try:
            plugins.load([item])
        except ConfigError:
            pass


def key_label(key: str) -> str:
    """A config key's short human label for axes, legends and tables: the schema's own
    (``config.key_info(key).label``) where the schema has one, else a readable form of the key."""
    if key != "variant":
        try:
            return key_info(key).label
        except VaebenchError:  # not a schema key (a study's own column)
            pass
    parts = key.split(".")
    return " ".join(parts[1:] if len(parts) > 1 else parts).replace("_", " ")


def axis_label(axis: str | tuple[str, ...] | list[str]) -> str:
    """An axis's label: its keys' labels, once each (encoder and decoder width are one axis)."""
    keys = [axis] if isinstance(axis, str) else list(axis)
    labels = list(dict.fromkeys(key_label(k) for k in keys))
    if len(labels) > 1:  # "encoder hidden & decoder hidden" -> "encoder/decoder hidden"
        heads, tails = zip(*(lab.rsplit(" ", 1) if " " in lab else ("", lab) for lab in labels))
        if len(set(tails)) == 1 and all(heads):
            return "/".join(heads) + " " + tails[0]
    return " & ".join(labels)


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
    metrics = [c for c in ("val_elbo", "val_rec", "val_kl", "test_elbo", "test_elbo_se", "test_iw_ll", "test_iw_ll_se")
               if c in df]
    metrics += sorted(c for c in df.columns if c.endswith(("_iw_ll", "_iw_ll_se")) and c not in metrics)
    return df[["run", *keys, "state", "step", "steps", "engine", *metrics]].reset_index(drop=True)
