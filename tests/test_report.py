"""The report: every figure for a run and a study, the summary's numbers, failed and partial runs,
idempotent reruns, and a report that never trains or touches a run folder."""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

import vaebench
from vaebench import runs
from vaebench.report import build_report, plot_curves_by_value, plot_final_by_value, plot_terms, plot_train_val
from vaebench.report.build import RUN_FIGURES
from vaebench.report.figures import curve_bands
from vaebench.report.stats import mean_ci, t975

from conftest import REPO, invoke, one_line_error

TINY = {"data": {"per_class": 20, "val_size": 40}, "eval": {"k": 4},  # the whole test split, cheaply
        "train": {"steps": 200, "batch_size": 20, "eval_every": 25, "flush_every": 50, "checkpoint_every": 100,
                  "threads": 1}}


def write(tmp: Path, name: str, **study) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **TINY, **study}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A single run and a 2-axis x 2-seed study (8 runs), a few hundred updates each."""
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "results"
    vaebench.run_study(write(tmp, "single"), out=out, jobs=1, progress=False)
    study = write(tmp, "st", grid={"objective.kl": ["analytic", "monte_carlo"], "objective.k": [1, 2]}, seeds=2)
    res = vaebench.run_study(study, out=out, jobs=1, progress=False)
    assert not res.failed
    return out


def figure_files(report_dir: Path) -> set[str]:
    return {p.relative_to(report_dir).as_posix() for p in report_dir.rglob("*") if p.suffix in (".png", ".svg", ".pdf")}


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and "report" not in p.relative_to(root).parts[:1]}


@pytest.mark.slow
def test_every_figure_of_a_study_and_its_runs(results, tmp_path):
    out = tmp_path / "rep"
    rep = build_report(results, out=out)
    files = figure_files(out)
    labels = list(vaebench.load(results, final=True)["run"])
    assert len(labels) == 9
    for label in labels:
        for name in RUN_FIGURES:
            for fmt in ("png", "svg"):
                assert f"runs/{label}/{name}.{fmt}" in files
            assert f"runs/{label}/{name}.pdf" not in files  # run PDFs on request (--formats)
    for axis in ("objective.k", "objective.kl"):
        for kind in ("final", "curves"):
            assert {f"studies/st/{kind}-{axis}.{fmt}" for fmt in ("png", "svg", "pdf")} <= files
    assert "studies/st/compare.pdf" in files
    index = rep.index.read_text()
    for f in files:
        if f.endswith(".png"):
            assert f.replace(",", "%2C").replace("=", "%3D") in index or f in index
    assert (out / "summary.csv").is_file() and "| study |" in (out / "summary.md").read_text()
    assert not rep.missing


def test_a_single_run_folder_reports_beside_itself(results):
    run_dir = runs.find_runs(results / "single")[0]
    rep = build_report(run_dir)
    assert rep.out == run_dir.parent / f"{run_dir.name}-report"
    assert {f"runs/{run_dir.name}/{n}.png" for n in RUN_FIGURES} <= figure_files(rep.out)
    assert runs.find_runs(results / "single") == [run_dir]  # the report folder is not a run


@pytest.mark.slow
def test_summary_equals_a_pandas_computation_from_load(results, tmp_path):
    table = vaebench.summary(results / "st")
    final = vaebench.load(results / "st", final=True)
    final["gap"] = final["train_elbo"] - final["val_elbo"]
    by = final.groupby(["objective.kl", "objective.k"])
    assert len(table) == by.ngroups == 4
    for (kl, k), g in by:
        row = table[(table["objective.kl"] == kl) & (table["objective.k"] == str(k))].iloc[0]
        assert row["n_seeds"] == len(g) == 2 and row["n_failed"] == 0
        for metric in ("val_elbo", "val_rec", "val_kl", "gap"):
            assert row[f"{metric}_mean"] == pytest.approx(g[metric].mean(), rel=1e-12)
            half = t975(len(g) - 1) * g[metric].std(ddof=1) / math.sqrt(len(g))
            assert row[f"{metric}_ci95"] == pytest.approx(half, rel=1e-9)
    csv = pd.read_csv(build_report(results / "st", out=tmp_path / "r", jobs=1).out / "summary.csv")
    assert csv["val_elbo_mean"].tolist() == pytest.approx(table["val_elbo_mean"].tolist())


def test_t_quantiles_and_mean_ci():
    # scipy.stats against the printed table (Student t, two-sided 95%)
    assert t975(1) == pytest.approx(12.706, abs=1e-3) and t975(30) == pytest.approx(2.042, abs=1e-3)
    assert t975(31) == pytest.approx(2.0395, abs=2e-4) and t975(1000) == pytest.approx(1.9623, abs=2e-4)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_ci([5.0])[1]) and math.isnan(mean_ci([])[0])


@pytest.mark.slow
def test_failed_and_partial_runs_are_reported_not_fatal(tmp_path, monkeypatch):
    from vaebench.training import trainer

    study = write(tmp_path, "mixed", variants={"good": {}, "bad": {"optim.name": "sgd", "optim.lr": 1.0e6}}, seeds=2)
    out = tmp_path / "results"
    assert len(vaebench.run_study(study, out=out, jobs=1, progress=False).failed) == 2
    study = write(tmp_path, "mixed", variants={"good": {}, "bad": {"optim.name": "sgd", "optim.lr": 1.0e6},
                                               "cut": {"optim.lr": 2.0e-3}}, seeds=2)
    save = trainer.Trainer.save_checkpoint

    def save_then_crash(self, stack=None):  # a real cut: the run dies right after its first checkpoint
        save(self, stack)
        if self.cfg.optim.lr == 2e-3:
            raise KeyboardInterrupt
    monkeypatch.setattr(trainer.Trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        vaebench.run_study(study, out=out, jobs=1, progress=False)
    monkeypatch.undo()

    before = snapshot(out)
    rep = build_report(out)
    assert snapshot(out) == before
    table = rep.summary.set_index("config")  # rows named by their variants
    assert list(table.index) == ["good", "bad", "cut"]
    assert table.loc["bad", "n_failed"] == 2 and table.loc["bad", "n_seeds"] == 0
    # one cut run, or both seeds when they trained as one stack
    assert table.loc["cut", "n_unfinished"] in (1, 2) and table.loc["cut", "n_seeds"] == 0
    assert table.loc["good", "n_seeds"] == 2
    index = rep.index.read_text()
    assert "What is missing" in index and "NaN" in index and "partial" in index
    partial = next(label for label in vaebench.load(out, final=True)["run"] if "cut" in label)
    files = figure_files(rep.out)
    assert f"runs/{partial}/terms.png" in files and f"runs/{partial}/recon_val.png" in files  # from update 100
    failed = [label for label, why in rep.missing.items() if "bad" in label]
    assert len(failed) == 2 and all("no checkpoint" in why["samples"] for label, why in rep.missing.items()
                                    if label in failed)


@pytest.mark.slow
def test_rerun_redraws_only_what_changed_and_never_touches_runs(results, tmp_path):
    out = tmp_path / "rep"
    before = snapshot(results)
    first = build_report(results, out=out)
    assert snapshot(results) == before  # nothing written in any run folder
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    second = build_report(results, out=out)
    assert second.drawn == [] and len(second.reused) == len(first.drawn) - 1  # every run; the study aside
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == times

    changed = runs.find_runs(results / "st")[0]
    runs.write_json(changed / runs.EVAL, {"test": {"iw_ll": -30.0}})
    try:
        third = build_report(results, out=out)
    finally:
        (changed / runs.EVAL).unlink()
    label = changed.relative_to(results).as_posix()
    assert third.drawn == [label, "study st"]


def test_a_rerun_draws_nothing_until_a_run_changes(results, tmp_path):
    """The rerun path on one run (fast): nothing changed draws nothing and rewrites no figure; new
    metrics redraw that run's figures from them."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run_dir = tmp_path / "run"
    shutil.copytree(runs.find_runs(results / "single")[0], run_dir)
    out = tmp_path / "r"
    first = build_report(run_dir, out=out)
    assert len(first.drawn) == 1 and set(first.seconds) == {"read", "draw", "write"}
    pngs = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.png")}
    again = build_report(run_dir, out=out)
    assert again.drawn == [] and again.reused == first.drawn
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.png")} == pngs

    table = pq.read_table(run_dir / runs.METRICS)  # the run's KL doubled, as if it had trained on
    table = table.set_column(table.schema.get_field_index("kl"), "kl", pc.multiply(table["kl"], 2.0))
    pq.write_table(table, run_dir / runs.METRICS)
    changed = build_report(run_dir, out=out)
    assert changed.drawn == first.drawn
    terms = out / "runs" / first.drawn[0] / "terms.png"
    assert terms.read_bytes() != pngs[terms][1]


def test_curve_bands_are_mean_ci_per_value_and_step():
    df = pd.DataFrame({"split": "val", "term": "elbo", "step": [1, 1, 1, 2, 2, 3, 4, 4],
                       "run": list("abcabaab"), "value": [1.0, 2.0, 4.0, float("nan"), 3.0, 5.0, float("inf"), 2.0],
                       "objective.k": [1, 1, 1, 1, 1, 1, 2, 2]})
    bands = curve_bands(df, "objective.k")
    assert list(bands["value"]) == ["1", "1", "1", "2"] and list(bands["runs"]) == [3, 2, 1, 2]
    for (_, b), vals in zip(bands.iterrows(), ([1.0, 2.0, 4.0], [float("nan"), 3.0], [5.0], [float("inf"), 2.0])):
        mean, ci = mean_ci(vals)
        assert b["mean"] == pytest.approx(mean) and (b["ci"] == pytest.approx(ci) or math.isnan(ci) and math.isnan(b["ci"]))


@pytest.mark.slow
def test_the_report_never_imports_the_trainer(results, tmp_path):
    code = ("import sys; from vaebench.report import build_report; "
            f"build_report({str(results)!r}, out={str(tmp_path / 'r')!r}, jobs=1); "  # drawn in this process too
            "assert 'vaebench.training' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('vaebench'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_plot_functions_take_dataframes_from_load(results):
    df = vaebench.load(results / "st")
    one = df[df["run"] == df["run"].iloc[0]]
    assert isinstance(plot_terms(one), Figure) and isinstance(plot_train_val(one), Figure)
    with pytest.raises(ValueError, match="one run"):
        plot_terms(df)
    only_k1 = df[df["objective.k"] == 1]
    assert isinstance(plot_curves_by_value(only_k1, "objective.kl"), Figure)
    final = vaebench.load(results / "st", final=True)
    fig = plot_final_by_value(final, ["objective.kl", "objective.k"])
    assert len(fig.axes) == 3


@pytest.mark.slow
def test_cli_report_and_its_errors(results, tmp_path):
    r = invoke("report", str(results / "st"), "--out", str(tmp_path / "r"), "-j", "1")
    assert r.returncode == 0, r.stderr
    assert "index.html" in r.stdout and "val_elbo_mean" in r.stdout
    missing = invoke("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "not found" in missing.stderr
    run_dir = runs.find_runs(results / "single")[0]
    inside = invoke("report", str(results / "single"), "--out", str(run_dir / "figs"))
    assert inside.returncode == 2 and "inside a run folder" in inside.stderr


def test_compare_sample_and_reconstruct_from_the_command_line(results, tmp_path):
    c = invoke("compare", str(results / "st"))
    assert c.returncode == 0, c.stderr
    assert c.stdout.startswith("test IW log p(x)") and "too few seeds" in c.stdout  # 2 seeds per config
    v = invoke("compare", str(results / "st"), "--metric", "val_elbo")
    assert v.returncode == 0 and v.stdout.startswith("validation ELBO")
    bad = invoke("compare", str(results / "st"), "--metric", "val_elbow")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "val_elbo" in bad.stderr
    run_dir = runs.find_runs(results / "single")[0]
    s = invoke("sample", str(run_dir), "-n", "16", "--out", str(tmp_path / "s.png"))
    r = invoke("reconstruct", str(run_dir), "--split", "val", "--out", str(tmp_path / "r.svg"))
    assert s.returncode == 0 and r.returncode == 0, s.stderr + r.stderr
    assert (tmp_path / "s.png").stat().st_size > 2_000 and (tmp_path / "r.svg").stat().st_size > 2_000
    not_a_run = invoke("sample", str(results), "--out", str(tmp_path / "x.png"))
    assert not_a_run.returncode == 2 and "not a run folder" in not_a_run.stderr and "Traceback" not in not_a_run.stderr


def test_the_study_page_leads_with_the_paired_comparison(results, tmp_path):
    rep = build_report(results / "st", out=tmp_path / "r", jobs=1)
    index = rep.index.read_text()
    study = index.index("<h2 id='study-st'>Study st</h2>")
    assert study < index.index("studies/st/compare.png") < index.index("final-objective.k.png")
    assert "share better" in index and "too few seeds" in index and (rep.out / "studies/st/compare.png").is_file()
    # runs are headed by their study, values and seed; the folder (with its hash) in small print
    assert "<small class='id'>" in index and "st · baseline · seed 0" in index and "st · K (samples) = 2 · seed 1" in index  # the schema's label of objective.k


def test_run_figures_in_pdf_on_request_and_a_wrong_format_in_one_line(results, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.find_runs(results / "single")[0], run_dir)
    rep = build_report(run_dir, out=tmp_path / "r", formats="png,svg,pdf")
    files = figure_files(rep.out)
    assert {f"runs/{run_dir.name}/{n}.pdf" for n in RUN_FIGURES} <= files
    assert (rep.out / f"runs/{run_dir.name}/samples.pdf").read_bytes().startswith(b"%PDF")
    assert build_report(run_dir, out=tmp_path / "r", formats="png,svg,pdf").drawn == []  # the same formats: reused
    assert build_report(run_dir, out=tmp_path / "r").drawn == rep.drawn  # other formats: redrawn
    bad = invoke("report", str(run_dir), "--out", str(tmp_path / "r2"), "--formats", "svg,eps")
    one_line_error(bad, "--formats", "png")


MATH, TAGS = r"$\frac$", "<b>bold</b>&amp;"  # mathtext that does not parse, and HTML with an entity


def test_variants_named_with_mathtext_and_html_are_drawn_and_escaped_everywhere(tmp_path):
    """Names are text in every output: figures (mathtext off), summary.md and compare's Markdown
    (HTML and Markdown specials escaped), index.html and compare's HTML, LaTeX, SVG."""
    tiny = {**TINY, "train": {**TINY["train"], "steps": 40, "eval_every": 20, "flush_every": 20,
                              "checkpoint_every": 20}}
    study = tmp_path / "hostile.yaml"
    study.write_text(yaml.safe_dump({"name": "hostile", **tiny, "seeds": 2, "variants": {
        "base": {}, MATH: {"objective.name": "iwae", "objective.k": 2}, TAGS: {"model.latent": 3}}}))
    out = tmp_path / "results"
    assert not vaebench.run_study(study, out=out, jobs=1, progress=False).failed
    r = invoke("report", str(out))
    assert r.returncode == 0, r.stderr
    rep = out / "report"
    assert "could not be drawn" not in (rep / "index.html").read_text()
    assert (rep / "studies" / "hostile" / "compare.svg").is_file()

    page = (rep / "index.html").read_text()
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;&amp;amp;" in page and MATH in page
    md = (rep / "summary.md").read_text()
    assert "<b>" not in md and "&amp;" not in md.replace("&amp;amp;", "")
    assert "| &lt;b>bold&lt;/b>&amp;amp; |" in md and r"| \$\\frac\$ |" in md
    for svg in rep.rglob("*.svg"):
        assert "<b>" not in svg.read_text(), svg

    tables = {f: invoke("compare", str(out), "--format", f) for f in ("markdown", "latex", "html")}
    assert all(t.returncode == 0 for t in tables.values()), [t.stderr for t in tables.values()]
    assert "| &lt;b>bold&lt;/b>&amp;amp; |" in tables["markdown"].stdout and r"\$\\frac\$" in tables["markdown"].stdout
    assert r"\$\textbackslash{}frac\$" in tables["latex"].stdout
    assert r"$<$b$>$bold$<$/b$>$\&amp;" in tables["latex"].stdout
    assert "&lt;b&gt;bold&lt;/b&gt;&amp;amp;" in tables["html"].stdout and "<b>" not in tables["html"].stdout


def test_figure_texts_from_names_are_never_mathtext(tmp_path):
    from matplotlib.text import Text

    from vaebench.report.figures import save

    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label=MATH)
    ax.set_title(MATH)
    ax.set_xticks([0, 1], [MATH, TAGS])
    ax.legend()
    ax.annotate(MATH, (0.5, 0.5))
    assert save(fig, tmp_path / "f", ("png", "svg")) == ["f.png", "f.svg"]
    texts = [t for t in fig.findobj(Text) if t.get_text()]
    assert sum(t.get_text() == MATH for t in texts) >= 4
    assert not any(t.get_parse_math() or t.get_usetex() for t in texts)
