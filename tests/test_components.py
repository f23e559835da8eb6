"""Components as contracts: a user's component brings its own hyperparameters, and they work like
built-in keys everywhere (YAML, grid, --set, -j 2 workers, report, eval, compare, config, load),
while the ids of configs that do not use them stay as they were."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
import yaml

import vaebench

from vaebench import elbo, runs
from vaebench.components import ACTIVATIONS, KL_ESTIMATORS, NETWORKS, OPTIMIZERS, PRIORS, build, build_model
from vaebench.config import flatten, key_info, resolve
from vaebench.errors import ConfigError
from vaebench.registry import ComponentConfig, Registry

from conftest import REPO, invoke, one_line_error, run_cli

PLUGIN = REPO / "tests" / "plugin_hyper"
TINY = ["--set", "data.per_class=30", "--set", "data.val_size=40", "--set", "train.steps=40",
        "--set", "train.batch_size=30", "--set", "train.eval_every=20", "--set", "train.flush_every=20",
        "--set", "train.checkpoint_every=20", "--set", "eval.k=5",
        "--set", "eval.splits=[val]"]  # a cheap end-of-run evaluation: 40 validation images, not 10,000 test images


@pytest.mark.slow
def test_a_plugins_hyperparameters_through_the_cli(tmp_path, monkeypatch):
    """A grid over a plugin activation's own key, -j 2, then report, eval, compare, config and load.
    The training and compare are real commands (compare must run none of the folder's code); report,
    eval and config run in this process, which imports the plugin as load() below does."""
    work = tmp_path / "work"
    shutil.copytree(PLUGIN, work)
    r = run_cli("run", "study.yaml", "-j", "2", *TINY, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    study = work / "results" / "hyper"
    run_dirs = runs.find_runs(study)
    assert len(run_dirs) == 4 and all(runs.run_state(d).state == "done" for d in run_dirs)
    slopes = sorted(runs.read_config(d)["model"]["encoder"]["activation"]["slope"] for d in run_dirs)
    assert slopes == [0.05, 0.05, 0.3, 0.3]
    for d in run_dirs:
        cfg = runs.read_config(d)
        assert cfg["objective"]["kl"] == {"name": "free_bits", "threshold": 0.05, "per_dim": True}
        assert cfg["model"]["decoder"]["activation"] == {"name": "leaky", "slope": 0.01, "scale": 1.0}
        assert runs.read_json(d / runs.ENV)["engine"] in ("generic", "torch")  # no fused kernel declared
    assert len({d.name.rsplit("-", 1)[1] for d in run_dirs}) == 4  # the slope is part of the id

    monkeypatch.chdir(work)
    r = invoke("report", "results", "--trust")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "figures missing" not in r.stdout and "could not be drawn" not in r.stdout, r.stdout
    for d in run_dirs:
        for name in ("terms", "recon_train", "recon_val", "samples", "train_val"):
            assert (work / "results" / "report" / "runs" / "hyper" / d.name / f"{name}.png").is_file(), (d.name, name)
    figures = list((work / "results" / "report" / "studies" / "hyper").glob("final-*.png"))
    assert any("slope" in f.name for f in figures), figures
    index = (work / "results" / "report" / "index.html").read_text()
    assert "leaky slope" in index  # the axis is labelled with the plugin's own label

    r = invoke("eval", "results/hyper", "--split", "val", "--k", "4", "--import", "hyper_components.py")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("evaluated") == 4, r.stdout

    r = run_cli("compare", "results/hyper", cwd=work)  # runs none of the folder's code: readable key names
    assert r.returncode == 0, r.stderr[-3000:]
    assert "encoder activation slope" in r.stdout and "leaky slope" not in r.stdout, r.stdout

    r = invoke("config", "study.yaml")
    assert r.returncode == 0, r.stderr
    for text in ("slope for negative inputs", "nats below which a latent's KL is not penalized",
                 "name: free_bits", "[varied: 0.05, 0.3]"):
        assert text in r.stdout, (text, r.stdout)
    r = invoke("config", "--components", "--import", "hyper_components.py")
    assert r.returncode == 0, r.stderr
    assert "leaky (hyper_components)" in r.stdout and "free_bits (hyper_components)" in r.stdout, r.stdout

    vaebench.import_plugins([str(work / "hyper_components.py")])
    df = vaebench.load(study)
    assert {"model.encoder.activation", "model.encoder.activation.slope", "objective.kl.threshold"} <= set(df.columns)
    assert set(df["model.encoder.activation"].astype(str)) == {"leaky"}
    assert sorted(set(df["model.encoder.activation.slope"].astype(float))) == [0.05, 0.3]


def test_a_typo_in_a_plugins_key_is_one_line_with_did_you_mean(tmp_path):
    work = tmp_path / "work"
    shutil.copytree(PLUGIN, work)
    r = run_cli("run", "study.yaml", "--dry-run", "--set", "model.encoder.activation.slop=0.2", cwd=work)
    one_line_error(r, "model.encoder.activation.slop", "did you mean 'model.encoder.activation.slope'")
    bad = yaml.safe_load((work / "study.yaml").read_text())
    bad["objective"]["kl"]["treshold"] = 0.1
    (work / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = run_cli("run", "bad.yaml", "--dry-run", cwd=work)
    one_line_error(r, "unknown key 'objective.kl.treshold'", "did you mean 'objective.kl.threshold'")
    r = run_cli("run", "study.yaml", "--dry-run", "--set", "model.encoder.activation={name: leaky, slope: x}",
                cwd=work)
    one_line_error(r, "model.encoder.activation.slope")
    assert not (work / "results").exists()


def test_built_in_hyperparameters_in_grids_and_overrides():
    base = resolve({"optim": {"name": "sgd", "lr": 0.05}})
    assert base.optim.momentum == 0.0 and base.optim.nesterov is False
    s = vaebench.study({"name": "s", "optim": {"name": "sgd"}, "grid": {"optim.momentum": [0.0, 0.9]},
                        "model": {"encoder": {"dropout": 0.2}}})
    assert [r.config.optim.momentum for r in s.runs] == [0.0, 0.9]
    assert len({r.hash for r in s.runs}) == 2
    assert all(r.config.model.encoder.dropout == 0.2 for r in s.runs)
    # switching the optimizer drops the keys of the one before (adam's betas and eps), as a config group does
    assert resolve(resolve({}).to_dict(), ["optim.name=sgd", "optim.momentum=0.5"]).optim.momentum == 0.5
    with pytest.raises(ConfigError, match="nesterov"):
        resolve({"optim": {"name": "sgd", "nesterov": True}})
    with pytest.raises(ConfigError, match="the optimizer adam has no such key .the optimizer sgd has."):
        resolve({"optim": {"momentum": 0.9}})
    assert key_info("optim.momentum").label == "SGD momentum" and key_info("optim.momentum").per_run


def test_new_keys_at_their_default_leave_old_ids_alone():
    seed_protocol = {"data": {"val_from": "test", "val_size": 100}}  # the first schema's defaults
    base = resolve(seed_protocol)
    same = resolve({**seed_protocol, "model": {"encoder": {"dropout": 0.0}, "prior": "standard_normal"},
                    "optim": {"name": "adam"}, "objective": {"kl": {"name": "analytic"}}})
    assert same.run_hash() == base.run_hash() == "d3667ed047"
    assert resolve({"model": {"encoder": {"dropout": 0.1}}}).run_hash() != base.run_hash()
    # written as a name or as a mapping, a component is the same run
    a = resolve({"model": {"encoder": {"activation": "elu"}}})
    b = resolve({"model": {"encoder": {"activation": {"name": "elu", "alpha": 1.0}}}})
    assert a.run_hash() == b.run_hash() and a.to_dict() == b.to_dict()
    assert resolve({"model": {"encoder": {"activation": {"name": "elu", "alpha": 0.5}}}}).run_hash() != a.run_hash()


def test_a_component_without_a_config_model_gets_one_from_its_signature():
    reg = Registry("test widget", context=("n",))

    @reg.register("w")
    class Widget:
        def __init__(self, n: int, width: int = 3, gain: float = 0.5, tag: str | None = None):
            self.n, self.width, self.gain, self.tag = n, width, gain, tag

    cfg = reg.configure("w")
    assert isinstance(cfg, ComponentConfig) and cfg.params() == {"width": 3, "gain": 0.5, "tag": None}
    built = reg.build({"name": "w", "width": 5}, n=2)
    assert (built.n, built.width, built.gain) == (2, 5, 0.5)
    with pytest.raises(Exception, match="width"):
        reg.configure({"name": "w", "width": "wide"})

    with pytest.raises(TypeError, match="no default"):
        @reg.register("bad")
        class Bad:
            def __init__(self, n: int, size: int):
                pass


def test_dropout_trains_deterministically_and_is_off_at_zero(tmp_path):
    plain = build_model(resolve({}).model, 196)
    assert not any(type(m).__name__ == "Dropout" for m in plain.modules())
    with_dropout = build_model(resolve({"model": {"encoder": {"dropout": 0.5}}}).model, 196)
    assert sum(type(m).__name__ == "Dropout" for m in with_dropout.modules()) == 1
    over = {"data.per_class": 20, "data.val_size": 20, "train.batch_size": 20, "train.steps": 6,
            "train.eval_every": 3, "train.flush_every": 3, "train.checkpoint_every": 3, "eval.enabled": False,
            "model.encoder.dropout": 0.3, "model.decoder.dropout": 0.3}
    a = vaebench.run(resolve({"name": "a"}, over), out=tmp_path / "a", progress=False)
    b = vaebench.run(resolve({"name": "a"}, over), out=tmp_path / "b", progress=False)
    ma, mb = runs.read_metrics(a.path), runs.read_metrics(b.path)
    pd.testing.assert_frame_equal(ma, mb)
    assert runs.read_json(a.path / runs.ENV)["engine"] == "torch"  # dropout: neither fused nor vmapped


def test_the_prior_section_is_a_component():
    cfg = resolve({})
    assert cfg.model.prior.name == "standard_normal" and "standard_normal" in PRIORS
    model = build_model(cfg.model, 196)
    z = torch.randn(3, 8)
    torch.testing.assert_close(model.prior.log_prob(z), elbo.standard_normal_log_prob(z))
    assert model.sample(4, torch.Generator().manual_seed(0)).shape == (4, 196)
    assert list(model.prior.parameters()) == []  # N(0, I): the checkpoints hold what they held


def test_every_registry_entry_has_a_config_model():
    for registry in (ACTIVATIONS, KL_ESTIMATORS, NETWORKS, OPTIMIZERS, PRIORS):
        for name in registry:
            model = registry.config(name)
            assert issubclass(model, ComponentConfig), (registry.kind, name)
            cfg = registry.configure(name)
            assert cfg.name == name
    assert set(flatten({"model": {"encoder": {"activation": {"name": "leaky", "slope": 0.2}}}})) == {
        "model.encoder.activation", "model.encoder.activation.slope"}


def test_a_schedule_and_a_plain_config_model_of_a_users_own():
    from vaebench.components import SCHEDULES

    @SCHEDULES.register("test_linear_warmup")
    def linear_warmup(step: int, steps: int, warmup: int = 10) -> float:
        return min(1.0, (step + 1) / warmup)

    class PlainConfig(ComponentConfig):  # fields without key(): their names are their labels
        cap: float = 3.0

    @KL_ESTIMATORS.register("test_capped", config=PlainConfig)
    def capped(mu, sigma, z, cap: float = 3.0):
        return torch.clamp(elbo.kl_analytic(mu, sigma), max=cap)

    cfg = resolve({"optim": {"schedule": {"name": "test_linear_warmup", "warmup": 4}},
                   "objective": {"kl": {"name": "test_capped", "cap": 2.0}}})
    assert cfg.optim.schedule.warmup == 4 and key_info("optim.schedule.warmup").label == "warmup"
    assert key_info("objective.kl.cap").label == "cap" and key_info("objective.kl.cap").description
    parts = build(cfg, 196)
    assert parts.schedule(1, 100) == 0.5 and parts.objective.kl.keywords == {"cap": 2.0}
    mu, sigma = torch.zeros(2, 8), torch.full((2, 8), 3.0)
    assert float(parts.objective.kl(mu, sigma, None).max()) == 2.0
