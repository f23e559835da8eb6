"""What a set of runs is a study of: its axes, the slice that varies one axis at a time, the summary.

Everything is derived from the runs' resolved configs, so a study needs no grid file: runs in one
folder form a study, config keys whose values differ are its axes (keys that always vary together,
such as encoder and decoder width, are one axis), and ``seed`` is the replicate, never an axis.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import VaebenchError
from ..results import axis_label, is_execution_key, load, varied_keys
from .figures import axis_values, value_order
from .stats import mean_ci
from .tables import SPLIT_SHORT, metric_label, render, with_interval

REPLICATE_KEYS = ("seed",)
REDUCTIONS = ("last", "best")
TRAINING_TERMS = ("elbo", "rec", "kl")  # train_/val_ terms of final.json: the training's, no k
SUMMARY_METRICS = ("val_elbo", "val_rec", "val_kl", "gap", "test_elbo", "test_iw_ll")


def k_column(metric: str) -> str | None:
    """The column holding the k of ``metric``'s numbers (``test_k``), None for a training term."""
    split, _, term = metric.partition("_")
    if split not in ("train", "val", "test") or (split != "test" and term in TRAINING_TERMS):
        return None
    return f"{split}_k"


def load_final(runs: str | Path | pd.DataFrame, k: int | None = None, reduce: str = "last") -> pd.DataFrame:
    """``load(path, final=True, k=, reduce=)``, or a given frame checked for that reduction. A load()
    without ``k``/``reduce`` parameters gets neither (its values are the last ones)."""
    if reduce not in REDUCTIONS:
        raise VaebenchError(f"unknown reduction {reduce!r}; use one of {', '.join(REDUCTIONS)}")
    if isinstance(runs, (str, Path)):
        params = inspect.signature(load).parameters
        if reduce != "last" and "reduce" not in params:
            raise VaebenchError(f"this vaebench's load() has only the last values; reduce={reduce!r} needs a newer one")
        asked = {"k": k, "reduce": reduce}
        return load(runs, final=True, **{n: v for n, v in asked.items() if n in params})
    got = runs.attrs.get("reduce", "last")
    if got != reduce:
        raise VaebenchError(f"this frame holds the {got!r} values; load it with vaebench.load(path, final=True, "
                            f"reduce={reduce!r}) or compare with reduce={got!r}")
    return runs


def config_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if ("." in c or c == "seed") and not is_execution_key(c)]


def axes_of(final: pd.DataFrame) -> list[tuple[str, ...]]:
    """The study's axes: varied config keys (not the seed), merged when they always vary together."""
    keys = [k for k in varied_keys(final) if k not in REPLICATE_KEYS]
    groups: dict[tuple, list[str]] = {}
    owned: dict[str, list[str]] = {}  # a component's varied name key -> its own hyperparameters' keys
    for k in keys:
        owner = _owner(k, keys) if final[k].isna().any() else None
        if owner is not None:  # model.flow.steps goes with model.flow: it exists only where that does
            owned.setdefault(owner, []).append(k)
            continue
        signature = tuple(pd.factorize(final[k].astype(str))[0])
        groups.setdefault(signature, []).append(k)
    return [tuple(k2 for k in v for k2 in [k, *owned.get(k, [])]) for v in groups.values()]


def _owner(key: str, keys: list[str]) -> str | None:
    """The varied key naming the component whose hyperparameter ``key`` is, if any: the longest
    prefix of ``key`` that is itself varied (``model.flow`` for ``model.flow.steps``), or whose
    ``name`` is (``model.encoder.name`` for ``model.encoder.channels``). Asked only of keys some runs
    lack (the hyperparameter of some alternatives): a key every alternative has is an axis of its own."""
    from ..config import component_keys

    comps = component_keys()
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        for candidate in (prefix, prefix + ".name"):
            if candidate in keys and candidate != key and (candidate in comps or candidate.endswith(".name")):
                return candidate
    return None


def config_id(df: pd.DataFrame) -> pd.Series:
    """One id per distinct config (everything but the seed and execution-only keys)."""
    cols = [c for c in config_columns(df) if c not in REPLICATE_KEYS]
    return df[cols].astype(str).apply(lambda r: json.dumps(list(r)), axis=1) if cols else pd.Series("", df.index)


def references(final: pd.DataFrame, axes: list[tuple[str, ...]],
               base: dict | None = None) -> dict[tuple[str, ...], str]:
    """Each axis's reference value: the study's own base value where the axis takes it (grid.yaml's
    ``base``); else, where one value is shared by more configs than any other, that one (the baseline
    of a one-at-a-time study whose grid.yaml predates ``base``); else the first value listed (the
    study's order, which ``load`` keeps). Never an alphabetical tie."""
    configs = final.assign(_cfg=config_id(final)).drop_duplicates("_cfg")
    base = base or {}
    refs = {}
    for axis in axes:
        values = axis_values(configs, axis)
        if all(k in base for k in axis):
            own = axis_values(pd.DataFrame({k: pd.Series([base[k]], dtype=object) for k in axis}), axis).iloc[0]
            if (values == own).any():
                refs[axis] = own
                continue
        counts = values.value_counts(sort=False)
        top = counts[counts == counts.max()]
        refs[axis] = top.index[0] if len(top) == 1 else next(v for v in values if v in top.index)
    return refs


def variant_reference(variants: list[str], base: dict | None = None) -> str:
    """The reference of a study's variants: ``baseline``, else the variant that changes nothing
    (grid.yaml's ``base``), else the first listed."""
    own = (base or {}).get("variant")
    return "baseline" if "baseline" in variants else own if own in variants else variants[0]


def axis_slice(final: pd.DataFrame, axis: tuple[str, ...], axes: list[tuple[str, ...]],
               refs: dict[tuple[str, ...], str]) -> pd.Series:
    """Rows where every other axis is at its reference value: the runs that vary ``axis`` alone."""
    keep = pd.Series(True, index=final.index)
    for other in axes:
        if other != axis:
            keep &= axis_values(final, other) == refs[other]
    return keep


@dataclass
class StudyView:
    """One study of a report: its runs (one row each), axes and reference values."""

    name: str
    final: pd.DataFrame
    axes: list[tuple[str, ...]]
    refs: dict[tuple[str, ...], str]
    base: dict = field(default_factory=dict)  # grid.yaml's base: the study's own values

    def label(self, row: pd.Series) -> str:
        """A run's config in a few words: its variant's name, else its value on each axis that is
        not at the reference, else 'baseline'."""
        if "variant" in row and pd.notna(row["variant"]) and str(row["variant"]):
            return str(row["variant"])
        frame = row.to_frame().T
        values = {a: axis_values(frame, a).iloc[0] for a in self.axes}
        parts = [f"{axis_label(a)} = {v}" for a, v in values.items() if v != self.refs[a]]
        return ", ".join(parts) or ("baseline" if self.axes else row.get("name", self.name))

    def order_key(self, row: pd.Series) -> tuple:
        """A study with variants: the study's order. Else baseline first, then the configs that differ
        on one axis, axis by axis, in value order."""
        if "variant" in row and pd.notna(row["variant"]) and "variant" in self.final:
            order = list(dict.fromkeys(self.final["variant"].astype(str)))
            return (order.index(str(row["variant"])),) if str(row["variant"]) in order else (len(order),)
        frame = row.to_frame().T
        key = []
        for axis in self.axes:
            value = axis_values(frame, axis).iloc[0]
            order = value_order(axis_values(self.final, axis))
            key.append(order.index(value) if value != self.refs[axis] else -1)
        differ = [i for i, k in enumerate(key) if k >= 0]
        return (len(differ), differ, key)


def study_views(final: pd.DataFrame) -> list[StudyView]:
    """One view per study of ``final``, with its base values from ``final.attrs["base"]`` (load's)."""
    views = []
    bases = final.attrs.get("base") or {}
    for name, g in final.groupby("study", sort=True, observed=True):
        axes = axes_of(g) if len(g) > 1 else []
        base = dict(bases.get(str(name)) or {})
        g.attrs = {**g.attrs, "base": {str(name): base}}  # compare(view.final) finds it again
        views.append(StudyView(str(name), g, axes, references(g, axes, base) if axes else {}, base))
    return views


def summary(path_or_final: str | Path | pd.DataFrame, k: int | None = None, reduce: str = "last") -> pd.DataFrame:
    """One row per config (seeds pooled): mean and 95% CI half-width of the final validation
    ELBO, rec, KL, the train-validation ELBO gap and any test log-likelihood, over the runs that
    are done; with the number of seeds done, failed, and not finished, and ``test_k``, the k of the
    config's test numbers (<NA> where its seeds' k differ).

    ``path_or_final`` is a results folder or the frame of ``vaebench.load(path, final=True)``;
    ``k`` and ``reduce`` are load's. ``table.attrs``: reduce, and k ({split: the k of every row,
    or None}).
    """
    final = load_final(path_or_final, k, reduce)
    final = final.assign(gap=final.get("train_elbo", np.nan) - final.get("val_elbo", np.nan))
    k_cols = list(dict.fromkeys(c for m in SUMMARY_METRICS if (c := k_column(m)) and c in final))
    rows = []
    for view in study_views(final):
        f = view.final.assign(_cfg=config_id(view.final))
        groups = sorted(f.groupby("_cfg", sort=False), key=lambda item: view.order_key(item[1].iloc[0]))
        for _, g in groups:
            done = g[g["state"] == "done"]
            row = {"study": view.name, "config": view.label(g.iloc[0])}
            for axis in view.axes:
                row[" & ".join(axis)] = axis_values(g.iloc[:1], axis).iloc[0]
            row.update(n_seeds=len(done), n_failed=int((g["state"] == "failed").sum()),
                       n_unfinished=int((~g["state"].isin(["done", "failed"])).sum()))
            for col in k_cols:
                ks = pd.to_numeric(done[col], errors="coerce").dropna().unique()
                row[col] = int(ks[0]) if len(ks) == 1 else pd.NA
            for metric in SUMMARY_METRICS:
                if metric in done.columns and done[metric].notna().any():
                    row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci(done[metric])
            rows.append(row)
    out = pd.DataFrame(rows)
    for col in k_cols:
        out[col] = pd.array(out[col], dtype="Int64")
    metric_cols = [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "ci95") if f"{m}_{s}" in out]
    front = [c for c in out.columns if c not in metric_cols]
    out = out[front + metric_cols]
    out.attrs.update(reduce=reduce, k={c[:-2]: _table_k(out, c) for c in k_cols})
    return out


def _table_k(table: pd.DataFrame, col: str) -> int | None:
    """The one k of every row that has numbers of ``col``'s split (None when they differ)."""
    split = col[:-2]
    has = table[[c for c in table if c.startswith(f"{split}_") and c.endswith("_mean")]].notna().any(axis=1)
    ks = table.loc[has, col]
    return int(ks.iloc[0]) if len(ks) and ks.notna().all() and ks.nunique() == 1 else None


def summary_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: labels as headers, each metric as "mean [95% CI]", the k
    beside a split's numbers only where it is not one k for the whole table (the header has it)."""
    metrics = [m for m in SUMMARY_METRICS if f"{m}_mean" in table]
    names = {"n_seeds": "seeds", "n_failed": "failed", "n_unfinished": "unfinished"}
    ks = table.attrs.get("k") or {}
    out = pd.DataFrame(index=table.index)
    for c in table.columns:
        if c.endswith(("_mean", "_ci95")) or (c.endswith("_k") and ks.get(c[:-2]) is not None):
            continue
        label = names.get(c) or (axis_label(c.split(" & ")) if "." in c else
                                 f"{SPLIT_SHORT.get(c[:-2], c[:-2])} k" if c.endswith("_k") else c)
        out[label] = ["-" if pd.isna(v) else str(v) for v in table[c]]
    for m in metrics:
        mean, ci = table[f"{m}_mean"], table[f"{m}_ci95"]
        out[metric_label(m)] = [with_interval(a, a - b, a + b) for a, b in zip(mean, ci)]
    return out.reset_index(drop=True)


def summary_header(table: pd.DataFrame) -> str:
    """The summary's one line: what a cell is, the reduction and the k of each evaluated split."""
    ks = ", ".join(f"{SPLIT_SHORT.get(s, s)} numbers at k = {k:,}" for s, k in (table.attrs.get("k") or {}).items()
                   if k is not None)
    return (f"Mean over the seeds done [95% Student-t CI], nats per image; {table.attrs.get('reduce', 'last')} "
            f"values" + (f"; {ks}" if ks else ""))


def summary_text(table: pd.DataFrame, format: str = "text") -> str:
    """The summary as text, markdown, latex (booktabs), html or csv (the numbers, each in its own column)."""
    return render(summary_cells(table), format, summary_header(table), numbers=table)


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (the report's summary.md)."""
    return summary_text(table, "markdown")
