"""vaebench export mlflow | tensorboard: every run read back from the tracker equals its folder,
and exporting again duplicates nothing. Local stores under tmp_path only; never the network."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import vaebench
from vaebench import runs
from vaebench.config import flatten
from vaebench.tracking import param_text

from conftest import REPO, invoke, one_line_error, run_cli

# the reading back here goes through MLflow's own client, whose SQLAlchemy speaks up (not the export)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TERMS = ("rec", "kl", "elbo")
TINY = {"name": "st", "seeds": 2, "data": {"per_class": 20, "val_size": 20}, "eval": {"k": 5},
        "train": {"steps": 40, "batch_size": 20, "eval_every": 20, "flush_every": 20, "checkpoint_every": 20,
                  "threads": 1, "keep_best": True}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A 2-seed study of 40 updates, evaluated with k=5 (a few seconds), with a report figure per run
    where `vaebench report` puts it (a small PNG: the export uploads what exists, it draws nothing)."""
    from matplotlib.image import imsave

    tmp = tmp_path_factory.mktemp("export")
    (tmp / "study.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    res = vaebench.run_study(tmp / "study.yaml", out=tmp / "r", jobs=1, progress=False)
    assert len(res.results) == 2 and not res.failed
    for d in res.run_dirs:
        fig = tmp / "r" / runs.REPORT_FOLDER / "runs" / "st" / d.name
        fig.mkdir(parents=True)
        imsave(fig / "terms.png", np.linspace(0, 1, 64).reshape(8, 8))
    return tmp / "r"


def run_dirs(study: Path) -> list[Path]:
    return runs.find_runs(study)


def parquet(run_dir: Path, split: str):
    m = runs.read_metrics(run_dir)
    return m[m["split"] == split].sort_values("step", kind="stable")


def eval_entry(run_dir: Path, checkpoint: str = "last") -> dict:
    return runs.find_eval(runs.read_evals(run_dir), "test", None, checkpoint)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A sqlite store in tmp_path as the process's MLflow URI (mlflow.search_runs reads it), with
    artifacts in tmp_path/mlruns, telemetry off (here and in the commands run from here)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3's usage reports: never the network
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def mlflow_runs(uri: str, experiment: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, mlflow.search_runs([exp.experiment_id])


def test_mlflow_export_reads_back_as_the_run_folders_and_again_duplicates_nothing(study, mlflow_store):
    # in a subprocess, as a user runs it: one line per run and the summary, nothing from MLflow on stderr
    # (in tmp_path, where MLflow's default puts the artifacts: ./mlruns; this checkout's vaebench)
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
    r = run_cli("export", "mlflow", str(study), "--tracking-uri", mlflow_store, "--experiment", "tiny",
                cwd=Path.cwd(), env={"PYTHONPATH": path})
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("new ") for line in lines[:2])
    assert lines[2] == f"exported 2 runs to mlflow at {mlflow_store}, experiment 'tiny' (2 new)"

    client, df = mlflow_runs(mlflow_store, "tiny")
    dirs = run_dirs(study)
    assert len(df) == 2 and set(df["tags.vaebench.run_id"]) == {runs.folder_id(d) for d in dirs}
    lengths = {}
    for d in dirs:
        row = df[df["tags.vaebench.run_id"] == runs.folder_id(d)].iloc[0]
        run = client.get_run(row["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["vaebench.path"] == str(d.resolve())
        cfg = runs.read_config(d)
        assert run.data.params == {k: param_text(v) for k, v in flatten(cfg).items()}
        assert run.data.params["train.steps"] == "40" and run.data.params["seed"] == str(cfg["seed"])
        assert run.data.params["model.encoder.hidden"] == json.dumps(cfg["model"]["encoder"]["hidden"])
        for split in ("train", "val"):
            want = parquet(d, split)
            for term in TERMS:
                hist = sorted(client.get_metric_history(run.info.run_id, f"{split}/{term}"), key=lambda m: m.step)
                assert [m.step for m in hist] == want["step"].tolist()
                np.testing.assert_allclose([m.value for m in hist], want[term], rtol=1e-12)
                lengths[d, split, term] = len(hist)
        final, test = runs.read_final(d), eval_entry(d)
        got = run.data.metrics
        assert got["val_elbo"] == pytest.approx(final["val"]["elbo"], rel=1e-12)
        assert got["train_kl"] == pytest.approx(final["train"]["kl"], rel=1e-12)
        assert got["test_iw_ll"] == pytest.approx(test["iw_ll"], rel=1e-12)
        assert got["test_iw_ll_se"] == pytest.approx(test["iw_ll_se"], rel=1e-12) and got["test_k"] == 5
        assert got["best_val_elbo"] == pytest.approx(final["best"]["val"]["elbo"], rel=1e-12)
        assert got["best_test_iw_ll"] == pytest.approx(eval_entry(d, "best")["iw_ll"], rel=1e-12)
        assert [Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")] == ["terms.png"]

    # again (the URI from MLFLOW_TRACKING_URI this time): the same runs, each point once
    again = invoke("export", "mlflow", str(study), "--experiment", "tiny")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].endswith("(2 unchanged)")
    client, df2 = mlflow_runs(mlflow_store, "tiny")
    assert sorted(df2["run_id"]) == sorted(df["run_id"])
    for (d, split, term), n in lengths.items():
        rid = df2[df2["tags.vaebench.run_id"] == runs.folder_id(d)]["run_id"].iloc[0]
        assert len(client.get_metric_history(rid, f"{split}/{term}")) == n
        assert len(client.get_metric_history(rid, "test_iw_ll")) == 1

    # a number the folder records changed (evaluated again): that run is updated, its old point gone
    d = dirs[0]
    old = eval_entry(d)
    runs.add_eval(d, {**old, "iw_ll": old["iw_ll"] + 1.0})
    try:
        third = invoke("export", "mlflow", str(study), "--experiment", "tiny")
    finally:
        runs.add_eval(d, old)  # the module's study as it was, for the other tests
    assert third.returncode == 0 and third.stdout.splitlines()[-1].endswith("(1 updated, 1 unchanged)")
    client, df3 = mlflow_runs(mlflow_store, "tiny")
    assert len(df3) == 2
    rid = df3[df3["tags.vaebench.run_id"] == runs.folder_id(d)]["run_id"].iloc[0]
    hist = client.get_metric_history(rid, "test_iw_ll")
    assert len(hist) == 1 and hist[0].value == pytest.approx(old["iw_ll"] + 1.0, rel=1e-12)
    assert len(client.get_metric_history(rid, "train/elbo")) == lengths[d, "train", "elbo"]


def test_tensorboard_export_reads_back_as_the_parquet_and_again_keeps_one_copy(study, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    for attempt in ("new", "updated"):
        r = invoke("export", "tensorboard", str(study), "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == f"exported 2 runs to tensorboard at {out} (2 {attempt})"
        assert sorted(p.name for p in (out / "st").iterdir()) == sorted(d.name for d in run_dirs(study))  # no temp left
        for d in run_dirs(study):
            acc = EventAccumulator(str(out / "st" / d.name), size_guidance={"scalars": 0, "images": 0})
            acc.Reload()
            for split in ("train", "val"):
                want = parquet(d, split)
                for term in TERMS:
                    got = acc.Scalars(f"{split}/{term}")
                    assert [e.step for e in got] == want["step"].tolist()  # once each
                    np.testing.assert_allclose([e.value for e in got], want[term], rtol=1e-6)
            (iw,) = acc.Scalars("test_iw_ll")
            assert iw.value == pytest.approx(eval_entry(d)["iw_ll"], rel=1e-6) and iw.step == 40
            assert acc.Scalars("val_elbo")[0].value == pytest.approx(runs.read_final(d)["val"]["elbo"], rel=1e-6)
            assert acc.Tags()["images"] == ["figures/terms"]


def test_a_missing_tracker_package_is_one_line_naming_the_extra(study, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    one_line_error(invoke("export", "mlflow", str(study)),
                   "export mlflow needs mlflow: pip install 'vaebench[mlflow]'")
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    one_line_error(invoke("export", "tensorboard", str(study), "--out", str(tmp_path / "tb")),
                   "export tensorboard needs tensorboard: pip install 'vaebench[tensorboard]'")
    assert not (tmp_path / "tb").exists()


def test_no_runs_and_a_bad_tracking_uri_are_one_line(study, tmp_path, mlflow_store):
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("export", "mlflow", str(tmp_path / "empty")), "no runs found under")
    one_line_error(invoke("export", "tensorboard", str(tmp_path / "empty"), "--out", str(tmp_path / "tb")),
                   "no runs found under")
    one_line_error(invoke("export", "mlflow", str(tmp_path / "nothing")), "results folder not found")
    one_line_error(invoke("export", "mlflow", str(study), "--tracking-uri", "nosuch://x"),
                   "MLflow at nosuch://x: not a tracking URI MLflow knows; its schemes are", "sqlite")
    one_line_error(invoke("export", "tensorboard", str(study), "--out", str(run_dirs(study)[0] / "tb")),
                   "inside a run folder")


def test_a_run_exported_part_way_then_finished_gets_only_its_new_points(tmp_path, mlflow_store, monkeypatch):
    from vaebench.config import resolve
    from vaebench.training import train_run
    from vaebench.training.trainer import TrainingRun

    from conftest import interrupt_at

    cfg = resolve({**{k: v for k, v in TINY.items() if k != "seeds"}, "eval": {"enabled": False}})
    run_dir = tmp_path / "r" / "st" / "one"
    flush = interrupt_at(monkeypatch, 40)  # cut at update 40: the terms up to 20 are on disk
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, run_dir, "cpu", progress=False)
    first = vaebench.export_mlflow(run_dir, experiment="cut")
    assert [a for _, a, _ in first.actions] == ["new"]
    client, df = mlflow_runs(mlflow_store, "cut")
    assert df["status"].tolist() == ["KILLED"] and df["tags.vaebench.state"].tolist() == ["partial"]
    assert max(m.step for m in client.get_metric_history(df["run_id"][0], "train/elbo")) == 20

    monkeypatch.setattr(TrainingRun, "flush", flush)
    assert train_run(cfg, run_dir, "cpu", progress=False).state == "done"
    again = vaebench.export_mlflow(run_dir, experiment="cut")
    assert [a for _, a, _ in again.actions] == ["updated"] and again.actions[0][2] == df["run_id"][0]  # the same run
    client, df = mlflow_runs(mlflow_store, "cut")
    assert len(df) == 1 and df["status"][0] == "FINISHED"
    want = parquet(run_dir, "train")
    hist = sorted(client.get_metric_history(df["run_id"][0], "train/elbo"), key=lambda m: m.step)
    assert [m.step for m in hist] == want["step"].tolist()  # 1..40, each once
    np.testing.assert_allclose([m.value for m in hist], want["elbo"], rtol=1e-12)


def test_a_damaged_run_is_left_out_with_its_line_and_exit_1(study, tmp_path):
    import shutil

    pytest.importorskip("tensorboard")
    copy = tmp_path / "r"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("report"))
    bad, good = run_dirs(copy)
    (bad / runs.FINAL).write_text("[]")  # valid JSON, not the run's numbers
    r = invoke("export", "tensorboard", str(copy), "--out", str(tmp_path / "tb"))
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == f"exported 1 run to tensorboard at {tmp_path / 'tb'} (1 new); 1 damaged left out"
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"vaebench: damaged: st/{bad.name}: ") and runs.FINAL in line
    assert sorted(p.name for p in (tmp_path / "tb" / "st").iterdir()) == [good.name]


def test_non_finite_points_are_not_taken_for_changed_ones(mlflow_store):
    """MLflow keeps NaN and stores ±inf as ±max float: exporting again finds those points its own."""
    from mlflow.tracking import MlflowClient

    from vaebench.tracking import TrackedRun, _quiet_mlflow, _sync_mlflow

    rec = TrackedRun(Path("x"), "x", "abc", "failed", 4, {"seed": 0},
                     {"train/elbo": (np.arange(1, 5), np.array([-90.0, np.nan, np.inf, -np.inf]))}, {}, [],
                     {"vaebench.run_id": "abc", "vaebench.path": "/x"}, 4)
    with _quiet_mlflow():
        client = MlflowClient(mlflow_store)
        exp = client.create_experiment("nonfinite")
        first = _sync_mlflow(client, exp, rec)
        assert first[0] == "new" and _sync_mlflow(client, exp, rec) == ("unchanged", first[1])
        assert len(client.get_metric_history(first[1], "train/elbo")) == 4
