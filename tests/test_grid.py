"""Studies: expansion, run identity, resume after SIGKILL, concurrent runners, failures, executors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import vaebench
from vaebench import runs
from vaebench.config import resolve
from vaebench.grid import expand, run_state

from conftest import REPO, TINY_STUDY as TINY, folders, invoke, one_line_error, run_cli, write_study

def values(study, *keys):
    return [tuple(r.varied.get(k) for k in keys) for r in study.runs]


# -- expansion ---------------------------------------------------------------

def test_product_zip_variants_and_seeds():
    s = expand({"grid": {"objective.k": [1, 2], "model.latent": [2, 4]},
                "zip": {"optim.lr": [1e-3, 1e-2], "optim.eps": [1e-8, 1e-4]},
                "seeds": 2})
    assert s.axes == ["objective.k", "model.latent", "optim.lr", "optim.eps", "seed"]
    assert len(s.runs) == 2 * 2 * 2 * 2
    got = {(r.config.objective.k, r.config.model.latent, r.config.optim.lr, r.config.optim.eps, r.config.seed)
           for r in s.runs}
    want = {(k, lat, lr, eps, seed) for k in (1, 2) for lat in (2, 4) for lr, eps in ((1e-3, 1e-8), (1e-2, 1e-4))
            for seed in (0, 1)}
    assert got == want
    assert values(s, "objective.k", "seed")[:3] == [(1, 0), (1, 1), (1, 0)]  # seeds vary fastest


def test_variants_named_and_unnamed_with_nested_and_shorthand_keys():
    s = expand({"objective": {"k": 3},
                "variants": {"base": {}, "wide": {"model": {"encoder": {"hidden": [512]}}},
                             "mc": {"objective.kl": "monte_carlo"}, "iw": {"objective": "elbo"}}})
    assert [r.varied["variant"] for r in s.runs] == ["base", "wide", "mc"]  # "iw" equals base: kept once
    assert s.runs[1].config.model.encoder.hidden == [512] and s.runs[1].config.model.decoder.hidden == [128]
    assert s.runs[2].config.objective.kl == "monte_carlo" and s.runs[2].config.objective.k == 3
    unnamed = expand({"variants": [{"seed": 3}, {"model.latent": 2}]})
    assert [r.varied["variant"] for r in unnamed.runs] == ["seed=3", "model.latent=2"]


def test_cli_overrides_fix_values_and_add_axes():
    s = expand({"grid": {"objective.k": [1, 2]}, "seeds": [5, 6]},
               ["optim.lr=0.01", "objective.kl=analytic,monte_carlo", "model.encoder.hidden=[64,64]"])
    assert s.axes == ["objective.k", "objective.kl", "seed"]
    assert len(s.runs) == 8
    assert {r.config.optim.lr for r in s.runs} == {0.01}
    assert {r.config.model.encoder.hidden == [64, 64] for r in s.runs} == {True}  # commas in [] don't split
    assert {r.config.seed for r in s.runs} == {5, 6}
    fixed = expand({"grid": {"objective.k": [1, 2]}, "seeds": 3}, ["objective.k=5", "seed=1"])
    assert fixed.axes == [] and len(fixed.runs) == 1 and fixed.runs[0].config.objective.k == 5
    more = expand({"grid": {"objective.k": [1, 2]}, "seeds": 3}, ["seeds=[7]", "grid=null"])
    assert more.axes == ["seed"] and [r.config.seed for r in more.runs] == [7]


def test_single_config_is_a_study_of_one_run_named_by_its_id():
    s = expand({"name": "one"})
    assert s.axes == [] and s.folders() == [s.runs[0].hash]


@pytest.mark.parametrize("study, message", [
    ({"grid": {"objective.kk": [1, 2]}}, "did you mean 'objective.k'"),
    ({"grid": {"objective.k": []}}, "has no values"),
    ({"grid": {"objective.k": 3}}, "must be a list"),
    ({"zip": {"optim.lr": [1e-3, 1e-2], "optim.eps": [1e-8]}}, "unequal length"),
    ({"variants": []}, "is empty"),
    ({"seeds": 0}, "is empty"),
    ({"seeds": [-1]}, "non-negative"),
    ({"grid": {"seed": [1, 2]}, "seeds": 2}, "both 'seeds' and a 'seed' axis"),
    ({"grid": {"objective.k": [0, 1]}}, "objective.k=0"),
    ({"grdi": {"objective.k": [1]}}, "did you mean 'grid'"),
])
def test_invalid_studies_fail_with_one_line(tmp_path, study, message):
    with pytest.raises(vaebench.errors.ConfigError) as e:
        vaebench.study(write_study(tmp_path, **study))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_invalid_study_exits_2_before_anything_runs(tmp_path):
    path = write_study(tmp_path, grid={"objective.k": [1, 2]}, zip={"optim.lr": [1e-3], "optim.eps": [1e-8, 1e-4]})
    out = tmp_path / "res"
    r = invoke("run", str(path), "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "unequal length" in r.stderr and not out.exists()


# -- identity ----------------------------------------------------------------

def test_hash_is_stable_across_processes_and_blind_to_execution_keys():
    cfg = resolve({"objective": {"k": 5}, "optim": {"lr": 3e-4}})
    code = ("from vaebench.config import resolve; "
            "print(resolve({'optim': {'lr': 3e-4}, 'objective': {'k': 5}}).run_hash())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED="123")).stdout.strip()
    assert other == cfg.run_hash()
    same = resolve(cfg.to_dict(), ["name=other", "train.flush_every=7", "train.checkpoint_every=9",
                                   "train.threads=2"])
    assert same.run_hash() == cfg.run_hash()
    assert resolve(cfg.to_dict(), ["objective.k=4"]).run_hash() != cfg.run_hash()


# -- running -----------------------------------------------------------------

def trained(stdout: str) -> list[str]:
    """Run folders the command trained to the end (its per-run lines, not the summary table)."""
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("done ")]


def metrics_of(run_dir: Path) -> pd.DataFrame:
    return runs.read_metrics(run_dir).sort_values(["split", "step"], ignore_index=True)


@pytest.mark.slow
def test_sigkill_mid_grid_then_rerun_matches_an_uninterrupted_grid(tmp_path):
    path = write_study(tmp_path, seeds=2, train={**TINY["train"], "steps": 600, "flush_every": 25,
                                                  "checkpoint_every": 50})
    ref = invoke("run", str(path), "--out", str(tmp_path / "ref"), "-j", "1")
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(out), "-j", "1"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("st/*/" + runs.CHECKPOINT)):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = folders(out / "st")
    assert "partial" in {run_state(d) for d in cut.values()}
    for part in out.rglob("*.parquet"):  # everything left behind is whole
        runs.read_tables([part])
    dry = invoke("run", str(path), "--out", str(out), "--dry-run")
    assert "partial" in dry.stdout and dry.returncode == 0

    again = invoke("run", str(path), "--out", str(out), "-j", "1")
    assert again.returncode == 0, again.stderr
    want = folders(tmp_path / "ref" / "st")
    got = folders(out / "st")
    assert got.keys() == want.keys() and len(got) == 2
    for rid in want:
        pd.testing.assert_frame_equal(metrics_of(got[rid]), metrics_of(want[rid]))
        assert runs.read_final(got[rid]) == runs.read_final(want[rid])
        assert not (got[rid] / runs.PARTS).exists()


@pytest.mark.slow
def test_two_concurrent_runners_train_each_run_once(tmp_path):
    path = write_study(tmp_path, seeds=4, train={**TINY["train"], "steps": 150})
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "vaebench.cli", "run", str(path), "--out", str(out), "-j", "1"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    # exit 0 only when every run is done at the end: a runner that left runs to the other may exit 1, saying so
    assert all(p.returncode == 0 or (p.returncode == 1 and "running" in e) for p, (_, e) in zip(procs, outs)), outs
    assert 0 in [p.returncode for p in procs], outs
    done = [path for o, _ in outs for path in trained(o)]
    assert len(done) == len(set(done)) == 4  # every run trained, none twice
    for d in folders(out / "st").values():
        assert runs.read_status(d)["state"] == "done"
        metrics_of(d)  # readable


@pytest.mark.slow
def test_a_nan_run_fails_alone_and_the_command_exits_1(tmp_path):
    path = write_study(tmp_path, variants={"good": {}, "bad": {"optim.lr": 1e6, "optim.name": "sgd"}})
    out = tmp_path / "res"
    r = invoke("run", str(path), "--out", str(out), "-j", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 of 2 runs are not done (1 failed)" in r.stderr and "Traceback" not in r.stderr
    table = vaebench.ls(out)
    states = dict(zip(table["optim.lr"], table["state"]))
    assert states == {1e-3: "done", 1e6: "failed"}
    bad = next(d for d in folders(out / "st").values() if "bad" in d.name)
    assert "NaN" in runs.read_status(bad)["reason"]

    dry = invoke("run", str(path), "--out", str(out), "--dry-run")
    assert "1 done" in dry.stdout and "1 failed" in dry.stdout
    again = invoke("run", str(path), "--out", str(out))  # failed runs are not retried unasked
    assert "nothing to do" in again.stdout
    assert again.returncode == 1 and "1 of 2 runs are not done (1 failed)" in again.stderr  # nor called done
    retried = invoke("run", str(path), "--out", str(out), "--retry-failed")
    assert retried.returncode == 1 and "1 of 2 runs are not done (1 failed)" in retried.stderr


@pytest.mark.slow
def test_a_corrupt_checkpoint_fails_its_own_run_only(tmp_path):
    path = write_study(tmp_path, seeds=2, train={**TINY["train"], "steps": 60})
    res = vaebench.run_study(path, out=tmp_path, jobs=1, progress=False)
    bad, good = res.run_dirs
    (bad / runs.CHECKPOINT).write_bytes((bad / runs.CHECKPOINT).read_bytes()[:100])  # a cut write
    for d in (bad, good):  # both cut before they finished: resumable
        (d / runs.STATUS).write_text(json.dumps({"state": "running", "step": 40}))
    r = invoke("run", str(path), "--out", str(tmp_path))  # damaged: named, left as it is; the other resumes
    assert r.returncode == 1 and "Traceback" not in r.stderr and "(1 damaged)" in r.stderr
    assert f"{runs.CHECKPOINT} is truncated or corrupt" in r.stdout and f"--retry {bad.name}" in r.stdout
    assert runs.run_state(bad).state == "damaged" and runs.read_status(good)["state"] == "done"
    assert invoke("run", str(path), "--out", str(tmp_path), "--retry", bad.name).returncode == 0  # that run, from 0
    assert runs.read_status(bad)["state"] == "done"


@pytest.mark.slow
def test_dry_run_states_force_and_new_axis(tmp_path):
    path = write_study(tmp_path, grid={"objective.k": [1, 2]})
    out = tmp_path / "res"
    assert invoke("run", str(path), "--out", str(out), "--set", "objective.k=1").returncode == 0
    dry = invoke("run", str(path), "--out", str(out), "--dry-run")
    assert "2 runs" in dry.stdout and "1 done" in dry.stdout and "1 new" in dry.stdout
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    invoke("run", str(path), "--out", str(out), "--dry-run")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # a new axis reuses the runs that exist (found by id) and trains only what is missing
    r = invoke("run", str(path), "--out", str(out), "--set", "objective.kl=analytic,monte_carlo")
    assert r.returncode == 0, r.stderr
    assert len(trained(r.stdout)) == 3
    assert len(folders(out / "st")) == 4
    grid = yaml.safe_load((out / "st" / "grid.yaml").read_text())
    assert grid["axes"] == ["objective.k", "objective.kl"] and len(grid["runs"]) == 4

    forced = invoke("run", str(path), "--out", str(out), "--force", "--set", "objective.k=1")
    assert forced.returncode == 0 and len(trained(forced.stdout)) == 1


@pytest.mark.slow
def test_load_and_ls_read_a_study_with_its_varied_values(tmp_path):
    res = vaebench.run_study(write_study(tmp_path, grid={"objective.k": [1, 2]}, seeds=2), out=tmp_path / "r",
                             jobs=1, progress=False)
    assert len(res.results) == 4 and not res.failed
    df = vaebench.load(tmp_path / "r")
    assert df.attrs["varied"] == ["seed", "objective.k"]
    assert df.groupby("run", observed=True)["objective.k"].nunique().eq(1).all()
    table = vaebench.ls(tmp_path)
    assert list(table.columns[:3]) == ["run", "seed", "objective.k"] and (table["state"] == "done").all()
    assert table["val_elbo"].notna().all()
    r = invoke("ls", str(tmp_path / "r"))
    assert r.returncode == 0 and r.stdout.count(" done ") == 4

    # --sort (descending with -, ties stable) and --format csv | json | markdown carry the same table
    table = vaebench.ls(tmp_path / "r")
    by = vaebench.ls(tmp_path / "r", sort=["-objective.k", "val_elbo"])
    want = table.sort_values(["objective.k", "val_elbo"], ascending=[False, True])
    assert list(by["run"]) == list(want["run"])
    csv = invoke("ls", str(tmp_path / "r"), "--format", "csv", "--sort=-objective.k", "--sort", "val_elbo")
    assert csv.returncode == 0, csv.stderr
    got = pd.read_csv(io.StringIO(csv.stdout))
    assert list(got["run"]) == list(want["run"])
    assert np.allclose(got["val_elbo"], want["val_elbo"], rtol=0, atol=1e-12)  # in full, not to 2 decimals
    js = invoke("ls", str(tmp_path / "r"), "--format", "json")
    records = json.loads(js.stdout)
    assert js.returncode == 0 and [x["run"] for x in records] == list(table["run"])
    assert [x["val_elbo"] for x in records] == pytest.approx(list(table["val_elbo"]), abs=1e-12)
    md = invoke("ls", str(tmp_path / "r"), "--format", "markdown").stdout.splitlines()
    assert md[0].startswith("| run | seed | objective.k |") and set(md[1]) <= set("|- ") and len(md) == 2 + 4
    one_line_error(invoke("ls", str(tmp_path / "r"), "--sort", "val_elbow"), "val_elbow", "did you mean 'val_elbo'")


def test_load_and_ls_name_each_runs_variant_in_study_order(tmp_path):
    variants = {"base": {}, "k3": {"objective.k": 3}, "a_mc": {"objective.kl": "monte_carlo"}}
    res = vaebench.run_study(write_study(tmp_path, variants=variants), out=tmp_path / "r", jobs=1, progress=False)
    assert len(res.results) == 3 and not res.failed
    table = vaebench.ls(tmp_path / "r")
    assert list(table["variant"]) == ["base", "k3", "a_mc"]  # the study's order, not the folders' names
    assert list(table.columns[:2]) == ["run", "variant"]
    final = vaebench.load(tmp_path / "r", final=True)
    assert final.set_index("variant").loc["k3", "objective.k"] == 3
    long = vaebench.load(tmp_path / "r")
    assert set(long["variant"].cat.categories) == set(variants)
    assert long.groupby("variant", observed=True)["objective.kl"].first()["a_mc"] == "monte_carlo"
    (tmp_path / "r" / "st" / runs.GRID).unlink()  # without grid.yaml: no variant column, runs by name
    assert "variant" not in vaebench.ls(tmp_path / "r") and "variant" not in vaebench.load(tmp_path / "r")


def test_run_api_rejects_a_study():
    with pytest.raises(vaebench.errors.ConfigError, match="study of 2 runs"):
        vaebench.run({"grid": {"objective.k": [1, 2]}})


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(tmp_path):
    pytest.importorskip("ray", reason="the Ray executor needs the optional extra vaebench[ray]")
    path = write_study(tmp_path, seeds=2)
    out = tmp_path / "res"
    r = run_cli("run", str(path), "--out", str(out), "--executor", "ray", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(trained(r.stdout)) == 2
    local = invoke("run", str(path), "--out", str(tmp_path / "local"), "-j", "1")
    assert local.returncode == 0
    want = folders(tmp_path / "local" / "st")
    for rid, d in folders(out / "st").items():
        pd.testing.assert_frame_equal(metrics_of(d), metrics_of(want[rid]))
        assert json.loads((d / runs.ENV).read_text())["threads"] == 1


def test_a_set_that_makes_variants_identical_says_which_in_one_note():
    variants = {"k1": {"objective.k": 1}, "k5": {"objective.k": 5}, "baseline": {}}
    s = expand({"objective": {"name": "iwae"}, "variants": variants, "seeds": 4}, ["objective.k=3"])
    assert len(s.runs) == 4 and {r.varied["variant"] for r in s.runs} == {"k1"}
    assert s.notes == ["variants k1, k5 and baseline are the same run after --set objective.k=3: "
                       "kept once, 4 runs instead of 12"]
    same = expand({"objective": {"name": "iwae"}, "variants": variants, "seeds": 2}).notes  # k1 is the default
    assert same == ["variants k1 and baseline are the same run: kept once, 4 runs instead of 6"]
    assert expand({"objective": {"name": "iwae"}, "variants": {"k5": {"objective.k": 5}, "base": {}}}).notes == []


def test_a_bad_study_key_in_set_is_blamed_on_the_override_not_the_file(tmp_path):
    with pytest.raises(vaebench.errors.ConfigError) as e:
        vaebench.study(write_study(tmp_path, seeds=2), ["seeds=abc"])
    assert str(e.value).startswith("'seeds' in --set seeds=abc must be") and "study.yaml" not in str(e.value)
    with pytest.raises(vaebench.errors.ConfigError) as e:
        vaebench.study(write_study(tmp_path, seeds="abc"))
    assert "study.yaml" in str(e.value)


def test_a_study_may_not_be_named_report_where_the_report_is_written(tmp_path):
    with pytest.raises(vaebench.errors.ConfigError, match="may not be named 'report'"):
        vaebench.study(write_study(tmp_path, name="report"))
    assert vaebench.study(write_study(tmp_path, name="reports")).name == "reports"


def test_resuming_under_another_engine_keeps_the_first_engines_record(tmp_path, monkeypatch):
    """env.json lists each engine with the step it started at; load's engine column joins them."""
    from vaebench.training import train_run
    from vaebench.training.trainer import TrainingRun

    from conftest import interrupt_at

    def tiny(engine):
        return resolve({**TINY, "name": "st", "train": {**TINY["train"], "steps": 60, "engine": engine}})

    run_dir = tmp_path / "st" / "one"
    flush = interrupt_at(monkeypatch, 40)
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny("fused"), run_dir, "cpu", progress=False)
    step = runs.checkpoint_step(run_dir)
    assert 0 < step < 60
    monkeypatch.setattr(TrainingRun, "flush", flush)
    cfg = tiny("torch")
    assert train_run(cfg, run_dir, "cpu", progress=False).state == "done"
    env = json.loads((run_dir / runs.ENV).read_text())
    assert env["engine"] == "torch" and env["engines"] == [{"engine": "fused", "from_step": 0},
                                                            {"engine": "torch", "from_step": step}]
    assert vaebench.load(tmp_path, final=True).loc[0, "engine"] == "fused+torch"
    assert train_run(cfg, run_dir, "cpu", progress=False, force=True).state == "done"  # started over: one engine
    assert json.loads((run_dir / runs.ENV).read_text())["engines"] == [{"engine": "torch", "from_step": 0}]


def test_a_job_sent_to_a_cluster_has_absolute_run_and_retry_folders(tmp_path, monkeypatch):
    """A Ray task or Slurm job runs in its own working directory: its --retry folders must still be
    the run folders it compares them with (both absolute)."""
    from vaebench.grid.jobs import Job

    monkeypatch.chdir(tmp_path)
    job = Job(configs=(), run_dirs=(Path("r/st/a"), Path("r/st/b")), retry=(Path("r/st/b"),))
    remote = job.absolute()
    assert remote.run_dirs == (tmp_path / "r/st/a", tmp_path / "r/st/b") and remote.retry == (tmp_path / "r/st/b",)
    assert remote.retry[0] in remote.run_dirs
