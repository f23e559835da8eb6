"""vaebench.compare: paired differences by seed, checked against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import vaebench
from vaebench.report.compare import compare_text
from vaebench.report.figures import plot_forest, save

REF = {0: -31.0, 1: -31.6, 2: -30.8, 3: -31.3}  # k=1, the reference
DIFF_K2 = {0: 0.9, 1: 1.2, 2: 0.7, 3: 1.1}  # a clear improvement
NOISE_K10 = {1: 0.4, 2: -0.5, 3: 0.3}  # seed 7 has no reference run: not paired


def frame(shift_k10: float = 0.0) -> pd.DataFrame:
    rows = []
    for s, v in REF.items():
        rows.append({"k": 1, "seed": s, "v": v})
        rows.append({"k": 2, "seed": s, "v": v + DIFF_K2[s]})
    rows.append({"k": 5, "seed": 0, "v": REF[0] - 2.0})  # one seed only
    for s, d in NOISE_K10.items():
        rows.append({"k": 10, "seed": s, "v": REF[s] + d + shift_k10})
    rows.append({"k": 10, "seed": 7, "v": -20.0})
    df = pd.DataFrame(rows)
    return pd.DataFrame({"run": [f"r{i}" for i in range(len(df))], "study": "s", "state": "done",
                         "objective.k": df["k"], "seed": df["seed"], "test_iw_ll": df["v"]})


def by_value(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["value"]: r for _, r in table.iterrows()}


def test_paired_differences_match_a_computation_by_hand():
    t = by_value(vaebench.compare(frame(), reference="1"))
    assert t["1"]["verdict"] == "reference" and t["1"]["n_seeds"] == 4
    d = np.array(list(DIFF_K2.values()))
    k2 = t["2"]
    assert k2["n_seeds"] == 4 and math.isclose(k2["diff"], d.mean(), abs_tol=1e-12)
    half = 3.182446305284263 * d.std(ddof=1) / 2  # t_{0.975,3} * sd / sqrt(4)
    assert math.isclose(k2["ci_low"], d.mean() - half, rel_tol=1e-9)
    assert math.isclose(k2["ci_high"], d.mean() + half, rel_tol=1e-9)
    assert k2["boot_low"] <= k2["diff"] <= k2["boot_high"]  # the bootstrap contains the t interval's centre
    assert k2["p_improve"] == 1.0 and k2["verdict"] == "better"
    assert math.isclose(k2["mean"], np.mean([REF[s] + DIFF_K2[s] for s in REF]))
    k5 = t["5"]  # one seed: a difference but no interval
    assert k5["n_seeds"] == 1 and math.isclose(k5["diff"], -2.0) and k5["verdict"] == "too few seeds"
    assert np.isnan(k5["ci_low"]) and k5["p_improve"] == 0.0
    k10 = t["10"]  # seed 7 is not paired
    assert k10["n_seeds"] == 3 and math.isclose(k10["diff"], np.mean(list(NOISE_K10.values())))
    assert k10["verdict"] == "no detectable difference" and math.isclose(k10["p_improve"], 2 / 3)
    assert k10["boot_low"] <= k10["diff"] <= k10["boot_high"]


def test_the_verdict_flips_when_a_known_offset_is_added():
    assert by_value(vaebench.compare(frame(), reference="1"))["10"]["verdict"] == "no detectable difference"
    assert by_value(vaebench.compare(frame(shift_k10=3.0), reference="1"))["10"]["verdict"] == "better"
    assert by_value(vaebench.compare(frame(shift_k10=-3.0), reference="1"))["10"]["verdict"] == "worse"


def test_variants_are_compared_with_the_baseline_in_study_order():
    f = frame()
    f = f[f["objective.k"].isin([1, 2])].copy()
    f["variant"] = pd.Categorical(np.where(f["objective.k"] == 1, "baseline", "k2"), categories=["baseline", "k2"])
    t = vaebench.compare(f)
    assert list(t["value"]) == ["baseline", "k2"] and set(t["axis"]) == {"variant"}
    assert t["reference"].eq("baseline").all() and t["verdict"].iloc[1] == "better"
    text = compare_text(t).to_string()
    assert "too few" not in text and "better" in text


def test_a_missing_metric_is_one_clear_error():
    with pytest.raises(vaebench.errors.VaebenchError, match="vaebench eval"):
        vaebench.compare(frame().drop(columns=["test_iw_ll"]))


@pytest.mark.parametrize("values", [2, 5])
def test_forest_plot_for_a_two_and_a_five_value_axis(tmp_path, values):
    f = frame(shift_k10=1.5)
    keep = [1, 2] if values == 2 else [1, 2, 5, 10]
    f = f[f["objective.k"].isin(keep)]
    if values == 5:  # a fifth value: a clearly worse one
        extra = f[f["objective.k"] == 1].assign(**{"objective.k": 20, "test_iw_ll": lambda d: d["test_iw_ll"] - 1.5})
        f = pd.concat([f, extra.assign(run=lambda d: d["run"] + "x")], ignore_index=True)
    t = vaebench.compare(f, reference="1")
    assert len(t) == values
    names = save(plot_forest(t, title=f"forest plot, {values} values"), tmp_path / f"forest{values}", ("png",))
    assert (tmp_path / names[0]).stat().st_size > 5_000


def test_a_reports_study_table_is_kept_until_the_study_numbers_change(tmp_path, monkeypatch):
    """The report keeps each study's comparison as parquet under a hash of its numbers: a rerun reads
    it back (no bootstrap, no scipy.stats import) and a changed number computes it anew."""
    from vaebench.report import build
    from vaebench.report.studies import study_views

    calls = []
    real = build.compare
    monkeypatch.setattr(build, "compare", lambda *a, **k: calls.append(1) or real(*a, **k))
    [view] = study_views(frame())
    first = build.study_comparison(view, tmp_path)
    again = build.study_comparison(view, tmp_path)
    assert len(calls) == 1 and again.equals(first) and again.equals(real(view.final, "test_iw_ll"))
    [changed] = study_views(frame(shift_k10=3.0))
    assert build.study_comparison(changed, tmp_path).set_index("value").loc["10", "verdict"] == "better"
    assert len(calls) == 2 and len(list(tmp_path.glob("compare-*.parquet"))) == 1
    (next(tmp_path.glob("compare-*.parquet"))).write_bytes(b"not parquet")  # a damaged cache: computed again
    assert build.study_comparison(changed, tmp_path).equals(real(changed.final, "test_iw_ll")) and len(calls) == 3
