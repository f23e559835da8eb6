"""Every user mistake: one line on stderr, exit code 2, no traceback, nothing damaged."""

import sys
from pathlib import Path

import pytest
from conftest import run_cli


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
    _one_line_error(run_cli("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)), "not found", "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = _write(tmp_path, "name: x\nmodel:\n  latent: [8\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path)), "YAML syntax error", "cfg.yaml:")


def test_unknown_key_suggests_the_nearest(tmp_path):
    p = _write(tmp_path, "model:\n  latnt: 8\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path)), "model.latnt", "model.latent")


def test_unknown_override_key(tmp_path):
    p = _write(tmp_path, "name: x\n")
    _one_line_error(run_cli("run", str(p), "--set", "train.stpes=5", "--out", str(tmp_path)), "train.steps")


def test_wrong_type(tmp_path):
    p = _write(tmp_path, "train:\n  steps: many\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path)), "train.steps", "many")


def test_negative_value(tmp_path):
    p = _write(tmp_path, "optim:\n  lr: -1\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path)), "optim.lr")


@pytest.mark.slow
def test_unknown_component_lists_known_names(tmp_path):
    p = _write(tmp_path, "objective:\n  kl: analytical\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path)), "analytical", "analytic", "monte_carlo")
    p = _write(tmp_path, "model:\n  encoder: {name: cnn}\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path)), "cnn", "mlp")


def test_not_a_mapping(tmp_path):
    p = _write(tmp_path, "- a\n- b\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path)), "mapping")


def test_missing_data_folder(tmp_path):
    p = _write(tmp_path, f"data:\n  dataset: mnist28\n  root: {tmp_path / 'no-data'}\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path / "out")), "no-data")


def test_corrupt_data_file(tmp_path):
    root = tmp_path / "idx"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (root / name).write_bytes(b"\x00\x00\x08\x03garbage")
    p = _write(tmp_path, f"data:\n  dataset: mnist28\n  root: {root}\n")
    _one_line_error(run_cli("run", str(p), "--out", str(tmp_path / "out")), str(root))


@pytest.mark.slow
def test_an_error_leaves_existing_results_untouched(tmp_path, tiny_overrides):
    out = tmp_path / "out"
    good = _write(tmp_path, "name: keep\n")
    ok = run_cli("run", str(good), "--out", str(out), *[f"--set={o}" for o in tiny_overrides])
    assert ok.returncode == 0, ok.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = _write(tmp_path, "name: keep\ntrain:\n  stepz: 3\n")
    _one_line_error(run_cli("run", str(bad), "--out", str(out)))
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
