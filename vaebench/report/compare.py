"""Paired comparisons: each axis value (or variant) against a reference, within seed and cell.

With two or three seeds per config, independent intervals per config dwarf the differences; the
seeds are paired (the same seed gives the same data order and initial draw in every config), so
the difference seed by seed is what carries the signal. In a crossed grid (K x KL x seed) a value
of one axis is paired with the reference in every cell of the other axes, seed by seed: every
pair is used. The cells of one seed share its data order and initial draw, so they are not
independent replicates: each seed's paired differences are averaged over its cells, and the
t interval and test are over those per-seed averages (n = seeds, not pairs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import VaebenchError
from ..results import axis_label
from .figures import axis_values, value_order
from .stats import ALPHA, CONFIDENCE, MIN_BOOTSTRAP, MIN_SEEDS, holm, paired_difference, verdict
from .studies import k_column, load_final, study_views, variant_reference
from .tables import check_format, metric_label, number, render, with_interval

COLUMNS = ["study", "axis", "value", "reference", "cell", "metric", "k", "reduce", "mean", "n_seeds", "n_pairs",
           "n_cells", "diff", "ci_low", "ci_high", "boot_low", "boot_high", "p", "p_adj", "share_better", "verdict"]


# The keys that decide what a log-likelihood measures: the images it is of (the data set, how they are
# binarized) and whether it is a probability of binary pixels or a density on [0, 1] (the likelihood's
# ``binary_only``). A value that differs from the reference in one of them is not compared in nats.
MEASURE_KEYS = ("data.dataset", "data.binarize")
NOT_COMPARABLE = "not comparable"


def _measures(final: pd.DataFrame, rows: pd.Series) -> dict[str, frozenset]:
    """What the metric of these runs measures: per MEASURE_KEYS column (and the likelihood's kind),
    the set of values its runs have."""
    out = {k: frozenset(final.loc[rows, k].astype(str)) for k in MEASURE_KEYS if k in final}
    if "model.likelihood" in final:
        from ..components import LIKELIHOODS

        kinds = set()
        for name in final.loc[rows, "model.likelihood"].astype(str):
            obj = LIKELIHOODS.get(name) if name in LIKELIHOODS else None
            kinds.add(str(getattr(obj, "binary_only", "unknown")))
        out["model.likelihood"] = frozenset(kinds)
    return out


def higher_is_better(metric: str) -> bool:
    """Log-likelihoods and ELBOs are better higher; a KL, a gap or a standard error lower."""
    return not metric.endswith(("_kl", "_se", "gap"))


def default_metric(final: pd.DataFrame) -> str:
    """The test IW log-likelihood where runs have it, else the final validation ELBO."""
    return "test_iw_ll" if "test_iw_ll" in final and final["test_iw_ll"].notna().any() else "val_elbo"


def _one_k(final: pd.DataFrame, metric: str, k: int | None) -> tuple[pd.DataFrame, int | None]:
    """The frame with ``metric`` only where its k is ``k`` (when given), and the one k of its
    numbers; a VaebenchError when runs' numbers come from different k."""
    col = k_column(metric)
    if col is None or col not in final:
        return final, None
    ks = pd.to_numeric(final[col], errors="coerce")
    if k is not None:
        if not (ks == k).any():
            have = ", ".join(str(int(v)) for v in sorted(ks.dropna().unique())) or "none"
            raise VaebenchError(f"no run has {metric} at k={k} (k here: {have}); run `vaebench eval PATH --k {k}` "
                                f"first or choose one of those")
        final = final.assign(**{metric: final[metric].where(ks == k)})
        return final, k
    used = ks[final[metric].notna() & (final["state"].astype(str) == "done")].dropna().astype(int)
    counts = used.value_counts().sort_index()
    if len(counts) > 1:
        shown = ", ".join(f"k={v:,} in {n} run{'s' * (n > 1)}" for v, n in counts.items())
        raise VaebenchError(f"{metric} comes from different k here ({shown}); compare one k: pass --k "
                            f"(k= in Python), or evaluate every run at one k with `vaebench eval PATH --k K`")
    return final, (int(counts.index[0]) if len(counts) else None)


def compare(runs: str | Path | pd.DataFrame, metric: str = "test_iw_ll", reference: str | None = None,
            k: int | None = None, reduce: str = "last", per_cell: bool = False) -> pd.DataFrame:
    """One row per axis value (per variant in a study with variants): the difference of ``metric``
    to the reference, paired within seed and cell, averaged over the cells of the other axes; its
    95% Student-t interval over seeds, a BCa bootstrap interval (from MIN_BOOTSTRAP seeds up, else
    NaN), the paired t test's p and its Holm adjustment across the table's comparisons, the share of
    pairs where the value beats the reference, and a verdict: better / worse (Holm-adjusted p <
    0.05), no detectable difference, too few seeds (under 3), no paired seeds.

    ``runs`` is a results folder or the frame of ``vaebench.load(path, final=True)``. ``k``: the
    importance samples of the evaluation numbers (default: the one all runs have; numbers of
    different k are refused). ``reduce``: "last" or "best" (load's). ``per_cell=True`` adds a row
    per value and cell of the other axes (``cell`` names it; no verdict, uncorrected intervals).
    The reference: ``reference`` where an axis has it, else the ``baseline`` variant, else the
    study's own base value, else the first value listed (vaebench.report.studies.references).
    ``table.attrs``: metric, k, reduce, correction ("Holm"), confidence.
    """
    final = load_final(runs, k, reduce)
    if metric not in final.columns or final[metric].notna().sum() == 0:
        metrics = sorted(c for c in final.columns if "." not in c and final[c].dtype.kind == "f" and final[c].notna().any())
        hint = "; run `vaebench eval PATH` first" if metric.startswith("test_") else ""
        raise VaebenchError(f"no run has {metric!r}{hint}; metrics here: {', '.join(metrics) or 'none'}")
    final, k = _one_k(final, metric, k)
    better = higher_is_better(metric)
    rows: list[dict] = []
    seen: set[str] = set()
    for view in study_views(final):
        f = view.final
        if "variant" in f and f["variant"].astype(str).nunique() > 1:
            variants = f["variant"].astype(str)
            order = list(dict.fromkeys(variants))  # the study's order
            axes, labels, orders = [("variant",)], {("variant",): variants}, {("variant",): order}
            refs = {("variant",): variant_reference(order, view.base)}
        else:
            axes, refs = view.axes, view.refs
            labels = {a: axis_values(f, a) for a in axes}
            orders = {a: value_order(labels[a]) for a in axes}
        for axis in axes:
            seen.update(orders[axis])
            ref = reference if reference in orders[axis] else refs[axis]
            rows += _axis_rows(view.name, axis, f, labels, orders[axis], ref, metric, better, per_cell)
    if reference is not None and reference not in seen:
        raise VaebenchError(f"no variant or axis value {reference!r} to compare with; "
                            f"values are: {', '.join(sorted(seen)) or 'none (no axes)'}")
    table = pd.DataFrame(rows, columns=COLUMNS)
    tested = (table["cell"] == "") & table["verdict"].isna()
    table["p_adj"] = np.nan
    table.loc[tested, "p_adj"] = holm(table.loc[tested, "p"].to_numpy())
    table.loc[tested, "verdict"] = [verdict(d, p, better) for d, p in zip(table.loc[tested, "diff"],
                                                                          table.loc[tested, "p_adj"])]
    table["verdict"] = table["verdict"].fillna("")
    table = table.assign(metric=metric, k=pd.array([k] * len(table), dtype="Int64"), reduce=reduce)
    table.attrs.update(metric=metric, k=k, reduce=reduce, correction="Holm", confidence=CONFIDENCE,
                       higher_is_better=better, min_bootstrap=MIN_BOOTSTRAP)
    return table


def _axis_rows(study: str, axis: tuple[str, ...], final: pd.DataFrame, labels: dict, order: list[str], ref: str,
               metric: str, better: bool, per_cell: bool) -> list[dict]:
    """The rows of one axis: each value paired with ``ref`` in every (cell of the other axes, seed)
    where both have a done run; a seed's replicate is its mean difference over those cells."""
    others = [a for a in labels if a != axis]
    cells = pd.Series([", ".join(f"{axis_label(o)} = {labels[o][i]}" for o in others) for i in final.index],
                      index=final.index, dtype=object) if others else pd.Series("", index=final.index, dtype=object)
    seeds = final["seed"].fillna(-1).astype(int) if "seed" in final else pd.Series(0, index=final.index)  # -1: no config
    done = (final["state"].astype(str) == "done") & final[metric].notna()
    long = pd.DataFrame({"cell": cells, "seed": seeds, "value": labels[axis], "m": final[metric].astype(float)})[done]
    per = long.groupby(["cell", "seed", "value"], sort=False)["m"].mean().unstack("value")  # (cell, seed) x value
    nothing = pd.Series(np.nan, index=per.index)
    base = per[ref] if ref in per else nothing
    rows, ref_cells = [], set()
    name = axis_label(axis) if axis != ("variant",) else "variant"
    values = labels[axis]
    ref_measures = _measures(final, done & (values == ref))
    for value in order:
        if value == ref:
            rows.append(None)  # filled in below, once the cells every value was paired in are known
            continue
        mine = per[value] if value in per else nothing
        d = (mine - base).dropna()
        measures = _measures(final, done & (values == value))
        differ = [k for k in measures if ref_measures.get(k) and measures[k] and measures[k] != ref_measures[k]]
        used = list(dict.fromkeys(d.index.get_level_values("cell")))
        ref_cells.update(used)
        row = {"study": study, "axis": name, "value": value, "reference": ref, "cell": "",
               "mean": float(mine[mine.index.get_level_values("cell").isin(used)].mean()) if used else np.nan,
               "n_pairs": len(d), "n_cells": len(used)}
        row |= paired_difference(d.groupby(level="seed").mean(), d.to_numpy(), better)
        if differ:  # another quantity: shown, never tested or counted in the correction
            row |= {"p": np.nan, "verdict": f"{NOT_COMPARABLE} ({', '.join(differ)} differ{'s' * (len(differ) == 1)})"}
        rows.append(row)
        if per_cell and len(used) > 1:
            for cell in used:
                dc = d.xs(cell, level="cell")
                rows.append({**row, "cell": cell, "n_pairs": len(dc), "n_cells": 1,
                             "mean": float(mine.xs(cell, level="cell").mean()),
                             **paired_difference(dc.to_numpy(), None, better), "verdict": "", "p": np.nan})
    mine = base[base.index.get_level_values("cell").isin(ref_cells)].dropna()
    reference_row = {"study": study, "axis": name, "value": ref, "reference": ref, "cell": "",
                     "mean": float(mine.mean()) if len(mine) else np.nan, "n_seeds": mine.index.get_level_values(
                         "seed").nunique(), "n_pairs": len(mine), "n_cells": len(ref_cells), "diff": 0.0,
                     "verdict": "reference"}
    return [reference_row if r is None else r for r in rows]


def compare_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it, one string per cell, headers as labels: the difference with
    its 95% t interval in one cell, the bootstrap's where any is shown, share better, Holm p, verdict."""
    out = pd.DataFrame({"study": table["study"], "axis": table["axis"], "value": table["value"]})
    if (table["cell"] != "").any():
        out["cell"] = ["all (averaged)" if c == "" else c for c in table["cell"]]
    out["mean"] = [number(v) for v in table["mean"]]
    out["seeds"] = [str(int(v)) if pd.notna(v) else "-" for v in table["n_seeds"]]
    if (table["n_cells"].fillna(1) > 1).any():
        out["pairs"] = [str(int(v)) if pd.notna(v) else "-" for v in table["n_pairs"]]
        out["cells"] = [str(int(v)) if pd.notna(v) else "-" for v in table["n_cells"]]
    out["difference [95% CI]"] = ["0 (reference)" if v == "reference" else with_interval(d, lo, hi, "{:+.2f}")
                                  for d, lo, hi, v in zip(table["diff"], table["ci_low"], table["ci_high"],
                                                          table["verdict"])]
    if table["boot_low"].notna().any():
        out["bootstrap 95% CI"] = ["-" if pd.isna(a) else f"[{a:+.2f}, {b:+.2f}]"
                                   for a, b in zip(table["boot_low"], table["boot_high"])]
    out["share better"] = [number(v) for v in table["share_better"]]
    out["p (Holm)"] = ["<0.001" if pd.notna(v) and v < 0.001 else number(v, "{:.3f}") for v in table["p_adj"]]
    out["verdict"] = table["verdict"]
    if out["study"].nunique() <= 1:
        out = out.drop(columns=["study"])
    return out


def compare_header(table: pd.DataFrame) -> str:
    """What the table's numbers are, in one line: metric, direction, k, reduction, pairing, correction."""
    metric = table.attrs.get("metric") or (str(table["metric"].iloc[0]) if len(table) else "")
    k = table.attrs.get("k", table["k"].dropna().iloc[0] if len(table) and table["k"].notna().any() else None)
    reduce = table.attrs.get("reduce") or (str(table["reduce"].iloc[0]) if len(table) else "last")
    tested = int(((table["cell"] == "") & ~table["verdict"].isin(["reference", "too few seeds", "no paired seeds"])
                  & ~table["verdict"].astype(str).str.startswith(NOT_COMPARABLE)).sum())
    k_text = f", k = {int(k):,}" if k is not None and pd.notna(k) else ""
    return (f"{metric_label(metric)} ({'higher' if higher_is_better(metric) else 'lower'} is better; {reduce} values"
            f"{k_text}) minus the reference's, paired by seed within each cell of the other axes; 95% Student-t "
            f"intervals over seeds; verdicts at Holm-adjusted p < {ALPHA:.2f} across the {tested} comparisons "
            f"of this table")


def compare_notes(table: pd.DataFrame) -> list[str]:
    """Footnotes: why an interval is missing, what the per-cell rows are."""
    notes = []
    testable = table[(table["cell"] == "") & (table["verdict"] != "reference")]
    if len(testable) and testable["boot_low"].isna().any():
        notes.append(f"Bootstrap (BCa) intervals need at least {MIN_BOOTSTRAP} seeds and are not shown with fewer; "
                     f"with under {MIN_SEEDS} seeds no interval is.")
    if table["verdict"].astype(str).str.startswith(NOT_COMPARABLE).any():
        notes.append("Not comparable: the value's log-likelihoods are of other images (data set, binarization) or of "
                     "another kind (a density on [0, 1], not a probability of binary pixels) than the reference's; "
                     "the difference is shown, not tested.")
    if (table["cell"] != "").any():
        notes.append("Per-cell rows: the difference in one cell of the other axes, over its seeds; uncorrected, "
                     "no verdict.")
    return notes


def compare_text(table: pd.DataFrame, format: str = "text") -> str:
    """compare's table as text, markdown, latex (booktabs), html (with its header line and
    footnotes) or csv (the numbers, each in its own column)."""
    check_format(format)
    return render(compare_cells(table), format, compare_header(table), compare_notes(table), numbers=table)
