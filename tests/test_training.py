"""The trainer's contract: run folder, determinism, NaN handling, load()."""

import json

import pandas as pd
import pyarrow.parquet as pq
import yaml

import vaebench
from vaebench import runs
from vaebench.config import resolve


def _run(tmp_path, overrides, extra=None, name="t"):
    o = dict(x.split("=", 1) for x in overrides)
    o.update(extra or {})
    return vaebench.run({"name": name}, out=tmp_path, overrides={k: yaml.safe_load(v) if isinstance(v, str) else v
                                                                 for k, v in o.items()}, progress=False)


def test_run_folder_contents(tmp_path, tiny_overrides):
    res = _run(tmp_path, tiny_overrides)
    d = res.path
    assert res.state == "done" and res.step == 60
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "status.json", "env.json", "metrics.parquet",
                                             "final.json", "checkpoint.pt"}
    assert not (d / "metrics").exists()  # parts were compacted
    status = json.loads((d / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 60
    env = json.loads((d / "env.json").read_text())
    assert {"vaebench", "torch", "python", "device", "git_commit"} <= set(env)
    # The resolved config has every default filled in and round-trips to the same config.
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["model"]["encoder"] == {"name": "mlp", "hidden": [128], "activation": "tanh", "dropout": 0.0}
    assert resolve(cfg).to_dict() == cfg
    m = pq.read_table(d / "metrics.parquet").to_pandas()
    train, val = m[m.split == "train"], m[m.split == "val"]
    assert list(train.step) == list(range(1, 61))
    assert list(val.step) == [0, 20, 40, 60]
    pd.testing.assert_series_equal(train.elbo, train.rec - train.kl, check_names=False, atol=1e-4, rtol=0)  # float32 terms


def test_same_seed_gives_identical_parquet(tmp_path, tiny_overrides):
    a = _run(tmp_path / "a", tiny_overrides)
    b = _run(tmp_path / "b", tiny_overrides)
    assert (a.path / "metrics.parquet").read_bytes() == (b.path / "metrics.parquet").read_bytes()
    assert a.final == b.final
    c = _run(tmp_path / "c", tiny_overrides, {"seed": 1})
    assert not runs.read_metrics(c.path).equals(runs.read_metrics(a.path))


def test_rerun_skips_a_done_run(tmp_path, tiny_overrides):
    a = _run(tmp_path, tiny_overrides)
    before = (a.path / "metrics.parquet").read_bytes()
    again = _run(tmp_path, tiny_overrides)
    assert again.state == "skipped" and again.path == a.path
    assert (a.path / "metrics.parquet").read_bytes() == before


def test_nan_run_stops_and_is_marked_failed(tmp_path, tiny_overrides):
    res = _run(tmp_path, tiny_overrides, {"optim.lr": 1e12, "optim.name": "sgd"})
    assert res.state == "failed"
    status = runs.read_status(res.path)
    assert status["state"] == "failed" and "NaN" in status["reason"] and f"step {res.step + 1}" in status["reason"]
    m = runs.read_metrics(res.path)
    assert len(m) > 0 and m[["rec", "kl", "elbo"]].notna().all().all()
    assert m.step.max() <= res.step


def test_load_long_form_and_final(tmp_path, tiny_overrides):
    _run(tmp_path, tiny_overrides, name="a")
    _run(tmp_path, tiny_overrides, {"objective.k": 3}, name="b")
    df = vaebench.load(tmp_path)
    assert {"run", "step", "split", "term", "value", "objective.k", "model.latent"} <= set(df.columns)
    assert set(df.split) == {"train", "val"} and set(df.term) == {"rec", "kl", "elbo"}
    assert sorted(df["objective.k"].unique()) == [1, 3]
    fin = vaebench.load(tmp_path, final=True)
    assert len(fin) == 2 and {"val_elbo", "val_rec", "val_kl", "train_elbo"} <= set(fin.columns)
    assert list(fin.engine) == ["fused", "fused"] and fin.engine_why.isna().all()
    assert list(vaebench.ls(tmp_path).engine) == ["fused", "fused"]
    last = df[(df.split == "val") & (df.term == "elbo")].sort_values("step").groupby("run", observed=True).tail(1)
    assert len(last) == 2
