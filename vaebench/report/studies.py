"""What a set of runs is a study of: its axes, the slice that varies one axis at a time, the summary.

Everything is derived from the runs' resolved configs, so a study needs no grid file: runs in one
folder form a study, config keys whose values differ are its axes (keys that always vary together,
such as encoder and decoder width, are one axis), and ``seed`` is the replicate, never an axis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import axis_label, is_execution_key, load, varied_keys
from .figures import axis_values, value_order
from .stats import mean_ci

REPLICATE_KEYS = ("seed",)
SUMMARY_METRICS = ("val_elbo", "val_rec", "val_kl", "gap", "test_elbo", "test_iw_ll")


def config_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if ("." in c or c == "seed") and not is_execution_key(c)]


def axes_of(final: pd.DataFrame) -> list[tuple[str, ...]]:
    """The study's axes: varied config keys (not the seed), merged when they always vary together."""
    keys = [k for k in varied_keys(final) if k not in REPLICATE_KEYS]
    groups: dict[tuple, list[str]] = {}
    for k in keys:
        signature = tuple(pd.factorize(final[k].astype(str))[0])
        groups.setdefault(signature, []).append(k)
    return [tuple(v) for v in groups.values()]


def config_id(df: pd.DataFrame) -> pd.Series:
    """One id per distinct config (everything but the seed and execution-only keys)."""
    cols = [c for c in config_columns(df) if c not in REPLICATE_KEYS]
    return df[cols].astype(str).apply(lambda r: json.dumps(list(r)), axis=1) if cols else pd.Series("", df.index)


def references(final: pd.DataFrame, axes: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Each axis's reference value: the one most configs share (the baseline of a one-at-a-time
    study); ties go to the first value in axis order."""
    configs = final.assign(_cfg=config_id(final)).drop_duplicates("_cfg")
    refs = {}
    for axis in axes:
        counts = axis_values(configs, axis).value_counts()
        best = counts.max()
        refs[axis] = next(v for v in value_order(counts.index) if counts[v] == best)
    return refs


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
    views = []
    for name, g in final.groupby("study", sort=True, observed=True):
        axes = axes_of(g) if len(g) > 1 else []
        views.append(StudyView(str(name), g, axes, references(g, axes) if axes else {}))
    return views


def summary(path_or_final: str | Path | pd.DataFrame) -> pd.DataFrame:
    """One row per config (seeds pooled): mean and 95% CI half-width of the final validation
    ELBO, rec, KL, the train-validation ELBO gap and any test log-likelihood, over the runs that
    are done; with the number of seeds done, failed, and not finished.

    ``path_or_final`` is a results folder or the frame of ``vaebench.load(path, final=True)``.
    """
    final = load(path_or_final, final=True) if isinstance(path_or_final, (str, Path)) else path_or_final
    final = final.assign(gap=final.get("train_elbo", np.nan) - final.get("val_elbo", np.nan))
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
            for metric in SUMMARY_METRICS:
                if metric in done.columns and done[metric].notna().any():
                    row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci(done[metric])
            rows.append(row)
    out = pd.DataFrame(rows)
    metric_cols = [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "ci95") if f"{m}_{s}" in out]
    front = [c for c in out.columns if c not in metric_cols]
    return out[front + metric_cols]


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown table, each metric as 'mean ± CI'."""
    metrics = [m for m in SUMMARY_METRICS if f"{m}_mean" in table]
    head = [c for c in table.columns if not c.endswith(("_mean", "_ci95"))]
    cols = head + metrics
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in table.iterrows():
        cells = [str(r[c]) for c in head]
        for m in metrics:
            mean, ci = r[f"{m}_mean"], r[f"{m}_ci95"]
            cells.append("-" if pd.isna(mean) else f"{mean:.2f}" + ("" if pd.isna(ci) else f" ± {ci:.2f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
