"""vaebench.load: a compact, typed DataFrame (categoricals for names, numeric keys numeric, widths as
strings in numeric order, variants in study order, no all-empty columns) filtered in pyarrow, that
round-trips through parquet; load(final=True)'s k and reduce."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import yaml

import vaebench
from vaebench import runs
from vaebench.errors import VaebenchError

VARIANTS = {"baseline": {}, "width32": {"model.encoder.hidden": [32], "model.decoder.hidden": [32]},
            "wide2": {"model.encoder.hidden": [256, 128], "model.decoder.hidden": [128, 256]},
            "k10": {"objective.k": 10}, "k1": {"objective.k": 1}}
STEPS = 50


def write_study(root: Path) -> Path:
    """Run folders as a finished study writes them (no training): config, status, metrics, final, grid."""
    s = vaebench.study({"name": "st", "objective": {"k": 2}, "train": {"steps": STEPS, "eval_every": 10},
                        "variants": VARIANTS, "seeds": 2})
    study = root / "st"
    for spec, folder in zip(s.runs, s.folders()):
        d = study / folder
        d.mkdir(parents=True)
        runs.atomic_write(d / runs.CONFIG, yaml.safe_dump(spec.config.to_dict(), sort_keys=False))
        runs.write_json(d / runs.STATUS, {"state": "done", "step": STEPS})
        step = np.concatenate([np.arange(1, STEPS + 1), np.arange(0, STEPS + 1, 10)])  # val at 0 and every 10th
        split = ["train"] * STEPS + ["val"] * (STEPS // 10 + 1)
        rec = -100.0 + step + spec.config.seed
        runs.write_table(d / runs.METRICS, pa.table({"step": step, "split": split, "rec": rec, "kl": np.full(len(step), 5.0),
                                                     "elbo": rec - 5}, schema=runs.METRICS_SCHEMA))
        runs.write_json(d / runs.FINAL, {"val": {"elbo": -40.0, "rec": -35.0, "kl": 5.0, "n": 100},
                                         "train": {"elbo": -39.0, "rec": -34.0, "kl": 5.0, "n": 100}})
        torch.save({"step": STEPS}, d / runs.CHECKPOINT)  # a readable checkpoint: the run is done (run_state)
    runs.atomic_write(study / runs.GRID, yaml.safe_dump(s.to_dict(), sort_keys=False))
    return study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_study(tmp_path_factory.mktemp("load"))


def test_long_form_is_typed_and_compact(study):
    df = vaebench.load(study)
    assert len(df) == 10 * (STEPS + STEPS // 10 + 1) * 3
    for col in ("run", "study", "variant", "split", "term", "state", "model.encoder.hidden", "objective.kl"):
        assert isinstance(df[col].dtype, pd.CategoricalDtype), col
    assert df["step"].dtype.kind == "i" and df["value"].dtype == np.float64
    # numeric keys are numbers: arithmetic, means and numpy work
    assert df["objective.k"].dtype == np.int64 and df["optim.lr"].dtype == np.float64
    assert df["train.steps"].dtype == np.int64 and ((df["train.steps"] * 2) == 2 * STEPS).all()
    assert df["objective.k"].max() == 10 and np.isclose(np.log(df["optim.lr"]).mean(), np.log(1e-3))
    # widths are readable strings, in numeric order (not "128" < "256x128" < "32")
    assert list(df["model.encoder.hidden"].cat.categories) == ["32", "128", "256x128"]
    assert df.groupby("model.encoder.hidden", observed=True)["run"].nunique().to_dict() == {"32": 2, "128": 6,
                                                                                           "256x128": 2}
    # variant in the study's order; no all-empty column (data.root, train.threads are null in every run)
    assert list(df["variant"].cat.categories) == list(VARIANTS)
    assert "data.root" not in df and "train.threads" not in df and "eval.batch" not in df
    # compact: no Python objects, one byte of codes per row for each label, 8 bytes for each number
    assert not [c for c in df if df[c].dtype == object]
    assert all(df[c].cat.codes.dtype.itemsize == 1 for c in df if isinstance(df[c].dtype, pd.CategoricalDtype))
    per_row = sum(1 if isinstance(df[c].dtype, pd.CategoricalDtype) else df[c].dtype.itemsize for c in df)
    assert df.memory_usage(deep=True).sum() / len(df) <= per_row + 2  # + the categories themselves
    assert set(df.attrs["varied"]) >= {"objective.k", "model.encoder.hidden", "seed"}


def test_frames_round_trip_through_parquet(study, tmp_path):
    """Both forms write to parquet and read back equal (tuple categories could not: nested dictionary)."""
    for name, df in (("long", vaebench.load(study)), ("final", vaebench.load(study, final=True))):
        path = tmp_path / f"{name}.parquet"
        df.to_parquet(path)
        back = pd.read_parquet(path)
        pd.testing.assert_frame_equal(back, df)
        assert back.attrs["varied"] == df.attrs["varied"]


def test_final_columns_exist_while_nothing_is_done(tmp_path):
    """A study still training: the documented columns are there (NaN), so compare and plots can say
    what is missing instead of failing on a KeyError."""
    s = vaebench.study({"name": "busy", "train": {"steps": STEPS}, "seeds": 2})
    for spec, folder in zip(s.runs, s.folders()):
        d = tmp_path / "busy" / folder
        d.mkdir(parents=True)
        runs.atomic_write(d / runs.CONFIG, yaml.safe_dump(spec.config.to_dict(), sort_keys=False))
        runs.write_status(d, "running", 10, STEPS)
    for reduce in ("last", "best"):
        final = vaebench.load(tmp_path / "busy", final=True, reduce=reduce)
        documented = [*vaebench.results.DOCUMENTED, *(["best_step"] if reduce == "best" else [])]
        assert set(documented) <= set(final.columns), reduce
        assert final[documented].isna().all().all() and len(final) == 2
        assert final["test_k"].dtype == "Int64" and final.attrs["reduce"] == reduce


def test_filters_split_term_and_columns_in_pyarrow(study):
    v = vaebench.load(study, split="val", term="elbo", columns=["objective.k"])
    assert set(v["split"]) == {"val"} and set(v["term"]) == {"elbo"} and len(v) == 10 * (STEPS // 10 + 1)
    assert "objective.k" in v and "model.latent" not in v and {"run", "variant", "step", "value"} <= set(v.columns)
    full = vaebench.load(study)
    same = full[(full["split"] == "val") & (full["term"] == "elbo")]
    assert np.array_equal(v["value"].to_numpy(), same["value"].to_numpy())
    both = vaebench.load(study, term=["rec", "kl"])
    assert set(both["term"]) == {"rec", "kl"}
    with pytest.raises(VaebenchError, match="unknown split 'test'"):
        vaebench.load(study, split="test")
    with pytest.raises(VaebenchError, match="no column 'objective.kk'"):
        vaebench.load(study, columns=["objective.kk"])


def test_a_value_per_variant_the_readme_way(study):
    final = vaebench.load(study, final=True)
    assert final["variant"].tolist() == [v for v in VARIANTS for _ in range(2)]
    per_variant = final.groupby("variant", observed=True)["val_elbo"].mean()
    assert list(per_variant.index) == list(VARIANTS)
    last = (vaebench.load(study, split="val", term="elbo").sort_values("step")
            .groupby("run", observed=True).tail(1))
    assert len(last) == 10 and (last["step"] == STEPS).all()


def _entry(split, k, iw_ll, checkpoint="last"):
    return {"split": split, "k": k, "checkpoint": checkpoint, "iw_ll": iw_ll, "iw_ll_se": 0.1, "elbo": iw_ll - 1,
            "elbo_se": 0.1, "n": 10, "step": STEPS}


def test_final_takes_one_k_per_split(tmp_path):
    """Default: per split the largest k every run with that split has; k=...: that k (NaN where a
    run lacks it); a split with no k in common: each run's largest, attrs["k"] None."""
    study = write_study(tmp_path)
    dirs = runs.find_runs(study)
    for i, d in enumerate(dirs):
        runs.add_eval(d, _entry("test", 250, -30.0 - i))
        if i % 2:
            runs.add_eval(d, _entry("test", 1000, -29.0 - i))
        runs.add_eval(d, _entry("val", 100 + i, -40.0 - i))  # no val k in common
    final = vaebench.load(study, final=True)
    at = {d.relative_to(study).as_posix(): i for i, d in enumerate(dirs)}
    idx = [at[r] for r in final["run"]]
    assert final.attrs["k"] == {"test": 250, "val": None} and final.attrs["reduce"] == "last"
    assert (final["test_k"] == 250).all() and final["test_iw_ll"].tolist() == [-30.0 - i for i in idx]
    assert final["val_k"].tolist() == [100 + i for i in idx]
    thousand = vaebench.load(study, final=True, k=1000)
    assert thousand.attrs["k"]["test"] == 1000
    assert thousand["test_iw_ll"].fillna(0.0).tolist() == [(-29.0 - i) if i % 2 else 0.0 for i in idx]
    assert thousand["test_k"].isna().tolist() == [not i % 2 for i in idx]
    with pytest.raises(VaebenchError, match="unknown reduce 'mean'"):
        vaebench.load(study, final=True, reduce="mean")
    with pytest.raises(VaebenchError, match="final=True"):
        vaebench.load(study, k=250)


def test_reduce_best_without_keep_best_reads_the_best_validation_row(tmp_path):
    """A run trained without train.keep_best has no best.pt: reduce="best" gives its validation
    terms at the best logged validation step and no test numbers (NaN), never the last ones."""
    study = write_study(tmp_path)
    for d in runs.find_runs(study):
        runs.add_eval(d, _entry("test", 250, -30.0))
    best = vaebench.load(study, final=True, reduce="best")
    # the synthetic validation ELBO rises with the step (rec = -100 + step + seed): best at the end
    assert (best["best_step"] == STEPS).all() and best["test_iw_ll"].isna().all() and best["test_k"].isna().all()
    assert best["val_elbo"].tolist() == [-100.0 + STEPS + s - 5 for s in best["seed"]]
    assert best["train_elbo"].isna().all()
