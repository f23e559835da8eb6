"""Property-based: any config file or --set value either validates or is refused with exit 2, at most
3 stderr lines, no traceback, nothing written (hypothesis generates wrong types, unicode keys, huge
numbers, deep nesting, aliases, duplicate keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaebench.cli import cli
from vaebench.config import MAX_YAML_DEPTH, STUDY_KEYS, known_keys

KEYS = known_keys() + list(STUDY_KEYS)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**6, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["mlp", "iwae", "adam", "auto", "off", "1e9", ".inf", "-1", "0"]))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from([k.rsplit(".", 1)[-1] for k in KEYS]), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(keys, inner, max_size=4)), max_leaves=20)
configs = st.dictionaries(keys, values, max_size=8)


def _bomb(width: int, depth: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


texts = st.one_of(
    st.text(max_size=200),  # any unicode at all
    st.builds(lambda k, v: f"{k}: {v}\n{k}: {v}\n", st.sampled_from(KEYS), st.integers()),  # a duplicate key
    st.builds(lambda n: "a: " + "[" * n + "]" * n + "\n", st.integers(1, 3 * MAX_YAML_DEPTH)),  # deep nesting
    st.builds(lambda n: "".join("  " * i + f"k{i}:\n" for i in range(n)) + "  " * n + "v\n", st.integers(1, 80)),
    st.builds(_bomb, st.integers(2, 12), st.integers(2, 9)),  # aliases that multiply
)


def invoke(tmp_path: Path, config_text: str, sets: list[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text, encoding="utf-8")
    out = tmp_path / "out"
    args = ["run", str(cfg), "--out", str(out), "--dry-run"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, prog_name="vaebench")
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"a traceback for {config_text[:200]!r} {sets!r}") from res.exception
    assert res.exit_code in (0, 2), (res.exit_code, res.stdout, res.stderr)
    if res.exit_code == 2:
        lines = res.stderr.strip().splitlines()
        assert 1 <= len(lines) <= 3 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith("vaebench: error: "), res.stderr
    assert not out.exists()  # validation and --dry-run write nothing


@SETTINGS
@given(config=configs)
def test_any_config_mapping_validates_or_is_one_clear_error(tmp_path_factory, config):
    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    invoke(tmp_path_factory.mktemp("c"), text, [])


@SETTINGS
@given(text=texts)
def test_any_config_text_validates_or_is_one_clear_error(tmp_path_factory, text):
    invoke(tmp_path_factory.mktemp("t"), text, [])


@SETTINGS
@given(key=keys, value=st.one_of(st.text(max_size=40), scalars.map(str), texts))
def test_any_set_value_validates_or_is_one_clear_error(tmp_path_factory, key, value):
    invoke(tmp_path_factory.mktemp("s"), "name: p\n", [f"{key}={value}"])


@pytest.mark.parametrize("text, said", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("seed: 1\nseed: 2\n", "duplicate key 'seed' at line 2 (first at line 1)"),
    ("optim:\n  lr: .inf\n", "'optim.lr'"),
    ("objective:\n  beta: .nan\n", "'objective.beta'"),
    ("model:\n  latent: 1000000000\n", "parameters; the limit is"),
    ("model:\n  encoder: {hidden: [200000, 200000]}\n", "parameters; the limit is"),
    ("objective:\n  k: 1000000\n", "objective.k"),
    ("eval:\n  k: 100000000\n", "eval.k"),
    ("seeds: 1000000000\n", "at most 10,000"),
    (_bomb(10, 9), "expands to more than 100,000 values"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 32 levels"),
])
def test_each_bad_input_of_the_issue_is_one_line(tmp_path, text, said):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "o"), "--dry-run"], prog_name="vaebench")
    assert res.exit_code == 2 and said in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "o").exists()


def test_a_bad_set_value_is_blamed_on_the_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: p\noptim:\n  lr: 0.001\n")
    res = CliRunner().invoke(cli, ["run", str(cfg), "--set", "optim.lr=abc", "--dry-run"], prog_name="vaebench")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("vaebench: error: invalid value for 'optim.lr' in --set optim.lr=abc: Input should "
                                  "be a valid number, unable to parse string as a number (got 'abc')")
    res = CliRunner().invoke(cli, ["run", str(cfg), "--set", "optim.lr=1e-3,.inf", "--dry-run"], prog_name="vaebench")
    assert res.exit_code == 2 and "in --set optim.lr=inf" in res.stderr and str(cfg) not in res.stderr, res.stderr
