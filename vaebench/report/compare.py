"""Paired comparisons: each axis value (or variant) against a reference, seed by seed.

With two or three seeds per config, independent intervals per config dwarf the differences; the
seeds are paired (the same seed gives the same data order and initial draw in every config), so
the difference seed by seed is what carries the signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import VaebenchError
from ..results import axis_label, load
from .figures import axis_values, value_order
from .stats import paired_difference
from .studies import axis_slice, study_views

COLUMNS = ["study", "axis", "value", "reference", "metric", "mean", "n_seeds", "diff", "ci_low", "ci_high",
           "boot_low", "boot_high", "p_improve", "verdict"]


def higher_is_better(metric: str) -> bool:
    """Log-likelihoods and ELBOs are better higher; a KL, a gap or a standard error lower."""
    return not metric.endswith(("_kl", "_se", "gap"))


def default_metric(final: pd.DataFrame) -> str:
    """The test IW log-likelihood where runs have it, else the final validation ELBO."""
    return "test_iw_ll" if "test_iw_ll" in final and final["test_iw_ll"].notna().any() else "val_elbo"


def _per_seed(runs: pd.DataFrame, metric: str) -> pd.Series:
    """The metric of each seed (the mean if one seed has several runs)."""
    seeds = runs["seed"].astype(int) if "seed" in runs else pd.Series(0, index=runs.index)
    return runs[metric].astype(float).groupby(seeds.to_numpy()).mean().dropna()


def _rows(study: str, axis: str, labels: pd.Series, runs: pd.DataFrame, order: list[str], ref: str,
          metric: str) -> list[dict]:
    base = _per_seed(runs[labels == ref], metric)
    rows = []
    for value in order:
        mine = _per_seed(runs[labels == value], metric)
        row = {"study": study, "axis": axis, "value": value, "reference": ref, "metric": metric,
               "mean": float(mine.mean()) if len(mine) else np.nan}
        if value == ref:
            row.update(n_seeds=len(mine), diff=0.0, verdict="reference")
        else:
            common = mine.index.intersection(base.index)
            row.update(paired_difference(mine[common].to_numpy(), base[common].to_numpy(),
                                         higher_is_better(metric)))
        rows.append(row)
    return rows


def compare(runs: str | Path | pd.DataFrame, metric: str = "test_iw_ll", reference: str | None = None) -> pd.DataFrame:
    """One row per axis value (per variant in a study with variants): the difference of ``metric``
    to the reference paired by seed, with its 95% Student-t and bootstrap intervals, the probability
    of improvement and a verdict (better / worse / no detectable difference / too few seeds).

    ``runs`` is a results folder or the frame of ``vaebench.load(path, final=True)``. The reference
    is ``reference`` where an axis has that value, else the variant ``baseline`` (else the first
    variant), else the axis's most common value (the baseline of a one-at-a-time study).
    """
    final = load(runs, final=True) if isinstance(runs, (str, Path)) else runs
    if metric not in final.columns or final[metric].notna().sum() == 0:
        metrics = sorted(c for c in final.columns if "." not in c and final[c].dtype.kind == "f")
        hint = "; run `vaebench eval PATH` first" if metric.startswith("test_") else ""
        raise VaebenchError(f"no run has {metric!r}{hint}; metrics here: {', '.join(metrics) or 'none'}")
    rows: list[dict] = []
    seen: set[str] = set()
    for view in study_views(final):
        done = view.final[view.final["state"].astype(str) == "done"]
        variants = view.final["variant"].astype(str) if "variant" in view.final else None
        if variants is not None and variants.nunique() > 1:
            order = list(dict.fromkeys(variants))  # the study's order
            seen.update(order)
            ref = reference if reference in order else "baseline" if "baseline" in order else order[0]
            rows += _rows(view.name, "variant", variants[done.index], done, order, ref, metric)
            continue
        for axis in view.axes:
            part = done[axis_slice(done, axis, view.axes, view.refs)]
            labels = axis_values(part, axis)
            order = value_order(axis_values(view.final, axis))
            seen.update(order)
            ref = reference if reference in order else view.refs[axis]
            rows += _rows(view.name, axis_label(axis), labels, part, order, ref, metric)
    if reference is not None and reference not in seen:
        raise VaebenchError(f"no variant or axis value {reference!r} to compare with; "
                            f"values are: {', '.join(sorted(seen)) or 'none (no axes)'}")
    return pd.DataFrame(rows, columns=COLUMNS)


def compare_text(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: difference with its intervals, P(improvement), verdict."""
    def num(v, fmt="{:+.2f}"):
        return "-" if pd.isna(v) else fmt.format(v)

    out = pd.DataFrame({
        "study": table["study"], "axis": table["axis"], "value": table["value"],
        "mean": [num(v, "{:.2f}") for v in table["mean"]], "seeds": table["n_seeds"],
        "diff": [num(v) for v in table["diff"]],
        "95% CI (t)": ["-" if pd.isna(a) else f"[{a:+.2f}, {b:+.2f}]" for a, b in zip(table["ci_low"], table["ci_high"])],
        "95% CI (bootstrap)": ["-" if pd.isna(a) else f"[{a:+.2f}, {b:+.2f}]"
                               for a, b in zip(table["boot_low"], table["boot_high"])],
        "P(better)": [num(v, "{:.2f}") for v in table["p_improve"]], "verdict": table["verdict"]})
    if out["study"].nunique() == 1:
        out = out.drop(columns=["study"])
    return out
