"""A user's own components, used as docs/adding-a-component.md shows: from YAML via the CLI, in worker processes and
Ray tasks, then reported and evaluated; missing or failing plugins are one line, exit 2."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from vaebench import plugins, runs
from vaebench.errors import ConfigError

from conftest import REPO, invoke, one_line_error, run_cli

EXAMPLE = REPO / "tests" / "plugin_example"
TINY = ["--set", "data.per_class=30", "--set", "data.val_size=40", "--set", "train.steps=40",
        "--set", "train.batch_size=30", "--set", "train.eval_every=20", "--set", "train.flush_every=20",
        "--set", "train.checkpoint_every=20",
        # the end-of-run evaluation on the 40 validation images with few samples, not 250 of 10,000 test images
        "--set", "eval.splits=[val]", "--set", "eval.k=5"]


def readme_section() -> str:
    """The guide page's example (docs/adding-a-component.md), up to its first subsection."""
    text = (REPO / "docs" / "adding-a-component.md").read_text()
    return text[:text.index("\n### ")]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", readme_section(), flags=re.S)


def test_the_readme_shows_the_example_files():
    assert blocks("python") == [(EXAMPLE / "my_components.py").read_text()]
    assert blocks("yaml") == [(EXAMPLE / "my_study.yaml").read_text()]


@pytest.mark.slow
def test_the_readme_example_study_runs_with_two_workers_then_reports_and_evaluates(tmp_path):
    """The guide page's commands as written (fewer updates, one seed, a smaller evaluation), in a fresh folder."""
    work = tmp_path / "work"
    work.mkdir()
    for f in ("my_components.py", "my_study.yaml"):
        shutil.copy(EXAMPLE / f, work / f)
    commands = [shlex.split(line.split("#")[0]) for line in blocks("bash")[0].splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["vaebench", "run"], ["vaebench", "report"], ["vaebench", "eval"],
                                         ["vaebench", "compare"], ["vaebench", "config"]]
    run, report, evaluate, compare, components = (c[1:] for c in commands)
    assert "-j" in run and run[run.index("-j") + 1] == "2"

    r = run_cli(*run, *TINY, "--set", "seeds=1", cwd=work)  # one seed per cell: the 2 x 2 grid, 4 runs
    assert r.returncode == 0, r.stderr[-3000:]
    study = work / "results" / "my_study"
    run_dirs = runs.find_runs(study)
    assert len(run_dirs) == 4 and all(runs.read_status(d)["state"] == "done" for d in run_dirs)
    for d in run_dirs:  # the run folder names what it needs, from any directory
        cfg = runs.read_config(d)
        assert cfg["imports"] == [str((work / "my_components.py").resolve())]
        assert cfg["model"]["encoder"]["activation"] == {"name": "silu", "beta": 1.0}
    cells = {(str(runs.read_config(d)["model"]["prior"]), runs.read_config(d)["objective"]["gradient"]) for d in run_dirs}
    assert cells == {(p, g) for p in ("standard_normal", str({"name": "laplace", "scale": 1.0}))
                     for g in ("reparam", "stl")}

    r = run_cli(*report, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "figures missing" not in r.stdout and "drew 5," in r.stdout, r.stdout
    index = (study / "report" / "index.html").read_text()
    assert "could not be drawn" not in index and "What is missing" not in index
    for d in run_dirs:
        for name in ("terms", "recon_train", "recon_val", "samples", "train_val"):
            assert (study / "report" / "runs" / d.name / f"{name}.png").is_file()
    for axis in ("model.prior", "objective.gradient"):
        assert (study / "report" / "studies" / "my_study" / f"final-{axis}.png").is_file()

    # eval from another directory, on a small split with few samples (the page's is the test set, k=1000)
    r = run_cli(*[str(study) if a == "results/my_study" else a for a in evaluate], "--split", "val", "--k", "8",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("evaluated") == 4, r.stdout
    assert all(runs.find_eval(runs.read_evals(d), "val", 8) for d in run_dirs)

    r = run_cli(*compare, "--k", "8", cwd=work)  # the prior x gradient grid, paired within each cell
    assert r.returncode == 0, r.stderr[-3000:]
    for value in ("laplace", "stl", "standard_normal", "reparam", "reference", "too few seeds"):
        assert value in r.stdout, r.stdout

    r = run_cli(*components, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "silu (my_components)" in r.stdout and "laplace (my_components)" in r.stdout, r.stdout


@pytest.mark.slow
def test_a_plugin_in_a_ray_task(tmp_path):
    pytest.importorskip("ray", reason="the Ray executor needs the optional extra vaebench[ray]")
    r = run_cli("run", str(EXAMPLE / "my_study.yaml"), "--out", str(tmp_path), "--executor", "ray",
                "--set", "seeds=1", "--set", "model.prior=laplace", "--set", "objective.gradient=stl", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = runs.find_runs(tmp_path / "my_study")
    assert runs.read_status(run_dir)["state"] == "done"


def test_a_module_name_is_found_beside_the_config_then_in_the_current_directory(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "beside.py").write_text("")
    (tmp_path / "here.py").write_text("")
    (tmp_path / "cfgs" / "pkg").mkdir()
    (tmp_path / "cfgs" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "cfgs" / "pkg" / "parts.py").write_text("")
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "on_path13.py").write_text("")  # the user's own module on sys.path: kept by name
    monkeypatch.syspath_prepend(str(tmp_path / "path"))
    monkeypatch.chdir(tmp_path)
    got = plugins.resolve(["beside", "here", "pkg.parts", "beside.py", "on_path13"], base=tmp_path / "cfgs")
    assert got == [str(tmp_path / "cfgs" / "beside.py"), str(tmp_path / "here.py"),
                   str(tmp_path / "cfgs" / "pkg" / "parts.py"), "on_path13"]  # beside.py is beside itself: kept once
    with pytest.raises(ConfigError, match="plugin 'nowhere' .*not found"):
        plugins.resolve(["nowhere"], base=tmp_path / "cfgs")
    with pytest.raises(ConfigError, match="no file"):
        plugins.resolve(["nowhere.py"], base=tmp_path / "cfgs")


def test_a_package_plugin_imports_with_its_package(tmp_path):
    pkg = tmp_path / "mypkg13"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("VALUE = 3\n")
    (pkg / "parts.py").write_text("from .helper import VALUE\n")
    (item,) = plugins.resolve(["mypkg13/parts.py"], base=tmp_path)
    plugins.load([item])
    assert sys.modules["mypkg13.parts"].VALUE == 3 and item in plugins.loaded()


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_missing_plugin_is_one_line_naming_it(tmp_path):
    cfg = write(tmp_path, "imports: [no_such_plugin]\n")
    one_line_error(invoke("run", str(cfg), "--out", str(tmp_path / "out")), "no_such_plugin", "not found")
    assert not (tmp_path / "out").exists()
    one_line_error(invoke("config", str(write(tmp_path, "name: x\n")), "--import", "gone.py"), "gone.py")
    one_line_error(invoke("ls", str(tmp_path), "--import", "no_such_plugin"), "no_such_plugin")


def test_a_failing_plugin_is_one_line_naming_it_and_its_line(tmp_path):
    write(tmp_path, "import torch\n\nx = 1 / 0\n", "broken.py")
    cfg = write(tmp_path, "imports: [broken.py]\n")
    one_line_error(run_cli("config", str(cfg)), "broken.py", "ZeroDivisionError", "broken.py:3")
    write(tmp_path, "from vaebench.components import ACTIVATIONS\nACTIVATIONS.register('tanh')(object)\n", "dup.py")
    one_line_error(run_cli("config", str(write(tmp_path, "imports: [dup]\n"))), "dup.py", "already registered")


def test_an_unknown_component_hints_at_imports(tmp_path):
    cfg = write(tmp_path, "model:\n  encoder: {activation: silu}\n")
    one_line_error(invoke("config", str(cfg)), "unknown activation 'silu'", "imports:")


@pytest.mark.slow
def test_report_and_eval_of_a_run_whose_plugin_is_gone_say_so(tmp_path):
    """A run folder names its plugin; when the file is gone, eval says which (exit 2), and the report
    lists the run's figures as missing with that reason instead of stopping."""
    shutil.copy(EXAMPLE / "my_components.py", tmp_path / "my_components.py")
    cfg = write(tmp_path, "name: gone\nmodel: {encoder: {activation: silu}}\n")
    r = run_cli("run", str(cfg), "--out", str(tmp_path / "res"), "--import", "my_components.py", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run_dir,) = runs.find_runs(tmp_path / "res")
    assert runs.read_config(run_dir)["imports"] == [str((tmp_path / "my_components.py").resolve())]  # recorded
    (tmp_path / "my_components.py").unlink()
    one_line_error(run_cli("eval", str(tmp_path / "res"), "--split", "val", "--k", "4", "--trust"),
                   "my_components.py", "not found")
    r = run_cli("report", str(tmp_path / "res"), "--trust")
    assert r.returncode == 0, r.stderr
    assert "figures missing" in r.stdout
    assert "my_components.py" in (tmp_path / "res" / "report" / "index.html").read_text()


def test_an_installed_packages_entry_point_registers_components(tmp_path):
    site = tmp_path / "site"
    (site / "ep_plugin13").mkdir(parents=True)
    (site / "ep_plugin13" / "__init__.py").write_text(
        "from torch import nn\nfrom vaebench.components import ACTIVATIONS\n"
        "ACTIVATIONS.register('hardswish13')(nn.Hardswish)\n")
    info = site / "ep_plugin13-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin13\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaebench.components]\nep13 = ep_plugin13\n")
    env = {"PYTHONPATH": str(site)}
    cfg = write(tmp_path, "model:\n  decoder: {activation: hardswish13}\n")
    r = run_cli("config", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"activation: hardswish13 ", r.stdout), r.stdout
    r = run_cli("config", "--components", env=env)
    assert "hardswish13" in r.stdout, r.stdout
    (site / "ep_plugin13" / "__init__.py").write_text("raise RuntimeError('half installed')\n")
    one_line_error(run_cli("config", str(cfg), env=env), "ep_plugin13", "ep-plugin13", "half installed")


def test_vaebench_config_prints_each_key_with_its_description(tmp_path):
    r = invoke("config", str(REPO / "experiments" / "ablations.yaml"), "--set", "train.steps=300")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("#") and "24 runs" in lines[0]
    body = yaml.safe_load(r.stdout)  # the first run, as YAML (the descriptions are comments)
    assert body["train"]["steps"] == 300 and body["model"]["encoder"]["hidden"] == [128]
    k = next(line for line in lines if line.strip().startswith("k: "))
    assert "z samples per image" in k and "varied: 2, 1, 5, 10" in k, k
    assert "[not in the run id]" in next(line for line in lines if line.strip().startswith("flush_every:"))


# -- code is part of a run's identity; reading a folder runs none of its code -----------------------
CODE_TINY = ["data.per_class=30", "data.val_size=40", "train.steps=60", "train.batch_size=30", "train.eval_every=20",
             "train.flush_every=20", "train.checkpoint_every=20", "train.threads=1", "eval.enabled=false"]


def _plugin(path: Path, name: str, scale: float, marker: bool = False) -> Path:
    """An activation tanh(scale * x) registered as ``name``; with ``marker``, importing it leaves a file."""
    mark = f"open({str(path) + '.marker'!r}, 'a').write('imported\\n')\n" if marker else ""
    path.write_text(f"import torch\nfrom torch import nn\nfrom vaebench.components import ACTIVATIONS\n{mark}\n\n"
                    f"@ACTIVATIONS.register({name!r})\nclass Act(nn.Module):\n"
                    f"    def forward(self, x):\n        return torch.tanh({scale} * x)\n")
    return path


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != runs.LOCK}


def test_a_plugin_changed_between_a_kill_and_the_rerun_is_refused_then_restarted(tmp_path):
    """SIGKILL (of the command's process group, via tests/faults/inject) after the second checkpoint."""
    import os
    import subprocess

    import vaebench

    plugin = _plugin(tmp_path / "chg_plugin.py", "chg_act", 1.0)
    nested: dict = {}
    for o in CODE_TINY:
        key, value = o.split("=")
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = yaml.safe_load(value)
    cfg = write(tmp_path, yaml.safe_dump({"name": "chg", "imports": ["chg_plugin.py"],
                                          "model": {"encoder": {"activation": "chg_act"}}, **nested}))
    env = dict(os.environ, VAEBENCH_KILL="replace:checkpoint.pt:after:2",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "faults" / "inject"), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-m", "vaebench.cli", "run", str(cfg), "--out", str(tmp_path / "res")],
                            cwd=tmp_path, env=env, capture_output=True, start_new_session=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = runs.find_runs(tmp_path / "res")
    assert runs.run_state(run_dir).state == "partial" and runs.checkpoint_step(run_dir) == 40
    before = runs.read_code(run_dir)
    assert before["plugins"] == plugins.fingerprint([str(plugin.resolve())]) and before["vaebench"] == vaebench.__version__
    kept = _snapshot(run_dir)

    _plugin(plugin, "chg_act", 2.0)  # the same name, other math
    err = one_line_error(run_cli("run", str(cfg), "--out", str(tmp_path / "res"), cwd=tmp_path),
                         str(plugin.resolve()), "changed since this run was trained", "--restart-changed")
    assert run_dir.name in err
    assert _snapshot(run_dir) == kept  # refused before anything: nothing resumed, nothing mixed

    # in this process from here on: its first import of the plugin is of the changed code (a real
    # command must refuse it, above and below; these two train it)
    r = invoke("run", str(cfg), "--out", str(tmp_path / "res"), "--restart-changed")
    assert r.returncode == 0, r.stderr[-3000:]
    after = runs.read_code(run_dir)
    assert after["plugins"] == plugins.fingerprint([str(plugin.resolve())]) != before["plugins"]
    r = invoke("run", str(cfg), "--out", str(tmp_path / "fresh"))  # the new code, uninterrupted
    assert r.returncode == 0, r.stderr[-3000:]
    (fresh,) = runs.find_runs(tmp_path / "fresh")
    assert runs.read_final(run_dir) == runs.read_final(fresh)  # started over: no update of the old code in it
    assert runs.read_metrics(run_dir).equals(runs.read_metrics(fresh))

    _plugin(plugin, "chg_act", 1.0)  # a done run is not skipped as done under other code either
    one_line_error(run_cli("run", str(cfg), "--out", str(tmp_path / "res"), cwd=tmp_path), "--restart-changed")

    # the code column tells the two codes apart; a folder from before the record is unknown, not refused
    shutil.copytree(tmp_path / "fresh" / "chg", tmp_path / "res" / "old")
    (tmp_path / "res" / "old" / fresh.name / runs.CODE).unlink()
    df = vaebench.ls(tmp_path / "res").set_index("run")["code"].astype(str)
    assert df[f"old/{fresh.name}"] == "unknown"
    assert df[f"chg/{run_dir.name}"] == plugins.code_id(after) != plugins.code_id(before)
    _plugin(plugin, "chg_act", 2.0)
    (fresh / runs.CODE).unlink()  # a run folder from before records: skipped as done, not refused, still unknown
    res = vaebench.run_study(cfg, out=tmp_path / "fresh", jobs=1, progress=False)
    assert res.states == ["done"] and not res.results and runs.read_code(fresh) is None
    r = run_cli("ls", str(tmp_path / "res"))
    assert r.returncode == 0 and "unknown" in r.stdout and plugins.code_id(after) in r.stdout, r.stdout

    _plugin(plugin, "chg_act", 3.0)  # changed after training: eval refuses, the report marks the run
    ev = ["eval", str(tmp_path / "res" / "chg"), "--split", "val", "--k", "4", "--trust"]
    one_line_error(run_cli(*ev), str(plugin.resolve()), "changed since this run was trained", "--allow-changed-code")
    assert runs.read_evals(run_dir) == []
    r = run_cli("report", str(tmp_path / "res" / "chg"), "--trust", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0 and "figures missing" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "changed since this run was trained" in (tmp_path / "rep" / "index.html").read_text()
    r = run_cli(*ev, "--allow-changed-code")
    assert r.returncode == 0 and "evaluated" in r.stdout, r.stderr[-2000:]


def test_reading_a_results_folder_runs_none_of_its_code_unless_asked(tmp_path):
    plugin = _plugin(tmp_path / "marker_plugin.py", "marker_act", 1.0, marker=True)
    marker = Path(str(plugin) + ".marker")
    cfg = write(tmp_path, "name: m\nimports: [marker_plugin.py]\nmodel: {encoder: {activation: marker_act}}\n")
    # trained in this process (the plugin's name is its own); every reader below is a real command
    r = invoke("run", str(cfg), "--out", str(tmp_path / "res"), *[a for o in CODE_TINY for a in ("--set", o)])
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = runs.find_runs(tmp_path / "res")
    assert marker.is_file()  # training imports it, as asked
    marker.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    r = run_cli("ls", str(tmp_path / "res"), cwd=elsewhere)
    assert r.returncode == 0 and run_dir.name in r.stdout, r.stderr
    code = ("import sys, vaebench; df = vaebench.load(sys.argv[1]); f = vaebench.load(sys.argv[1], final=True); "
            "print(len(df), f['model.encoder.activation'].astype(str).iloc[0])")
    import subprocess
    import os
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "res")], capture_output=True, text=True,
                       cwd=elsewhere, env=dict(os.environ), timeout=120)
    assert p.returncode == 0 and p.stdout.split()[1] == "marker_act", p.stderr  # the keys still read
    r = run_cli("report", str(tmp_path / "res"), cwd=elsewhere)
    assert r.returncode == 0 and "figures missing" in r.stdout, r.stderr[-3000:]
    assert (tmp_path / "res" / "report" / "runs" / "m" / run_dir.name / "terms.png").is_file()
    assert "--trust" in (tmp_path / "res" / "report" / "index.html").read_text()
    needs = (f"needs plugin {plugin.resolve()}", f"--import {plugin.resolve()}", "--trust")
    one_line_error(run_cli("eval", str(tmp_path / "res"), "--split", "val", "--k", "4", cwd=elsewhere), *needs)
    one_line_error(run_cli("sample", str(run_dir), "--out", str(tmp_path / "s.png"), cwd=elsewhere), *needs)
    one_line_error(run_cli("reconstruct", str(run_dir), "--out", str(tmp_path / "r.png"), cwd=elsewhere), *needs)
    assert not marker.exists() and not (tmp_path / "s.png").exists()
    assert runs.read_evals(run_dir) == []

    r = run_cli("eval", str(tmp_path / "res"), "--split", "val", "--k", "4", "--trust", cwd=elsewhere)
    assert r.returncode == 0 and "evaluated" in r.stdout, r.stderr[-3000:]
    assert marker.read_text() == "imported\n"  # once, by the eval that trusted it
    r = run_cli("sample", str(run_dir), "--out", str(tmp_path / "s.png"), "--import", str(plugin), cwd=elsewhere)
    assert r.returncode == 0 and (tmp_path / "s.png").is_file(), r.stderr
    r = run_cli("report", str(tmp_path / "res"), "--trust", "--out", str(tmp_path / "rep2"), cwd=elsewhere)
    assert r.returncode == 0 and "figures missing" not in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("name", ["os", "json", "yaml", "os.path"])
def test_a_standard_library_or_installed_module_is_not_a_plugin(tmp_path, name):
    cfg = write(tmp_path, f"imports: [{name}]\n")
    one_line_error(invoke("config", str(cfg)), repr(name), "standard library or installed module")
    one_line_error(invoke("ls", str(tmp_path), "--import", name), repr(name), "not a plugin")
    with pytest.raises(ConfigError, match="not a plugin"):
        plugins.resolve([name])
