"""vaebench.compare: paired differences by seed and cell, checked against numbers computed by hand;
Holm's verdicts, one k per table, the reference rule, and the tables for papers."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

import vaebench
from vaebench.errors import VaebenchError
from vaebench.report.compare import compare_text
from vaebench.report.figures import plot_forest, save
from vaebench.report.studies import references, study_views, summary, summary_text
from vaebench.results import axis_label

from conftest import invoke, one_line_error

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
    assert np.isnan(k2["boot_low"]) and np.isnan(k2["boot_high"])  # 4 seeds: too few to bootstrap
    assert math.isclose(k2["p"], stats.ttest_1samp(d, 0).pvalue, rel_tol=1e-9)
    assert k2["share_better"] == 1.0 and k2["verdict"] == "better" and k2["n_pairs"] == 4 and k2["n_cells"] == 1
    assert math.isclose(k2["mean"], np.mean([REF[s] + DIFF_K2[s] for s in REF]))
    k5 = t["5"]  # one seed: a difference but no interval
    assert k5["n_seeds"] == 1 and math.isclose(k5["diff"], -2.0) and k5["verdict"] == "too few seeds"
    assert np.isnan(k5["ci_low"]) and k5["share_better"] == 0.0 and np.isnan(k5["p_adj"])
    k10 = t["10"]  # seed 7 is not paired
    assert k10["n_seeds"] == 3 and math.isclose(k10["diff"], np.mean(list(NOISE_K10.values())))
    assert k10["verdict"] == "no detectable difference" and math.isclose(k10["share_better"], 2 / 3)
    p = [k2["p"], stats.ttest_1samp(list(NOISE_K10.values()), 0).pvalue]  # two tested rows: Holm by hand
    assert math.isclose(k2["p_adj"], 2 * min(p)) and math.isclose(k10["p_adj"], max(2 * min(p), max(p)))


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
    text = compare_text(t)
    assert "too few" not in text and "better" in text and "Holm" in text.splitlines()[0]


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


# A crossed grid K x KL x 4 seeds with known cell effects: K = 2 gains 0.5 nats with the analytic KL
# and 1.5 with the Monte Carlo one; K = 5 gains 2 in both; Monte Carlo KL costs 0.3; plus noise.
SEEDS = [0, 1, 2, 3]
KL_COST = {"analytic": 0.0, "monte_carlo": -0.3}
K_GAIN = {(1, "analytic"): 0.0, (1, "monte_carlo"): 0.0, (2, "analytic"): 0.5, (2, "monte_carlo"): 1.5,
          (5, "analytic"): 2.0, (5, "monte_carlo"): 2.0}
MISSING = (5, "monte_carlo", 3)  # one run failed: its pairs are absent, every other pair is used


def crossed() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for k in (1, 2, 5):
        for kl in KL_COST:
            for s in SEEDS:
                value = -30.0 - 0.4 * s + KL_COST[kl] + K_GAIN[(k, kl)] + rng.normal(0, 0.2)
                state = "failed" if (k, kl, s) == MISSING else "done"
                rows.append({"objective.k": k, "objective.kl": kl, "seed": s, "state": state, "test_iw_ll": value})
    df = pd.DataFrame(rows)
    return df.assign(run=[f"r{i}" for i in range(len(df))], study="grid")


def value_at(df: pd.DataFrame, k, kl, s) -> float:
    row = df[(df["objective.k"] == k) & (df["objective.kl"] == kl) & (df["seed"] == s) & (df["state"] == "done")]
    return float(row["test_iw_ll"].iloc[0]) if len(row) else math.nan


def test_a_crossed_grid_pairs_every_cell_and_averages_over_cells_within_each_seed():
    df = crossed()
    t = vaebench.compare(df, per_cell=True)
    ks = t[(t["axis"] == axis_label("objective.k")) & (t["cell"] == "")].set_index("value")
    assert ks.loc["1", "verdict"] == "reference"  # no base recorded: the first value listed
    for k, pairs in ((2, 8), (5, 7)):
        d = {(kl, s): value_at(df, k, kl, s) - value_at(df, 1, kl, s) for kl in KL_COST for s in SEEDS}
        d = {c: v for c, v in d.items() if not math.isnan(v)}
        per_seed = np.array([np.mean([v for (kl, s), v in d.items() if s == seed]) for seed in SEEDS])
        half = stats.t.ppf(0.975, 3) * per_seed.std(ddof=1) / 2  # t over the 4 seeds, not the pairs
        row = ks.loc[str(k)]
        assert row["n_pairs"] == len(d) == pairs and row["n_cells"] == 2 and row["n_seeds"] == 4
        assert math.isclose(row["diff"], per_seed.mean(), rel_tol=1e-12)
        assert math.isclose(row["ci_low"], per_seed.mean() - half, rel_tol=1e-9)
        assert math.isclose(row["ci_high"], per_seed.mean() + half, rel_tol=1e-9)
        assert math.isclose(row["p"], stats.ttest_1samp(per_seed, 0).pvalue, rel_tol=1e-9)
        assert math.isclose(row["share_better"], np.mean([v > 0 for v in d.values()]))
    assert math.isclose(ks.loc["2", "diff"], 1.0, abs_tol=0.3)  # (0.5 + 1.5) / 2: both cells, not one
    cells = t[(t["axis"] == axis_label("objective.k")) & (t["value"] == "2") & (t["cell"] != "")]
    label = axis_label("objective.kl")
    assert list(cells["cell"]) == [f"{label} = analytic", f"{label} = monte_carlo"]
    for kl, (_, row) in zip(KL_COST, cells.iterrows()):
        d = np.array([value_at(df, 2, kl, s) - value_at(df, 1, kl, s) for s in SEEDS])
        assert math.isclose(row["diff"], d.mean()) and row["n_pairs"] == 4 and row["verdict"] == ""
        assert math.isclose(row["ci_high"] - row["diff"], stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2, rel_tol=1e-9)
    assert math.isclose(cells["diff"].iloc[1] - cells["diff"].iloc[0], 1.0, abs_tol=0.4)  # the interaction shows
    kl = t[(t["axis"] == label) & (t["cell"] == "")].set_index("value")
    assert kl.loc["analytic", "verdict"] == "reference" and kl.loc["monte_carlo", "n_pairs"] == 11
    assert kl.loc["monte_carlo", "n_cells"] == 3
    assert not (t["cell"] != "").any() or t.loc[t["cell"] != "", "p_adj"].isna().all()  # cells: not in Holm's family


def test_a_one_at_a_time_study_gives_the_numbers_of_its_slice():
    """Runs varying one axis around a base: each value pairs with the base in the one cell it has."""
    base = {"objective.k": 1, "objective.kl": "analytic"}
    rows = []
    for change in ({}, {"objective.k": 2}, {"objective.kl": "monte_carlo"}):
        for s in SEEDS:
            cfg = {**base, **change}
            rows.append({**cfg, "seed": s, "state": "done",
                         "test_iw_ll": -30 - 0.4 * s + (0.7 + 0.1 * s if "objective.k" in change else 0)})
    df = pd.DataFrame(rows).assign(run=lambda d: [f"r{i}" for i in range(len(d))], study="one")
    t = vaebench.compare(df).set_index("value")
    assert t.loc["1", "verdict"] == "reference" and t.loc["analytic", "verdict"] == "reference"
    assert t.loc["2", "n_pairs"] == 4 and t.loc["2", "n_cells"] == 1
    assert math.isclose(t.loc["2", "diff"], np.mean([0.7 + 0.1 * s for s in SEEDS]))
    assert t.loc["monte_carlo", "n_pairs"] == 4 and math.isclose(t.loc["monte_carlo", "diff"], 0, abs_tol=1e-12)


def test_holm_adjusted_verdicts_on_a_constructed_table():
    diffs = {"b": [2.1, 1.9, 2.4, 2.0, 2.2], "c": [0.6, 1.0, 0.05, 0.8, 0.2], "d": [0.3, -0.4, 0.2, -0.1, 0.1]}
    rows = [{"objective.kl": "a", "seed": s, "state": "done", "test_iw_ll": -30.0 - s} for s in range(5)]
    rows += [{"objective.kl": v, "seed": s, "state": "done", "test_iw_ll": -30.0 - s + x}
             for v, d in diffs.items() for s, x in enumerate(d)]
    df = pd.DataFrame(rows).assign(run=lambda d: [f"r{i}" for i in range(len(d))], study="h")
    table = vaebench.compare(df)
    t = table.set_index("value")
    p = {v: stats.ttest_1samp(d, 0).pvalue for v, d in diffs.items()}
    assert p["c"] < 0.05 < 2 * p["c"]  # c passes alone, not after the correction
    # Holm by hand: sorted p_b < p_c < p_d, multiplied by 3, 2, 1, kept monotone
    adj = {"b": 3 * p["b"]}
    adj["c"] = max(adj["b"], 2 * p["c"])
    adj["d"] = max(adj["c"], p["d"])
    for v in diffs:
        assert math.isclose(t.loc[v, "p"], p[v], rel_tol=1e-9) and math.isclose(t.loc[v, "p_adj"], adj[v], rel_tol=1e-9)
    assert t.loc["c", "ci_low"] > 0  # its uncorrected interval excludes 0, yet:
    assert [t.loc[v, "verdict"] for v in "bcd"] == ["better", "no detectable difference", "no detectable difference"]
    assert table.attrs["correction"] == "Holm" and "Holm" in compare_text(table).splitlines()[0]


def test_the_bootstrap_is_bca_from_eight_seeds_up():
    rng = np.random.default_rng(0)
    d = rng.normal(0.5, 0.3, size=8)
    rows = [{"objective.k": k, "seed": s, "state": "done", "test_iw_ll": -30.0 + (d[s] if k == 2 else 0)}
            for k in (1, 2) for s in range(8)]
    df = pd.DataFrame(rows).assign(run=lambda x: [f"r{i}" for i in range(len(x))], study="b")
    row = vaebench.compare(df).set_index("value").loc["2"]
    ci = stats.bootstrap((d,), np.mean, method="BCa", n_resamples=9_999, random_state=np.random.default_rng(0))
    assert math.isclose(row["boot_low"], ci.confidence_interval.low) and math.isclose(row["boot_high"], ci.confidence_interval.high)
    assert "bootstrap 95% CI" in compare_text(vaebench.compare(df)) and "need at least" not in compare_text(vaebench.compare(df))
    assert "need at least 8 seeds" in compare_text(vaebench.compare(frame(), reference="1"))


def test_numbers_of_different_k_are_refused_and_k_picks_one():
    f = frame().assign(test_k=250)
    f.loc[f.index[3], "test_k"] = 1000
    with pytest.raises(VaebenchError, match=r"different k here \(k=250 in 12 runs, k=1,000 in 1 run\)") as e:
        vaebench.compare(f, reference="1")
    assert "\n" not in str(e.value) and "--k" in str(e.value)
    t = vaebench.compare(f, reference="1", k=250)
    assert t["k"].eq(250).all() and t.attrs["k"] == 250 and "k = 250" in compare_text(t).splitlines()[0]
    assert by_value(t)["2"]["n_pairs"] == 3  # the k=1000 run is not a k=250 number
    with pytest.raises(VaebenchError, match="no run has test_iw_ll at k=5"):
        vaebench.compare(f, k=5)
    assert vaebench.compare(f.drop(columns=["test_iw_ll"]).assign(val_elbo=f["test_iw_ll"]), metric="val_elbo",
                            reference="1")["k"].isna().all()  # a training term has no k


def test_the_reduction_is_the_frames_and_stated():
    f = frame()
    f.attrs["reduce"] = "best"
    t = vaebench.compare(f, reference="1", reduce="best")
    assert t["reduce"].eq("best").all() and "best values" in compare_text(t).splitlines()[0]
    with pytest.raises(VaebenchError, match="reduce='best'"):
        vaebench.compare(f, reference="1")
    assert "last values" in compare_text(vaebench.compare(frame(), reference="1")).splitlines()[0]


@pytest.mark.parametrize("fmt", ["text", "markdown", "latex", "csv", "html"])
def test_every_table_format_parses(fmt):
    t = vaebench.compare(crossed(), per_cell=True)
    out = compare_text(t, fmt)
    if fmt == "csv":
        back = pd.read_csv(io.StringIO(out))
        assert list(back.columns[:3]) == ["study", "axis", "value"] and len(back) == len(t)
        assert {"diff", "ci_low", "ci_high", "k", "p_adj", "share_better"} <= set(back.columns)
        assert np.allclose(back["diff"], t["diff"], equal_nan=True)
        return
    if fmt == "markdown":
        lines = out.splitlines()
        head = next(i for i, line in enumerate(lines) if line.startswith("| "))
        assert "| difference [95% CI] |" in lines[head] and set(lines[head + 1]) <= set("|-")
        assert len([x for x in lines if x.startswith("| ")]) == len(t) + 1
    if fmt == "latex":
        assert "\\begin{tabular}" in out and "\\toprule" in out and "\\bottomrule" in out
        assert "test\\_iw\\_ll" not in out and "95\\% CI" in out and "$<$ 0.05" in out  # escaped, labels
    if fmt == "html":
        assert out.count("<tr") == len(t) + 1 and "<th>difference [95% CI]</th>" in out
    if fmt in ("text", "markdown"):
        row = t[(t["value"] == "2") & (t["cell"] == "")].iloc[0]
        assert f"{row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" in out
    assert "KL estimator" in out and "objective.kl" not in out  # labels, not raw keys


def test_summary_tables_state_k_and_parse():
    f = frame().assign(test_k=250, val_elbo=lambda d: d["test_iw_ll"] - 1)
    table = summary(f)
    assert table.attrs["k"] == {"test": 250} and table["test_k"].eq(250).all()
    assert "test numbers at k = 250" in summary_text(table).splitlines()[0]
    assert pd.read_csv(io.StringIO(summary_text(table, "csv")))["test_iw_ll_mean"].notna().all()
    assert "\\begin{tabular}" in summary_text(table, "latex")
    md = summary_text(table, "markdown")
    assert "| study | config | K (samples) |" in md and "test IW log p(x)" in md


PLUGIN = '''
import torch
from torch import nn

from vaebench.components import ACTIVATIONS


@ACTIVATIONS.register("aaa_act")
class AaaAct(nn.Module):
    """tanh under a name that sorts before it."""

    def forward(self, x):
        return torch.tanh(x)
'''


@pytest.fixture(scope="module")
def act_study(tmp_path_factory):
    """Two tiny runs, encoder activation tanh (the base, listed first) and aaa_act, not evaluated."""
    tmp = tmp_path_factory.mktemp("act")
    (tmp / "aaa_plugin.py").write_text(PLUGIN)
    study = {"name": "act", "imports": ["aaa_plugin.py"],
             "data": {"per_class": 20, "val_size": 40}, "eval": {"enabled": False},
             "model": {"encoder": {"hidden": [16], "activation": "tanh"}, "decoder": {"hidden": [16]}},
             "train": {"steps": 40, "batch_size": 20, "eval_every": 20, "flush_every": 20, "checkpoint_every": 40,
                       "threads": 1},
             "grid": {"model.encoder.activation": ["tanh", "aaa_act"]}}
    (tmp / "act.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    assert not vaebench.run_study(tmp / "act.yaml", out=tmp / "results", jobs=1, progress=False).failed
    return tmp / "results" / "act"


def test_the_reference_is_the_base_value_then_the_first_listed_never_alphabetical(act_study):
    grid = yaml.safe_load((act_study / "grid.yaml").read_text())
    assert grid["base"] == {"model.encoder.activation": "tanh"}
    t = vaebench.compare(act_study, metric="val_elbo")
    assert t["reference"].eq("tanh").all() and t.set_index("value").loc["tanh", "verdict"] == "reference"
    axis = [("model.encoder.activation",)]
    final = vaebench.load(act_study, final=True)
    listed_last = final.iloc[::-1]  # aaa_act listed first, the base still tanh
    assert references(listed_last, axis, {"model.encoder.activation": "tanh"}) == {axis[0]: "tanh"}
    assert references(listed_last, axis, {}) == {axis[0]: "aaa_act"}  # no base: the first listed
    (act_study / "grid.yaml").write_text(yaml.safe_dump({k: v for k, v in grid.items() if k != "base"}))
    old = vaebench.load(act_study, final=True)  # a grid.yaml from before base: the first listed, tanh
    assert study_views(old)[0].refs == {axis[0]: "tanh"} and vaebench.compare(old, metric="val_elbo")[
        "reference"].eq("tanh").all()
    (act_study / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))


def test_a_mixed_k_comparison_is_one_line_on_the_command_line(act_study):
    # in-process: act_study trained here, so its plugin is imported in this process already
    a, b = sorted(p for p in act_study.iterdir() if p.is_dir())
    for run_dir, k in ((a, 2), (b, 3)):
        r = invoke("eval", str(run_dir), "--k", str(k), "--trust")
        assert r.returncode == 0, r.stderr
    one_line_error(invoke("compare", str(act_study)), "different k", "k=2 in 1 run", "k=3 in 1 run", "--k")
    ok = invoke("compare", str(act_study), "--k", "2", "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    assert pd.read_csv(io.StringIO(ok.stdout))["k"].eq(2).all()
    s = invoke("summary", str(act_study), "--format", "markdown")
    assert s.returncode == 0 and "| config |" in s.stdout, s.stderr


def test_log_likelihoods_of_other_images_or_of_a_density_are_shown_not_tested():
    """A variant on grey levels with a density (continuous_bernoulli, binarize none) measures another
    quantity than the Bernoulli baseline on binary pixels: no verdict, out of the Holm family."""
    rows = []
    for s in range(4):
        rows += [("baseline", s, -30.0 + 0.1 * s, "threshold", "bernoulli"),
                 ("k5", s, -29.5 + 0.1 * s + 0.01 * (s % 2), "threshold", "bernoulli"),
                 ("cb", s, 900.0 + s, "none", "continuous_bernoulli"),
                 ("cb_binary", s, 50.0 + s, "threshold", "continuous_bernoulli")]
    df = pd.DataFrame(rows, columns=["variant", "seed", "test_iw_ll", "data.binarize", "model.likelihood"])
    df["variant"] = pd.Categorical(df["variant"], categories=["baseline", "k5", "cb", "cb_binary"])
    f = df.assign(run=[f"r{i}" for i in range(len(df))], study="s", state="done")
    t = by_value(vaebench.compare(f))
    assert t["k5"]["verdict"] == "better"
    assert t["cb"]["verdict"] == "not comparable (data.binarize, model.likelihood differ)"
    assert t["cb_binary"]["verdict"] == "not comparable (model.likelihood differs)"
    assert np.isnan(t["cb"]["p_adj"]) and t["cb"]["diff"] > 900
    text = compare_text(vaebench.compare(f))
    assert "across the 1 comparisons" in text.splitlines()[0] and "Not comparable" in text
