"""The engines against autograd, one step at a time, and against each other over whole runs.

Every kernel a component declares is checked against autograd on the component's own torch code
by vaebench.components.check_kernels (tests/test_kernels.py); here one whole step of the fused and the generic engine, for every
built-in component, K in {1, 2, 7}, beta != 1 and stacks whose runs differ in the per-run keys.
Tolerances: float32 reassociation, GRAD_RTOL relative plus GRAD_ATOL absolute.
"""

import numpy as np
import pytest
import torch
from torch import nn

from vaebench import runs
from vaebench.components import ACTIVATIONS, POSTERIORS
from vaebench.components import kernels
from vaebench.components.posteriors import SigmaOutput
from vaebench.config import resolve
from vaebench.training import choose_engine, train_group, train_run
from vaebench.training.generic import GenericStack
from vaebench.training.fused import FusedStack
from vaebench.training.trainer import Trainer

from conftest import interrupt_at

GRAD_RTOL, GRAD_ATOL = 2e-4, 2e-6
RTOL, ATOL = 1e-4, 1e-4  # per-step metrics of whole runs on two engines (as tests/test_speed.py)
CPU = torch.device("cpu")
TINY = {"data.per_class": 20, "data.val_size": 20, "train.batch_size": 20, "train.threads": 1,
        "model.encoder.hidden": [16], "model.decoder.hidden": [16], "model.latent": 4}
FUSED_ACTS = [n for n in ACTIVATIONS if kernels.of(ACTIVATIONS.get(n), "activation") is not None]


# -- user components, registered as a user's own file would --------------------------------------
@ACTIVATIONS.register("test_swish")
class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


@POSTERIORS.register("test_sigma_floor")
class WideFloor(SigmaOutput):
    """Changes only the constant: the fused kernel reads self.floor, so it keeps the kernel."""

    floor = 0.05


@POSTERIORS.register("test_sigma_scaled")
class ScaledSigma(SigmaOutput):
    """Changes the math but not the kernel: the fused engine must refuse it."""

    def sigma(self, raw):
        return 2.0 * torch.nn.functional.softplus(raw) + self.floor


# -- one whole step of an engine against autograd -------------------------------------------------
def _cfgs(base, runs_):
    return [resolve({"name": f"r{i}"}, {**TINY, **base, **r}) for i, r in enumerate(runs_)]


def _autograd_grads(t, idx, gen_state):
    """The Trainer's own objective on the same rows and noise: its gradient per parameter, its terms."""
    gen = torch.Generator().set_state(gen_state)
    x = t.binarizer.sample(t.train_x[idx], gen)
    t.model.zero_grad(set_to_none=True)
    terms = t.objective(t.model, x, gen, step=0)
    terms.loss.backward()
    grads = [p.grad.clone() for p in t.model.parameters()]
    t.model.zero_grad(set_to_none=True)
    return grads, torch.stack([terms.rec.mean(), terms.kl.mean(), terms.elbo.mean()]).detach()


def _engine_grads(engine_cls, cfgs, tmp_path, monkeypatch):
    trainers = [Trainer(c, tmp_path / c.name, CPU) for c in cfgs]
    states = [t.noise_gen.get_state() for t in trainers]
    idx = torch.stack([t.perm[:c.train.batch_size] for t, c in zip(trainers, cfgs)])
    engine = engine_cls(trainers, CPU)
    out = torch.zeros(len(trainers), 3)
    if engine_cls is FusedStack:
        monkeypatch.setattr(engine, "update", lambda t: None)
        engine.step(idx, 1, out)
        got = [engine._views(engine.grad[j:j + 1]) for j in range(len(trainers))]
        got = [[g[0] for g in row] for row in got]
    else:
        for _, opt in engine.optimizers:
            monkeypatch.setattr(opt, "step", lambda: None)
        engine.step(idx, 1, out)
        if engine.whole:
            got = [[p.grad[j] for p in engine.params.values()] for j in range(len(trainers))]
        else:
            got = [[p.grad.clone() for p in t.model.parameters()] for t in trainers]
    for j, t in enumerate(trainers):
        want, terms = _autograd_grads(t, idx[j], states[j])
        for g, w in zip(got[j], want):
            torch.testing.assert_close(g, w, rtol=GRAD_RTOL, atol=GRAD_ATOL)
        torch.testing.assert_close(out[j], terms, rtol=1e-5, atol=1e-5)


STEP_CASES = [
    *({"model.encoder.activation": a, "model.decoder.activation": a} for a in FUSED_ACTS),
    *({"model.posterior": p, "objective.kl": k, "objective.k": K, "objective.beta": 0.6}
      for p in ("sigma", "log_sigma") for k in ("analytic", "monte_carlo") for K in (1, 2, 7)),
    {"data.binarize": "dynamic", "objective.k": 2, "objective.warmup": 10},
    {"model.encoder.hidden": [12, 8], "model.decoder.hidden": []},
    {"model.posterior": "test_sigma_floor"},
]


@pytest.mark.parametrize("base", STEP_CASES)
@pytest.mark.parametrize("engine_cls", [FusedStack, GenericStack])
def test_one_step_equals_autograd(base, engine_cls, tmp_path, monkeypatch):
    _engine_grads(engine_cls, _cfgs(base, [{"seed": 0}]), tmp_path, monkeypatch)


@pytest.mark.parametrize("base", [
    *({"model.encoder.activation": a, "model.decoder.activation": a} for a in ACTIVATIONS if a not in FUSED_ACTS),
    {"model.posterior": "test_sigma_scaled", "objective.kl": "monte_carlo"},
    {"objective.name": "iwae", "objective.k": 3}, {"optim.name": "sgd"}])
def test_generic_step_of_what_has_no_fused_kernel_equals_autograd(base, tmp_path, monkeypatch):
    _engine_grads(GenericStack, _cfgs(base, [{"seed": 0}, {"seed": 1}]), tmp_path, monkeypatch)


def test_a_stack_whose_runs_differ_in_every_per_run_key(tmp_path, monkeypatch):
    per_run = [{"seed": 0}, {"seed": 1, "optim.lr": 3e-3, "objective.kl": "monte_carlo"},
               {"seed": 2, "model.posterior": "log_sigma", "objective.beta": 0.5, "optim.weight_decay": 1e-3},
               {"seed": 3, "model.posterior": "test_sigma_floor", "objective.kl": "monte_carlo",
                "optim.betas": [0.8, 0.99], "optim.eps": 1e-6}]
    _engine_grads(FusedStack, _cfgs({"objective.k": 2}, per_run), tmp_path, monkeypatch)
    same_fn = [{"seed": 0}, {"seed": 1, "optim.lr": 3e-3, "optim.betas": [0.8, 0.99], "optim.weight_decay": 1e-3}]
    _engine_grads(GenericStack, _cfgs({"objective.k": 2}, same_fn), tmp_path / "g", monkeypatch)


def test_engines_refuse_a_group_they_cannot_train(tmp_path):
    from vaebench.training.engine import EngineRefused

    a, b = _cfgs({}, [{"seed": 0}, {"seed": 1, "objective.k": 3}])
    with pytest.raises(EngineRefused, match="objective.k"):
        FusedStack([Trainer(a, tmp_path / "a", CPU), Trainer(b, tmp_path / "b", CPU)], CPU)
    a, b = _cfgs({}, [{"seed": 0}, {"seed": 1, "objective.beta": 0.5}])
    with pytest.raises(EngineRefused, match="objective.beta"):  # one vmapped function for the stack
        GenericStack([Trainer(a, tmp_path / "a", CPU), Trainer(b, tmp_path / "b", CPU)], CPU)
    (c,) = _cfgs({"model.posterior": "test_sigma_scaled"}, [{}])
    with pytest.raises(EngineRefused, match=r"ScaledSigma declares no fused kernel \(posterior\)"):
        FusedStack([Trainer(c, tmp_path / "c", CPU)], CPU)


# -- engine choice and whole runs ----------------------------------------------------------------
def test_auto_records_the_engine_and_why_not_a_faster_one(tmp_path):
    (fused,) = _cfgs({"train.steps": 4, "train.eval_every": 2}, [{}])
    (swish,) = _cfgs({"train.steps": 4, "train.eval_every": 2, "model.decoder.activation": "test_swish"}, [{}])
    (scaled,) = _cfgs({"train.steps": 4, "train.eval_every": 2, "model.posterior": "test_sigma_scaled"}, [{}])
    assert choose_engine(fused) == ("fused", None)
    assert choose_engine(swish)[0] == "generic" and "Swish declares no fused kernel" in choose_engine(swish)[1]
    assert choose_engine(scaled)[0] == "generic" and "ScaledSigma declares no fused kernel" in choose_engine(scaled)[1]
    for c, d in ((fused, "f"), (swish, "s")):
        train_run(c, tmp_path / d, "cpu", progress=False)
    env = runs.read_json(tmp_path / "s" / runs.ENV)  # alone, the generic engine's runs use autograd
    assert env["engine"] == "torch" and "Swish" in env["engine_why"] and "generic alone" in env["engine_why"]
    assert runs.read_json(tmp_path / "f" / runs.ENV)["engine"] == "fused"


def test_the_floor_a_subclass_sets_gives_the_same_numbers_on_every_engine(tmp_path):
    base = {"model.posterior": "test_sigma_floor", "train.steps": 30, "train.eval_every": 10,
            "train.flush_every": 10, "train.checkpoint_every": 30}
    (c,) = _cfgs(base, [{}])
    assert choose_engine(c)[0] == "fused"
    train_run(c, tmp_path / "fused", "cpu", progress=False)
    train_run(resolve(c, {"train.engine": "torch"}), tmp_path / "torch", "cpu", progress=False)
    t = Trainer(c, tmp_path / "generic", CPU)
    runs.prepare(t.dir, c, {})
    from vaebench.training.loop import train_members

    train_members(GenericStack([t], CPU))
    for other in ("torch", "generic"):
        a, b = runs.read_metrics(tmp_path / "fused"), runs.read_metrics(tmp_path / other)
        np.testing.assert_allclose(a[list(runs.TERMS)], b[list(runs.TERMS)], rtol=RTOL, atol=ATOL)
    # and the floor really is 0.05, not the parent's 1e-4
    assert float(WideFloor().sigma(torch.tensor([-50.0]))) == pytest.approx(0.05)


@pytest.mark.slow
def test_a_generic_stack_of_a_user_activation_matches_each_run_alone(tmp_path):
    """Tolerance: RTOL relative + ATOL nats per step over 100 steps (float32 reassociation)."""
    base = {"model.encoder.activation": "test_swish", "model.decoder.activation": "test_swish",
            "objective.k": 2, "train.steps": 100, "train.eval_every": 25, "train.flush_every": 25,
            "train.checkpoint_every": 50}
    cfgs = _cfgs(base, [{"seed": 0}, {"seed": 1, "optim.lr": 3e-3}, {"seed": 2, "optim.weight_decay": 1e-3}])
    assert {choose_engine(c)[0] for c in cfgs} == {"generic"}
    res = train_group(cfgs, [tmp_path / f"s{i}" for i in range(3)], "cpu", progress=False)
    assert [r.state for r in res] == ["done"] * 3
    assert {runs.read_json(tmp_path / f"s{i}" / runs.ENV)["engine"] for i in range(3)} == {"generic"}
    for i, c in enumerate(cfgs):
        train_run(resolve(c, {"train.engine": "torch"}), tmp_path / f"a{i}", "cpu", progress=False)
        a, b = runs.read_metrics(tmp_path / f"s{i}"), runs.read_metrics(tmp_path / f"a{i}")
        assert list(a.step) == list(b.step)
        np.testing.assert_allclose(a[list(runs.TERMS)], b[list(runs.TERMS)], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("cut", ["between two pending writes", "between two commits"])
def test_a_generic_stack_cut_while_checkpointing_resumes_at_one_step_and_exactly(tmp_path, monkeypatch, cut):
    """The generic engine's numbers depend (at float reassociation) on the stack, so its members must
    resume together: its checkpoints are written in two phases (vaebench.training.loop)."""
    base = {"model.decoder.activation": "test_swish", "train.steps": 40, "train.eval_every": 10,
            "train.flush_every": 10, "train.checkpoint_every": 20}
    cfgs = _cfgs(base, [{"seed": 0}, {"seed": 1}, {"seed": 2}])
    ref = [tmp_path / "ref" / f"r{i}" for i in range(3)]
    train_group(cfgs, ref, "cpu", progress=False)
    dirs = [tmp_path / "cut" / f"r{i}" for i in range(3)]
    calls = []
    if cut == "between two pending writes":
        save = Trainer.save_checkpoint

        def die(self, stack=None):
            save(self, stack)
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
        monkeypatch.setattr(Trainer, "save_checkpoint", die)
    else:
        commit = runs.commit_checkpoint

        def die(run_dir):
            commit(run_dir)
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt
        monkeypatch.setattr(runs, "commit_checkpoint", die)
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, dirs, "cpu", progress=False)
    monkeypatch.undo()
    pending = [(d / runs.CHECKPOINT_NEXT).is_file() for d in dirs]
    assert pending == ([True, True, False] if cut == "between two pending writes" else [False, True, True])
    res = train_group(cfgs, dirs, "cpu", progress=False)
    assert [r.state for r in res] == ["done"] * 3
    for d, r in zip(dirs, ref):
        assert not (d / runs.CHECKPOINT_NEXT).exists()
        a, b = runs.read_metrics(d), runs.read_metrics(r)
        assert list(a.step) == list(b.step)
        np.testing.assert_array_equal(a[list(runs.TERMS)], b[list(runs.TERMS)])


def test_status_carries_the_last_flushed_step_while_training(tmp_path, monkeypatch):
    (c,) = _cfgs({"train.steps": 60, "train.eval_every": 20, "train.flush_every": 20,
                  "train.checkpoint_every": 60}, [{}])
    seen = []
    # before each flush: the previous one's step
    interrupt_at(monkeypatch, 60, before=lambda t: seen.append(runs.read_status(t.dir)["step"]))
    with pytest.raises(KeyboardInterrupt):
        train_run(c, tmp_path / "r", "cpu", progress=False)
    assert seen == [0, 20, 40]
    st = runs.read_status(tmp_path / "r")
    assert st["state"] == "running" and st["step"] == 40 and "interrupted" in st["reason"]


def test_eval_keys_do_not_move_a_run_off_the_fused_engine():
    """experiments/iwae_table1_short.yaml sets eval.k and eval.splits: they change no update."""
    for over in ({"eval.k": 1000, "eval.splits": ["test"]}, {"eval.batch": 50}):
        (c,) = _cfgs(over, [{}])
        assert choose_engine(c) == ("fused", None)


def test_a_diverging_run_leaves_a_generic_stack_and_the_others_finish(tmp_path):
    base = {"model.decoder.activation": "test_swish", "train.steps": 30, "train.eval_every": 10,
            "train.flush_every": 10, "train.checkpoint_every": 20}
    for optim in ({}, {"optim.lr": 2e-3}):  # two or three optim settings in the stack
        cfgs = _cfgs(base, [{"seed": 0}, {"seed": 1, "optim.lr": 1e30}, {"seed": 2, **optim}])
        dirs = [tmp_path / str(len(optim)) / f"r{i}" for i in range(3)]
        res = train_group(cfgs, dirs, "cpu", progress=False)
        assert [r.state for r in res] == ["done", "failed", "done"]
        assert "NaN/inf" in runs.read_status(dirs[1])["reason"]
        for d in (dirs[0], dirs[2]):
            assert runs.read_metrics(d)[list(runs.TERMS)].notna().all().all()
            assert torch.load(d / runs.CHECKPOINT, weights_only=True)["optimizer"]["state"]
