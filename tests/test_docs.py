"""The documentation: the MkDocs site builds with --strict, its generated pages are current, the
config reference lists every key of the schema, and the README's tour runs as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from vaebench import runs
from vaebench.config import key_infos

from conftest import REPO, run_cli

GEN = REPO / "scripts" / "gen_docs.py"


def test_the_generated_pages_are_current():
    """Config reference, CLI reference and benchmarks page equal what the schema, the commands and
    the CSVs give now (`make docs` rewrites them)."""
    p = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr + p.stdout


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs site needs the extra vaebench[docs] (make installs it)")
    pytest.importorskip("material", reason="the docs site needs mkdocs-material (vaebench[docs])")
    pytest.importorskip("mkdocstrings", reason="the API page needs mkdocstrings (vaebench[docs])")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       capture_output=True, text=True, cwd=REPO, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-4000:]
    site = tmp_path / "site"
    nav = re.findall(r"^\s+- (?:\"[^\"]+\"|[^:\"]+): ([\w/.-]+\.md)$", (REPO / "mkdocs.yml").read_text(), flags=re.M)
    assert len(nav) == len(list((REPO / "docs").rglob("*.md"))) and all((REPO / "docs" / page).is_file() for page in nav)
    for page in nav:  # every page of the nav was rendered
        html = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.is_file(), page
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ("run_study", "evaluate", "compare", "Registry", "check_kernels"):  # mkdocstrings found them
        assert 'id="vaebench.' in api and name in api, name
    config = (site / "reference" / "config" / "index.html").read_text()
    assert "objective.free_bits_per" in config and "train.matmul" in config


def _schema_keys() -> list[dict]:
    """The schema's keys in a fresh process: this one may have imported other tests' plugins."""
    code = ("import json; from vaebench.config import key_infos; print(json.dumps([dict(key=i.key, section=i.section, "
            "changes_numbers=i.changes_numbers, per_run=i.per_run) for i in key_infos()]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return [SimpleNamespace(**d) for d in json.loads(p.stdout)]


def test_the_config_reference_lists_every_key_with_its_default_and_facts():
    page = (REPO / "docs" / "reference" / "config.md").read_text()
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `([^`]+)` \|.*$", page, flags=re.M)}
    infos = _schema_keys()
    assert len(infos) > 70 and {i.key for i in key_infos()} >= {i.key for i in infos}
    for info in infos:
        if "." not in info.key and info.section:
            assert f"## `{info.key}`" in page, info.key
            continue
        assert info.key in rows, info.key
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", rows[info.key])[1:-1]]
        assert cells[3] == ("yes" if info.changes_numbers else "no"), info.key
        assert cells[4] == ("yes" if info.per_run else "no"), info.key
    row = rows["objective.k"]
    assert "`1`" in row and "z samples per image" in row


def test_a_plugins_keys_are_in_the_reference_once_it_is_imported():
    p = run_cli("config", "--reference", "--import", str(REPO / "tests" / "plugin_example" / "my_components.py"))
    assert p.returncode == 0, p.stderr
    scale = next(line for line in p.stdout.splitlines() if line.startswith("| `model.prior.scale` |"))
    assert "`1.0`" in scale and "the scale b of every dimension" in scale and "my_components" in scale
    assert "`laplace` (my_components)" in p.stdout and "`silu` (my_components)" in p.stdout
    assert "model.prior.scale" not in (REPO / "docs" / "reference" / "config.md").read_text()


def test_the_readme_is_short_and_links_only_pages_that_exist():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert text.splitlines()[0] == "# vaebench" and "make run" in text and "make test" in text
    for target in re.findall(r"\]\(([^)#]+\.md)", text):
        assert (REPO / target).is_file(), target


TINY = ["--set", "data.per_class=20", "--set", "data.val_size=40", "--set", "train.steps=30",
        "--set", "train.batch_size=20", "--set", "train.eval_every=10", "--set", "train.flush_every=10",
        "--set", "train.checkpoint_every=10", "--set", "eval.splits=[test]", "--set", "eval.k=3", "--set", "seeds=1"]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path):
    """Every command of the tour, in a fresh folder with the experiments copied, with fewer updates,
    one seed and a small evaluation; then its Python block on the results, and the component example."""
    work = tmp_path / "work"
    shutil.copytree(REPO / "experiments", work / "experiments")
    tour, component_cmd = _blocks("bash")[1], _blocks("bash")[2]
    python_tour, component = _blocks("python")
    for line in tour.splitlines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "vaebench", line
        args = args[1:]
        if args[0] == "run" and "--dry-run" not in args:
            args += TINY
        if args[0] == "eval":  # the tour's is k = 5,000
            args = [a for a in args if a not in ("5000",)]
            args[args.index("--k"):args.index("--k") + 1] = ["--k", "4"]
        p = run_cli(*args, cwd=work, timeout=600)
        assert p.returncode == 0, (line, p.stderr[-3000:])
    assert len(runs.find_runs(work / "results" / "ablations")) == 8
    assert (work / "results" / "ablations" / "report" / "index.html").is_file()

    script = "import os\nos.chdir(%r)\n%s\nprint(len(runs), len(curves))\n" % (str(work), python_tour)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split()[-2] == "8" and int(p.stdout.split()[-1]) > 0

    (work / "my_components.py").write_text(component)
    args = shlex.split(component_cmd.replace("\\\n", " "))[1:] + TINY  # a line continued with \\
    p = run_cli(*args, cwd=work, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (run_dir,) = [d for d in runs.find_runs(work / "results" / "baseline")
                  if runs.read_config(d)["model"]["encoder"]["activation"] == {"name": "silu", "beta": 1.0}
                  and runs.read_config(d)["seed"] == 0]
    assert runs.read_status(run_dir)["state"] == "done"
