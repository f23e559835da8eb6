"""Damaged and hand-edited run folders: every reader names the run and the file in one line and goes
on with the others; nothing is removed; --retry redoes exactly the runs it names; no command drops
an eval.json entry. One tiny study is trained once and copied per case."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import vaebench
from vaebench import runs
from vaebench.cli import cli

STUDY = {"name": "dmg", "seeds": 3, "data": {"per_class": 20, "val_size": 20},
         "eval": {"enabled": True, "k": 2, "splits": ["test"]},
         "train": {"steps": 40, "batch_size": 20, "eval_every": 20, "flush_every": 20, "checkpoint_every": 20,
                   "threads": 1}}


def _truncate(d: Path) -> None:
    data = (d / runs.CHECKPOINT).read_bytes()
    (d / runs.CHECKPOINT).write_bytes(data[: len(data) // 2])


def _edit_lr(d: Path) -> None:
    cfg = yaml.safe_load((d / runs.CONFIG).read_text())
    cfg["optim"]["lr"] = 0.01
    (d / runs.CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))


# case: (how the first run is damaged, the file every reader must name)
CASES = {
    "truncated_checkpoint": (_truncate, runs.CHECKPOINT),
    "missing_checkpoint": (lambda d: (d / runs.CHECKPOINT).unlink(), runs.CHECKPOINT),
    "broken_config": (lambda d: (d / runs.CONFIG).write_text("optim: {lr: [\n"), runs.CONFIG),
    "garbage_metrics": (lambda d: (d / runs.METRICS).write_bytes(b"not a parquet file"), runs.METRICS),
    "invalid_final": (lambda d: (d / runs.FINAL).write_text("{\"val\": "), runs.FINAL),
    "final_wrong_type": (lambda d: (d / runs.FINAL).write_text("[1, 2]\n"), runs.FINAL),
    "status_wrong_type": (lambda d: (d / runs.STATUS).write_text("\"done\"\n"), runs.STATUS),
    "hand_edited_config": (_edit_lr, runs.CONFIG),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the study file, its results folder) of 3 done runs, each evaluated at k = 2."""
    base = tmp_path_factory.mktemp("damage")
    cfg = base / "dmg.yaml"
    cfg.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    res = vaebench.run_study(cfg, out=base / "results", jobs=1, progress=False)
    assert not res.not_done
    return cfg, base / "results"


@pytest.fixture
def study(trained, tmp_path) -> tuple[Path, Path, list[Path]]:
    """A fresh copy of the trained study: (config, results folder, its run folders in study order)."""
    cfg, results = trained
    out = tmp_path / "results"
    shutil.copytree(results, out)
    return cfg, out, [out / "dmg" / e["folder"] for e in yaml.safe_load((out / "dmg" / runs.GRID).read_text())["runs"]]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def snapshot(d: Path) -> dict[str, str]:
    """Every file below a run folder and its content's hash (what must not change)."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name not in (runs.LOCK, runs.EVAL_LOCK)}


def damage_lines(proc, run: Path) -> list[str]:
    """stderr lines that name the damaged run; none may be a traceback."""
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.output, proc.output
    return [line for line in proc.stderr.splitlines() if run.name in line]


@pytest.mark.parametrize("case", list(CASES))
def test_each_reader_names_the_damaged_run_and_goes_on(study, case, tmp_path):
    cfg, out, dirs = study
    bad, others = dirs[0], dirs[1:]
    damage, file = CASES[case]
    damage(bad)
    kept = {d: snapshot(d) for d in dirs}

    st = runs.run_state(bad)
    assert st.state == "damaged" and st.file == file and file in st.reason and "--retry" in st.reason
    assert [runs.run_state(d).state for d in others] == ["done", "done"]

    ls = invoke("ls", str(out))  # one line for it, every run listed, exit 1: something was skipped
    assert ls.exit_code == 1
    (line,) = damage_lines(ls, bad)
    assert file in line and line.startswith("vaebench: damaged:")
    assert ls.stdout.count("damaged") == 1 and ls.stdout.count("done") == 2

    final = vaebench.load(out, final=True).set_index("run")
    row = final.loc[f"dmg/{bad.name}"]
    assert row["state"] == "damaged" and file in row["reason"]
    assert row.isna()["val_elbo"] and row.isna()["test_iw_ll"]  # never its numbers
    assert final.loc[[f"dmg/{d.name}" for d in others], "val_elbo"].notna().all()
    long = vaebench.load(out)
    assert set(long["run"].astype(str)) >= {f"dmg/{d.name}" for d in others}
    assert long[long["run"] != f"dmg/{bad.name}"]["value"].notna().all()

    dry = invoke("run", str(cfg), "--out", str(tmp_path / "results"), "--dry-run")
    assert dry.exit_code == 0 and "1 damaged" in dry.stdout and "2 done" in dry.stdout
    (line,) = damage_lines(dry, bad)
    assert file in line

    again = invoke("run", str(cfg), "--out", str(tmp_path / "results"))  # neither skipped as done nor redone
    assert again.exit_code == 1 and "1 damaged" in again.stderr and "--retry-damaged" in again.stderr
    assert "Traceback" not in again.output

    rep = invoke("report", str(out))
    assert rep.exit_code == 1 and (out / "report" / "index.html").is_file()
    (line,) = damage_lines(rep, bad)
    assert file in line
    page = (out / "report" / "index.html").read_text()
    assert page.count("state-damaged'>damaged</span> at update") == 1  # listed with its reason once
    for d in others:
        assert (out / "report" / "runs" / "dmg" / d.name / "samples.png").is_file()
    if file not in (runs.CONFIG, runs.METRICS):  # terms needs no checkpoint, final or status
        assert (out / "report" / "runs" / "dmg" / bad.name / "terms.png").is_file()

    ev = invoke("eval", str(out), "--k", "3", "--device", "cpu")
    assert ev.exit_code == 1
    (line,) = damage_lines(ev, bad)
    assert file in line
    assert all(runs.find_eval(runs.read_evals(d), "test", 3) for d in others)

    smp = invoke("sample", str(bad), "-n", "4", "--out", str(tmp_path / "s.png"))
    if file in (runs.CHECKPOINT, runs.CONFIG):
        assert smp.exit_code == 2 and file in smp.stderr and len(smp.stderr.strip().splitlines()) == 1
    else:  # its checkpoint and config are whole: a sample can be drawn
        assert smp.exit_code == 0, smp.output

    assert snapshot(bad) == kept[bad]  # nothing removed or rewritten in the damaged folder


@pytest.mark.parametrize("force", [True, False])
def test_a_hand_edited_folder_with_short_metrics_is_never_emptied(study, force):
    """The identity check comes before anything is removed: --force, and the repair of a short
    metrics.parquet, leave a folder whose config.yaml is not the run's as it is."""
    cfg, out, dirs = study
    _edit_lr(dirs[0])
    table = runs.read_metrics_table(dirs[0])
    runs.write_table(dirs[0] / runs.METRICS, table.slice(0, 10))  # short: a plain rerun would retrain
    kept = snapshot(dirs[0])
    res = invoke("run", str(cfg), "--out", str(out), *(["--force"] if force else []))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert snapshot(dirs[0]) == kept
    assert runs.run_state(dirs[0]).state == "damaged"
    assert [runs.run_state(d).state for d in dirs[1:]] == ["done", "done"]


@pytest.mark.parametrize("case", ["truncated_checkpoint", "hand_edited_config", "invalid_final"])
def test_retry_redoes_exactly_the_run_named(study, case):
    cfg, out, dirs = study
    CASES[case][0](dirs[0])
    old = {d: snapshot(d) for d in dirs}
    numbers = json.loads((dirs[1] / runs.FINAL).read_text())
    res = invoke("run", str(cfg), "--out", str(out), "--retry", dirs[0].name)
    assert res.exit_code == 0, res.output
    assert [runs.run_state(d).state for d in dirs] == ["done"] * 3
    assert all(snapshot(d) == old[d] for d in dirs[1:])  # the others untouched
    aside = [p for p in dirs[0].iterdir() if p.name.startswith(runs.SET_ASIDE)]
    assert len(aside) == 1 and any((aside[0] / f).exists() for f in CASES[case][1:])  # the old files kept
    again = json.loads((dirs[0] / runs.FINAL).read_text())
    assert again["val"].keys() == numbers["val"].keys()
    assert runs.config_problem(dirs[0]) is None


def test_retry_names_nothing_is_one_line(study):
    cfg, out, _ = study
    res = invoke("run", str(cfg), "--out", str(out), "--retry", "nosuchrun*")
    assert res.exit_code == 2 and "--retry nosuchrun*" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_retry_damaged_redoes_a_partial_run_with_a_bad_checkpoint_from_zero(study):
    cfg, out, dirs = study
    runs.write_status(dirs[0], "running", 20, 40, None)  # cut at step 20: partial
    (dirs[0] / runs.FINAL).unlink()
    _truncate(dirs[0])
    assert runs.run_state(dirs[0]).file == runs.CHECKPOINT
    plain = invoke("run", str(cfg), "--out", str(out))
    assert plain.exit_code == 1 and runs.run_state(dirs[0]).state == "damaged"
    res = invoke("run", str(cfg), "--out", str(out), "--retry-damaged")
    assert res.exit_code == 0, res.output
    assert [runs.run_state(d).state for d in dirs] == ["done"] * 3


def test_an_eval_entry_survives_run_of_the_study_with_one_more_seed(study):
    cfg, out, dirs = study
    assert invoke("eval", str(out), "--k", "7", "--device", "cpu").exit_code == 0
    more = cfg.parent / "more.yaml"
    more.write_text(yaml.safe_dump({**STUDY, "seeds": 4}, sort_keys=False))
    assert invoke("run", str(more), "--out", str(out)).exit_code == 0
    for d in dirs:
        ks = {e["k"] for e in runs.read_evals(d)}
        assert {2, 7} <= ks, (d, ks)
    assert invoke("run", str(more), "--out", str(out), "--force").exit_code == 0  # retrains, re-evaluates k = 2
    assert all({2, 7} <= {e["k"] for e in runs.read_evals(d)} for d in dirs)


def test_wrong_type_eval_json_is_no_error_and_kept_aside(study):
    cfg, out, dirs = study
    (dirs[0] / runs.EVAL).write_text("[\"not\", \"entries\"]\n")
    ls = invoke("ls", str(out))
    assert ls.exit_code == 0 and "Traceback" not in ls.output
    assert runs.run_state(dirs[0]).state == "done"
    res = invoke("run", str(cfg), "--out", str(out))  # the end-of-run evaluation is redone
    assert res.exit_code == 0, res.output
    assert runs.find_eval(runs.read_evals(dirs[0]), "test", 2)
    assert [p.read_text() for p in dirs[0].glob(runs.EVAL + ".damaged-*")] == ["[\"not\", \"entries\"]\n"]
