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


# A run that overfits 100 images: its validation ELBO peaks well before the end (step 80 of 240 here)
KEEP_BEST = {"data.per_class": 10, "data.val_size": 100, "train.steps": 240, "train.batch_size": 50,
             "train.eval_every": 20, "train.flush_every": 20, "train.checkpoint_every": 40, "train.threads": 1,
             "eval.enabled": False, "train.keep_best": True, "optim.lr": 1e-2,
             "model.encoder.hidden": [256], "model.decoder.hidden": [256]}


def _best_val_row(run_dir):
    m = runs.read_metrics(run_dir)
    val = m[m.split == "val"]
    return val.loc[val.elbo.idxmax()]


def _recomputed_val(cfg, run_dir, tmp):
    """best.pt's validation terms, recomputed the way training computes them."""
    import torch

    from vaebench.training.trainer import TrainingRun, evaluate

    t = TrainingRun(cfg, tmp, torch.device("cpu"))
    t.model.load_state_dict(torch.load(run_dir / runs.BEST, weights_only=True)["model"])
    return evaluate(t.model.eval(), t.objective, t.val_x, t.binarizer).tolist()


def test_keep_best_keeps_the_best_validation_model_and_evaluates_it(tmp_path):
    """best.pt is the model of the best validation ELBO (before the end here), final.json has its
    step and terms, the end-of-run evaluation covers it, and load(reduce="best") reads them."""
    o = KEEP_BEST | {"eval.enabled": True, "eval.k": 4}
    assert resolve({}, o).run_hash() == resolve({}, {**o, "train.keep_best": False}).run_hash()  # not in the id
    res = vaebench.run({"name": "b"}, out=tmp_path, overrides=o, progress=False)
    best, row = res.final["best"], _best_val_row(res.path)
    assert best["step"] == row.step < 240 and best["val"]["elbo"] == row.elbo
    assert best["val"]["elbo"] > res.final["val"]["elbo"]
    recomputed = _recomputed_val(resolve({"name": "b"}, o), res.path, tmp_path / "scratch")
    assert recomputed == [best["val"][t] for t in runs.TERMS]
    entry = runs.find_eval(runs.read_evals(res.path), "test", 4, "best")
    assert entry["step"] == best["step"] and entry["iw_ll"] != runs.find_eval(runs.read_evals(res.path), "test", 4)["iw_ll"]
    fin = vaebench.load(tmp_path, final=True, reduce="best")
    assert fin.loc[0, "best_step"] == best["step"] and fin.loc[0, "val_elbo"] == best["val"]["elbo"]
    assert fin.loc[0, "test_iw_ll"] == entry["iw_ll"] and fin.loc[0, "test_k"] == 4
    assert fin.attrs["reduce"] == "best" and vaebench.load(tmp_path, final=True).loc[0, "val_elbo"] == res.final["val"]["elbo"]


def test_keep_best_survives_a_kill_and_resume(tmp_path, monkeypatch):
    """Cut after the best was found (step 180 of 240, last checkpoint at 160): the resumed run ends
    with the best.pt and final.json of an uninterrupted one, bit for bit."""
    import pytest
    import torch

    from vaebench.training import train_run
    from vaebench.training.trainer import TrainingRun

    from conftest import interrupt_at

    cfg = resolve({"name": "b"}, KEEP_BEST)
    ref = train_run(cfg, tmp_path / "ref", "cpu", progress=False)
    flush = interrupt_at(monkeypatch, 180)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", "cpu", progress=False)
    assert not (tmp_path / "cut" / runs.BEST).exists() and runs.checkpoint_step(tmp_path / "cut") == 160
    monkeypatch.setattr(TrainingRun, "flush", flush)
    again = train_run(cfg, tmp_path / "cut", "cpu", progress=False)
    assert again.final["best"] == ref.final["best"] and again.final["best"]["step"] < 160
    a, b = (torch.load(d / runs.BEST, weights_only=True) for d in (tmp_path / "ref", tmp_path / "cut"))
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_keep_best_is_the_same_on_every_engine(tmp_path):
    """Each run of a fused and of a generic stack keeps its own best: the step and validation
    terms of the run trained alone with autograd (to float reassociation)."""
    import pytest

    from vaebench.training import train_group, train_run

    seeds = (0, 1)
    alone = [train_run(resolve({"name": "b"}, {**KEEP_BEST, "seed": s, "train.engine": "torch"}),
                       tmp_path / f"torch{s}", "cpu", progress=False).final["best"] for s in seeds]
    for engine in ("fused", "generic"):
        cfgs = [resolve({"name": "b"}, {**KEEP_BEST, "seed": s, "train.engine": engine}) for s in seeds]
        res = train_group(cfgs, [tmp_path / f"{engine}{s}" for s in seeds], "cpu", progress=False)
        assert {r.path.name: (runs.read_json(r.path / runs.ENV) or {}).get("engine") for r in res} == {
            f"{engine}{s}": engine for s in seeds}
        for r, ref in zip(res, alone):
            got = r.final["best"]
            assert got["step"] == ref["step"], engine
            for split in ("train", "val"):
                assert got[split]["elbo"] == pytest.approx(ref[split]["elbo"], rel=1e-4, abs=1e-4), (engine, split)
