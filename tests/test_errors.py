"""Every user mistake: one line on stderr, exit code 2, no traceback, nothing damaged."""

import sys
from pathlib import Path

import pytest
from conftest import invoke


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vaebench: error:"), err
    for n in needles:
        assert n in err, err
    return err


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_missing_config_file(tmp_path):
    _one_line_error(invoke("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)), "not found", "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = _write(tmp_path, "name: x\nmodel:\n  latent: [8\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path)), "YAML syntax error", "cfg.yaml:")


def test_unknown_key_suggests_the_nearest(tmp_path):
    p = _write(tmp_path, "model:\n  latnt: 8\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path)), "model.latnt", "model.latent")


def test_unknown_override_key(tmp_path):
    p = _write(tmp_path, "name: x\n")
    _one_line_error(invoke("run", str(p), "--set", "train.stpes=5", "--out", str(tmp_path)), "train.steps")


def test_wrong_type(tmp_path):
    p = _write(tmp_path, "train:\n  steps: many\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path)), "train.steps", "many")


def test_negative_value(tmp_path):
    p = _write(tmp_path, "optim:\n  lr: -1\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path)), "optim.lr")


@pytest.mark.slow
def test_unknown_component_lists_known_names(tmp_path):
    p = _write(tmp_path, "objective:\n  kl: analytical\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path)), "analytical", "analytic", "monte_carlo")
    p = _write(tmp_path, "model:\n  encoder: {name: cnn}\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path)), "cnn", "mlp")


def test_not_a_mapping(tmp_path):
    p = _write(tmp_path, "- a\n- b\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path)), "mapping")


def test_missing_data_folder(tmp_path):
    p = _write(tmp_path, f"data:\n  dataset: mnist28\n  root: {tmp_path / 'no-data'}\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path / "out")), "no-data")


def test_corrupt_data_file(tmp_path):
    root = tmp_path / "idx"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (root / name).write_bytes(b"\x00\x00\x08\x03garbage")
    p = _write(tmp_path, f"data:\n  dataset: mnist28\n  root: {root}\n")
    _one_line_error(invoke("run", str(p), "--out", str(tmp_path / "out")), str(root))


@pytest.mark.slow
def test_an_error_leaves_existing_results_untouched(tmp_path, tiny_overrides):
    out = tmp_path / "out"
    good = _write(tmp_path, "name: keep\n")
    ok = invoke("run", str(good), "--out", str(out), *[f"--set={o}" for o in tiny_overrides])
    assert ok.returncode == 0, ok.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = _write(tmp_path, "name: keep\ntrain:\n  stepz: 3\n")
    _one_line_error(invoke("run", str(bad), "--out", str(out)))
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_a_closed_pipe_ends_quietly():
    """`vaebench config --components | head -1`: no 'Broken pipe' line, the pipe's exit status (141).
    The read end is closed before the command writes, so every write meets a closed pipe."""
    import subprocess

    exe = Path(sys.executable).with_name("vaebench")
    proc = subprocess.Popen([str(exe), "config", "--components"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err


def test_a_bad_study_key_in_set_names_the_override(tmp_path):
    cfg = _write(tmp_path, "name: s\nseeds: 2\n")
    err = _one_line_error(invoke("run", str(cfg), "--out", str(tmp_path / "out"), "--set", "seeds=abc"),
                          "--set seeds=abc")
    assert "cfg.yaml" not in err


def test_variants_merged_by_a_set_get_one_notice_line(tmp_path):
    cfg = _write(tmp_path, "name: s\nobjective: iwae\nvariants:\n  k1: {objective.k: 1}\n  k5: {objective.k: 5}\n"
                           "  baseline: {}\nseeds: 4\n")
    proc = invoke("run", str(cfg), "--out", str(tmp_path / "out"), "--set", "objective.k=3", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("vaebench: note:")]
    assert notes == ["vaebench: note: variants k1, k5 and baseline are the same run after --set objective.k=3: "
                     "kept once, 4 runs instead of 12"], proc.stderr
    assert "4 runs in" in proc.stdout


def test_a_broken_symlink_out_is_called_one(tmp_path):
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    cfg = _write(tmp_path, "name: s\n")
    err = _one_line_error(invoke("run", str(cfg), "--out", str(link)), "broken symbolic link", str(link))
    assert "is a file" not in err and not (tmp_path / "nowhere").exists()


def test_a_study_named_report_is_refused(tmp_path):
    cfg = _write(tmp_path, "name: report\n")
    _one_line_error(invoke("run", str(cfg), "--out", str(tmp_path / "out")), "may not be named 'report'",
                    "cfg.yaml")
    assert not (tmp_path / "out").exists()


def test_a_bug_prints_its_traceback_and_exits_70(tmp_path):
    """Exit 1 means "some runs are not done"; an unexpected exception has a code of its own."""
    import subprocess

    code = ("import sys, vaebench.api, vaebench.cli as c\n"
            "def boom(*a, **k):\n    raise ZeroDivisionError('planted bug')\n"
            "vaebench.api.ls = boom\nsys.argv = ['vaebench', 'ls', sys.argv[1]]\nc.main()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 70, (proc.returncode, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert err[0].startswith("Traceback") and "ZeroDivisionError: planted bug" in proc.stderr
    assert err[-1] == "vaebench: internal error (a bug): please report it, with the traceback above"
