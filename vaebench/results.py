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

from . import plugins, runs
from .config import flatten, is_execution_key, key_info, suggest
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


# Columns of load(final=True) that exist (NaN) even before any run is done, so code written against
# the documented frame works while a study trains; with reduce="best" also best_step.
DOCUMENTED = ("val_elbo", "val_rec", "val_kl", "train_elbo", "train_rec", "train_kl",
              "test_elbo", "test_elbo_se", "test_iw_ll", "test_iw_ll_se", "test_k")
REDUCES = ("last", "best")
_NOT_COLUMNS = ("split", "checkpoint", "step")  # an eval entry's identity, not its numbers


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _terms(run_dir: Path, reduce: str) -> dict[str, dict[str, Any]]:
    """{split: {term: value}} of final.json at the reduction: "last", the values at the end; "best",
    the values at the step of the best validation ELBO (final.json's "best", kept by
    train.keep_best, else the best validation row of metrics.parquet), with that step under "best"."""
    final = runs.read_final(run_dir) or {}
    if reduce == "last":
        return {s: t for s, t in final.items() if s != "best" and isinstance(t, dict)}
    best = final.get("best")
    if isinstance(best, dict):
        return {"best": {"step": best.get("step")}, **{s: t for s, t in best.items() if isinstance(t, dict)}}
    val = runs.read_metrics_table(run_dir).to_pandas()
    val = val[val["split"] == "val"]
    if val.empty or val["elbo"].isna().all():
        return {}
    row = val.loc[val["elbo"].idxmax()]
    return {"best": {"step": int(row["step"])}, "val": {t: float(row[t]) for t in runs.TERMS}}


def _choose_k(entries: list[list[dict[str, Any]]], k: int | None, checkpoint: str) -> dict[str, int | None]:
    """Per split, the k of load(final=True)'s numbers: ``k`` when given, else the largest k that
    every run with an evaluation of that split has (None when they share none: each its largest)."""
    splits = list(dict.fromkeys(e["split"] for es in entries for e in es if e["checkpoint"] == checkpoint))
    chosen: dict[str, int | None] = {"test": k} if k is not None or not splits else {}
    for split in splits:
        have = [ks for es in entries
                if (ks := {e["k"] for e in es if e["split"] == split and e["checkpoint"] == checkpoint})]
        common = set.intersection(*have) if have else set()
        chosen[split] = k if k is not None else max(common) if common else None
    return chosen


def _final_row(terms: dict[str, dict[str, Any]], entries: list[dict[str, Any]], chosen: dict[str, int | None],
               checkpoint: str) -> dict[str, Any]:
    """Final metrics as flat columns: ``val_elbo``, ``train_rec``, ``test_iw_ll``, ``test_k`` ...
    (with reduce="best" also ``best_step``). An evaluation's term that final.json already has (an
    eval of the val split's ELBO) is ``val_eval_elbo``."""
    row: dict[str, Any] = {f"{split}_{term}": v for split, t in terms.items() for term, v in t.items() if _number(v)}
    for split, k in chosen.items():
        e = runs.find_eval(entries, split, k, checkpoint)  # k None: this run's largest
        for term, v in (e or {}).items():
            if term not in _NOT_COLUMNS and _number(v):  # numbers only (eval.json's "estimator" is not)
                key = f"{split}_{term}"
                row[f"{split}_eval_{term}" if key in row else key] = v
    return row


def final_numbers(run_dir: Path, reduce: str = "last") -> dict[str, Any]:
    """One run's numbers under the names of its row of ``load(final=True)`` (``val_elbo``,
    ``test_iw_ll``, ``test_k``, ...), each split's evaluation at the run's own largest k: what an
    exporter records as the run's summary, without reading the rest of the folder."""
    entries = runs.read_evals(run_dir)
    return _final_row(_terms(run_dir, reduce), entries, _choose_k([entries], None, reduce), reduce)


def _engine(run_dir: Path) -> dict[str, Any]:
    """The engine that trained the run (env.json) and, under train.engine=auto, why not a faster one."""
    env = runs.read_json(Path(run_dir) / runs.ENV)
    env = env if isinstance(env, dict) else {}
    return {"engine": runs.engines(env), "engine_why": env.get("engine_why")}


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


def _config_column(counts: np.ndarray, values: list[Any]):
    """``values[i]`` (run i's value of a config key) repeated ``counts[i]`` times, typed for pandas:
    whole numbers int64 (Int64 when some run lacks the key), other numbers float64 (NaN), flags
    bool, anything else (names, text, widths) an ordered categorical of strings such as "128" or
    "256x128" (format_value), in numeric order where the values are numbers; None when every value
    is empty. Strings, not tuples: parquet stores them, and they read as they print."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    missing = len(present) < len(values)
    if all(isinstance(v, bool) for v in present):
        data = np.array([bool(v) for v in values], dtype=bool)
        mask = np.array([v is None for v in values]) if missing else None
        return _repeat(data, counts, mask, pd.arrays.BooleanArray)
    if all(_number(v) for v in present):
        if all(isinstance(v, int) for v in present):
            data = np.array([0 if v is None else v for v in values], dtype=np.int64)
            mask = np.array([v is None for v in values]) if missing else None
            return _repeat(data, counts, mask, pd.arrays.IntegerArray)
        return _repeat(np.array([np.nan if v is None else v for v in values], dtype=np.float64), counts)
    texts = {}
    for v in sorted(set(present), key=_sort_key):
        texts.setdefault(v, _text(v))
    cats = list(dict.fromkeys(texts.values()))
    position = {t: i for i, t in enumerate(cats)}
    return _repeat_codes([-1 if v is None else position[texts[v]] for v in values], counts, cats, True)


def _text(v: Any) -> str:
    """A config value as a category: format_value, with "[]" for an empty list (no hidden layers)."""
    return "[]" if isinstance(v, (tuple, list)) and not v else format_value(v)


def _repeat(data: np.ndarray, counts: np.ndarray, mask: np.ndarray | None = None, masked=None):
    """Run i's value repeated over its rows (one fill when every run has the same value)."""
    one = len(data) and (data == data[0]).all() and (mask is None or not mask.any())
    rows = np.full(int(counts.sum()), data[0], dtype=data.dtype) if one else np.repeat(data, counts)
    return rows if mask is None else masked(rows, np.repeat(mask, counts))


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
         term: str | list[str] | None = None, columns: list[str] | None = None, k: int | None = None,
         reduce: str = "last", trust: bool = False) -> pd.DataFrame:
    """Every run under ``path`` (any depth) as a compact, typed DataFrame.

    ``code``: a short hash of the plugin code (and vaebench version) each run was trained with,
    "unknown" for folders written before it was recorded. Reading runs none of the folder's code:
    ``trust=True`` imports the runs' recorded plugins first, so their keys get their own labels.

    Long form (default): one row per logged value with columns run, study (the folder holding the
    run), variant (a study's variant name, when it has variants), step, split (train/val), term
    (rec/kl/elbo), value, state, and the run's resolved config as dotted-key columns
    (``objective.k``, ``model.latent``, ...). ``split``, ``term`` (a name or a list) and
    ``columns`` (config or label columns to keep) are applied in pyarrow before pandas.

    ``final=True``: one row per run with its state, last step, final metrics (``val_elbo``,
    ``val_rec``, ``val_kl``, ``train_elbo``, ...), per evaluated split s ``{s}_iw_ll``,
    ``{s}_iw_ll_se``, ``{s}_elbo``, ``{s}_elbo_se``, ``{s}_active_units``, ... and ``{s}_k`` (the
    importance samples its numbers came from), and the same config columns. The documented columns
    (``DOCUMENTED``: val/train rec, KL, ELBO; test ELBO, IW log p(x), their standard errors, test_k)
    exist, NaN, even while no run is done. ``k``: the evaluations' k; None: per split, the largest k
    that every run with an evaluation of it has (each run's largest where they share none).
    ``reduce``: "last", the values at the end of training; "best", those at the step of the best
    validation ELBO (``best_step``) and the evaluation of best.pt (kept by train.keep_best: true;
    NaN for runs without it). ``df.attrs["reduce"]`` and ``df.attrs["k"]`` ({split: k or None}) say which.

    Column types: config keys of whole numbers are int64 (Int64 where some run lacks the key),
    other numbers float64, flags bool; names, text and lists are ordered categoricals of strings
    (widths as "128" or "256x128", numbers in numeric order), run labels and ``variant`` (in the
    study's order) categoricals too; config keys that are empty in every run are left out. Every
    column is one parquet stores, so ``to_parquet``/``read_parquet`` round-trips either form.
    ``df.attrs["varied"]`` names the config keys that differ across runs, ``df.attrs["base"]`` each
    study's base values (grid.yaml's ``base``), its comparisons' reference.
    """
    if reduce not in REDUCES:
        raise VaebenchError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCES)}")
    if not final and (k is not None or reduce != "last"):
        raise VaebenchError("k and reduce choose the numbers of load(..., final=True); the long form has every step")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise VaebenchError(f"k must be a whole number of importance samples (at least 1), got {k!r}")
    root = Path(path)
    run_dirs, names = study_order(runs.find_runs(root))
    if not run_dirs:
        raise VaebenchError(f"no runs found under {root}")
    raw = [_config_or_none(d) for d in run_dirs]
    if trust:
        import_recorded([c for c in raw if c is not None], strict=False)
    else:
        _entry_points()
    states = [runs.run_state(d) for d in run_dirs]
    # a damaged config.yaml's values are not the run's: its row has none (and no numbers)
    raw = [c if c is not None and st.file != runs.CONFIG else {} for c, st in zip(raw, states)]
    configs = [flatten(c, tuples=True) for c in raw]
    labels = [_run_label(d, root) for d in run_dirs]
    studies = [_study_label(d, root) for d in run_dirs]
    n = len(run_dirs)
    chosen: dict[str, int | None] = {}
    if final:
        done = [st.state == "done" for st in states]
        entries = [runs.read_evals(d) if ok else [] for d, ok in zip(run_dirs, done)]
        chosen = _choose_k(entries, k, reduce)
        metric_rows = [_final_row(_terms(d, reduce), es, chosen, reduce) if ok else {}
                       for d, es, ok in zip(run_dirs, entries, done)]
        documented = [*DOCUMENTED, *(["best_step"] if reduce == "best" else [])]
        metric_cols = list(dict.fromkeys([*(k for r in metric_rows for k in r), *documented]))
        counts = np.ones(n, dtype=np.int64)
        body = {"step": np.array([st.step for st in states], dtype=np.int64)}
        for col in metric_cols:
            vals = [r.get(col) for r in metric_rows]
            if col.endswith("_k") or col == "best_step":  # a count that a run may lack: nullable
                body[col] = pd.array(vals, dtype="Int64")
                continue
            if all(v is None for v in vals) and col not in documented:
                continue
            whole = all(isinstance(v, int) and not isinstance(v, bool) for v in vals)  # counts: n, active units
            body[col] = np.array(vals, dtype=np.int64) if whole else \
                np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
        order = ["step", *metric_cols]
    else:
        splits = _as_list(split, ("train", "val"), "split")
        terms = _as_list(term, runs.TERMS, "term")
        chunks = [_long_metrics(d, splits, terms, st) for d, st in zip(run_dirs, states)]
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
    cols["code"] = _labels(counts, [plugins.code_id(runs.read_code(d)) for d in run_dirs])  # runs of other code
    if final:  # why a run is not done, and which engine trained it
        cols["reason"] = [st.reason for st in states]
        for key, vals in pd.DataFrame([_engine(d) for d in run_dirs]).items():
            cols[key] = list(vals)
    wanted = set(columns) if columns is not None else None
    for key in dict.fromkeys(k for c in configs for k in c):
        if wanted is not None and key not in wanted:
            continue
        col = _config_column(counts, [c.get(key) for c in configs])
        if col is not None:
            cols[key] = col
    if wanted is not None:
        keep = {"run", "study", "step", "split", "term", "value", "state", "code", "reason", "engine", "engine_why", *(k for k in extra if k == "variant")}
        unknown = [c for c in columns if c not in cols and c not in keep]
        if unknown:
            raise VaebenchError(f"no column {unknown[0]!r} in {root}; columns are: {', '.join(cols)}")
        cols = {k: v for k, v in cols.items() if k in wanted or k in keep}
    df = pd.DataFrame(cols, copy=False)
    df.attrs["varied"] = varied_keys(pd.DataFrame([{k: str(v) for k, v in c.items()} for c in configs]))
    df.attrs["base"] = {s: runs.read_grid_base(d.parent) for s, d in dict(zip(studies, run_dirs)).items()}
    if final:
        df.attrs["reduce"], df.attrs["k"] = reduce, chosen
    return df


def _config_or_none(run_dir: Path) -> dict[str, Any] | None:
    try:
        return runs.read_config(run_dir)
    except VaebenchError:  # run_state names the file: the run is damaged, the others load
        return None


def _long_metrics(run_dir: Path, splits: list[str], terms: list[str],
                  state: runs.RunState | None = None) -> tuple[np.ndarray, ...]:
    """A run's logged terms as flat arrays (step, split code, term code, value), term-major, with
    the split filter applied to the Arrow table before anything becomes a NumPy array; none for a
    run whose metrics or config are damaged (its row of load(final=True) says why)."""
    damaged = state is not None and state.state == "damaged" and state.file in (runs.CONFIG, runs.METRICS)
    table = runs.METRICS_SCHEMA.empty_table() if damaged else runs.read_metrics_table(run_dir)
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


def _entry_points() -> None:
    """Installed packages' components (the user's installed choice, not the folder's code), for
    their keys' labels; a broken one leaves readable names, as an untrusted plugin does."""
    from .errors import ConfigError

    try:
        plugins.load_entry_points()
    except ConfigError:
        pass


def import_recorded(configs: list[dict[str, Any]], strict: bool = True) -> None:
    """Import the plugins the runs were trained with: only when the user trusts the folder
    (``--trust``, ``trust=True``), since importing runs their code. ``strict``: a plugin that no
    longer imports is its one-line error; else its keys keep readable names (the report says why)."""
    from .errors import ConfigError

    items = list(dict.fromkeys(i for c in configs for i in (c.get("imports") or []) if isinstance(i, str)))
    for item in items:
        try:
            plugins.load([item])
        except ConfigError:
            if strict:
                raise


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


def axis_heads(axis: str | tuple[str, ...] | list[str]) -> list[str]:
    """An axis's keys without the hyperparameters of a component it names (``model.flow.steps`` goes
    with ``model.flow``, ``model.encoder.channels`` with ``model.encoder.name``): what names the axis."""
    keys = [axis] if isinstance(axis, str) else list(axis)

    def owned(k: str) -> bool:
        return any(o != k and k.startswith((o[:-len("name")] if o.endswith(".name") else o + ".")) for o in keys)

    return [k for k in keys if not owned(k)] or keys


def axis_label(axis: str | tuple[str, ...] | list[str]) -> str:
    """An axis's label: its keys' labels, once each (encoder and decoder width are one axis)."""
    keys = axis_heads(axis)
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
    if config_cols:  # a run whose config.yaml is unreadable has no values: it varies nothing
        df = df[df[config_cols].notna().any(axis=1)]
    return [c for c in config_cols if not is_execution_key(c) and df[c].astype(str).nunique(dropna=False) > 1]


def sort_runs(df: pd.DataFrame, by: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """``df`` sorted by columns ``by`` in turn, each ascending or, written ``-name``, descending;
    missing values last, ties in their order before (a stable sort). An unknown column is a
    one-line error naming the columns there are."""
    cols, ascending = [], []
    for b in by:
        name = b[1:] if b.startswith("-") else b
        if name not in df.columns:
            names = [str(c) for c in df.columns]
            raise VaebenchError(f"sort by {b!r}: no column {name!r}; the columns are {', '.join(names)}{suggest(name, names)}")
        cols.append(name)
        ascending.append(not b.startswith("-"))
    if not cols:
        return df
    keyed = df.copy()
    for c in cols:  # mixed or unorderable values (lists, None) sort by their text
        try:
            keyed[c].sort_values()
        except TypeError:
            keyed[c] = keyed[c].map(lambda v: None if v is None or v is pd.NA else format_value(v))
    order = keyed.sort_values(cols, ascending=ascending, kind="stable", na_position="last").index
    out = df.loc[order].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


def ls(path: str | Path = "results", trust: bool = False, sort: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per run, in study order (or by ``sort``: column names, ``-name`` descending): its
    variant and varied values, state, code, progress, final validation ELBO and any held-out
    log-likelihood (``vaebench ls``); ``trust`` as in load."""
    df = load(path, final=True, trust=trust)
    keys = (["variant"] if "variant" in df else []) + [k for k in varied_keys(df) if k != "train.steps"]
    df = df.rename(columns={"train.steps": "steps"})
    metrics = [c for c in ("val_elbo", "val_rec", "val_kl", "test_elbo", "test_elbo_se", "test_iw_ll", "test_iw_ll_se",
                           "test_k") if c in df]
    metrics += sorted(c for c in df.columns if c.endswith(("_iw_ll", "_iw_ll_se", "_k")) and "." not in c
                      and c not in metrics)
    out = df[["run", *keys, "state", "code", "step", "steps", "engine", *metrics]].reset_index(drop=True)
    bad = df["state"] == "damaged"
    out.attrs["damaged"] = dict(zip(df["run"][bad].astype(str), df["reason"][bad]))  # run: the file and the fix
    return sort_runs(out, sort)
