"""Held-out evaluation and the objectives beyond the ELBO, against closed forms and exact integrals."""

import json
import shutil
import math

import pytest
import torch
import yaml

import vaebench
from vaebench import elbo, runs
from vaebench.components import OBJECTIVES, SCHEDULES, VAE
from vaebench.components.objectives import kl_weight
from vaebench.config import resolve
from vaebench.components import kernels
from vaebench.components.likelihoods import Bernoulli
from vaebench.components.networks import MLP, forward_columns
from vaebench.evaluation import active_units, estimator_path, evaluate_model, iw_log_likelihood, posterior_stats

from conftest import invoke, one_line_error


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _model(data_dim=6, latent=2, hidden=8, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    m = VAE(data_dim, latent, {"name": "mlp", "hidden": [hidden]}, {"name": "mlp", "hidden": [hidden]})
    return m.to(dtype).eval()


def _data(n, d, seed=1, dtype=torch.float32):
    return torch.bernoulli(torch.full((n, d), 0.4, dtype=dtype), generator=_gen(seed))


def _log_weights_by_hand(model, x, eps):
    """log p(x|z) + log p(z) - log q(z|x) from the ELBO's own functions, eps (B, S, L)."""
    mu, sigma = model.encode(x)
    z = elbo.reparameterize(mu[:, None], sigma[:, None], eps)
    return (elbo.bernoulli_log_prob(model.decode(z), x[:, None]) + elbo.standard_normal_log_prob(z)
            - elbo.gaussian_log_prob(z, mu[:, None], sigma[:, None]))


@pytest.mark.parametrize("fused", [True, False])
def test_k1_estimate_is_the_elbo_on_the_same_draw(fused):
    model, x = _model(dtype=torch.float64), _data(5, 6, dtype=torch.float64)
    iw, mean_w = iw_log_likelihood(model, x, 1, _gen(3), fused=fused)
    eps = torch.randn((5, 1, 2), generator=_gen(3), dtype=torch.float64)
    with torch.no_grad():
        by_hand = _log_weights_by_hand(model, x, eps)[:, 0]
    torch.testing.assert_close(iw, by_hand)
    torch.testing.assert_close(mean_w, by_hand)


def test_fused_path_matches_the_generic_one_and_the_logsumexp_by_hand():
    model, x = _model(data_dim=12, hidden=16, dtype=torch.float64), _data(7, 12, dtype=torch.float64)
    k = 50  # 4 chunks of 13 and a short last one: the chunks' log-sum-exps must combine exactly
    fused = iw_log_likelihood(model, x, k, _gen(4), batch=7, chunk=13, fused=True)
    generic = iw_log_likelihood(model, x, k, _gen(4), batch=7, chunk=13, fused=False)
    torch.testing.assert_close(fused, generic)
    g = _gen(4)
    eps = torch.cat([torch.randn((7, min(13, k - j), 2), generator=g, dtype=torch.float64) for j in range(0, k, 13)], 1)
    with torch.no_grad():
        w = _log_weights_by_hand(model, x, eps)
    torch.testing.assert_close(fused[0], torch.logsumexp(w, 1) - math.log(k))
    torch.testing.assert_close(fused[1], w.mean(1))


@pytest.mark.parametrize("d", [196, 197, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_linear_kernel_equals_its_log_prob(d, dtype):
    """The evaluator's kernel against log_prob of the same logits: groups of 28 pixels (196), of one
    (a prime), logits of +-300 (the overflow guard's exact recomputation) and exactly 0."""
    g = _gen(5)
    b, k, s = 3, 9, 40
    x = torch.bernoulli(torch.full((b, d), 0.3, dtype=dtype), generator=g)
    w = torch.randn((d, k), generator=g, dtype=dtype) * 3
    h = torch.randn((b, k, s), generator=g, dtype=dtype)
    h[0, :, 1] = 100.0  # logits of hundreds: one group's product overflows
    h[1, :, 2] = 0.0  # every logit 0: each factor exactly 2
    want = Bernoulli().log_prob(torch.einsum("dk,bks->bsd", w, h), x.unsqueeze(1))
    got = kernels.of(Bernoulli(), "likelihood").linear_log_prob(x, w)(h.clone())
    assert got.shape == (b, s) and torch.isfinite(got).all()
    tol = {"rtol": 1e-6, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(got, want, **tol)
    grey = torch.rand((b, d), generator=g, dtype=dtype)  # not 0/1: the sign fold does not hold
    want = Bernoulli().log_prob(torch.einsum("dk,bks->bsd", w, h), grey.unsqueeze(1))
    torch.testing.assert_close(kernels.of(Bernoulli(), "likelihood").linear_log_prob(grey, w)(h), want, **tol)


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "elu"])
def test_decoder_body_on_columns_equals_the_module(act):
    torch.manual_seed(0)
    net = MLP(3, [16, 8], 5, activation=act).eval()
    z = torch.randn(11, 3)
    z1 = torch.cat([z, torch.ones(11, 1)], 1).t()  # (features + 1, rows): the ones row carries the bias
    out = torch.empty(5, 11)
    got = forward_columns(net, z1, out)
    if act == "elu":  # declares no in-place forward kernel: the caller runs the module itself
        assert got is None
    else:
        torch.testing.assert_close(out, net(z).detach().t())


class _MyBernoulli(Bernoulli):
    def log_prob(self, logits, x):  # new math, no kernel for it: the evaluator must use it
        return super().log_prob(logits, x) - 1.0


def test_fused_path_only_where_the_components_declare_it():
    model, x = _model(data_dim=12, hidden=16, dtype=torch.float64), _data(7, 12, dtype=torch.float64)
    assert estimator_path(model) == "fused" and estimator_path(model, fused=False) == "generic"
    base = iw_log_likelihood(model, x, 20, _gen(4))
    model.likelihood = _MyBernoulli()
    assert estimator_path(model) == "generic"
    torch.testing.assert_close(iw_log_likelihood(model, x, 20, _gen(4))[0], base[0] - 1.0)
    deep = VAE(12, 2, {"name": "mlp", "hidden": [8]}, {"name": "mlp", "hidden": [16, 8], "activation": "elu"})
    deep = deep.double().eval()  # an activation without an in-place kernel: the body runs as the module
    assert estimator_path(deep) == "fused"
    torch.testing.assert_close(iw_log_likelihood(deep, x, 30, _gen(1), chunk=7),
                               iw_log_likelihood(deep, x, 30, _gen(1), chunk=7, fused=False))
    assert evaluate_model(deep, x, k=3)["estimator"] == "fused"


def test_estimate_grows_with_k_in_expectation():
    model, x = _model(), _data(400, 6)
    means = [iw_log_likelihood(model, x, k, _gen(k))[0].mean().item() for k in (1, 5, 50)]
    assert means[0] < means[1] < means[2], means


def _exact_log_px(model, x, half_width=8.0, n=601):
    """log p(x) = log of the integral of p(x|z) N(z; 0, I) over a fine 2-D grid (trapezoid)."""
    t = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    z = torch.cartesian_prod(t, t)  # (n^2, 2)
    w = torch.ones(n, dtype=torch.float64)
    w[0] = w[-1] = 0.5
    log_cell = torch.log(torch.outer(w, w).reshape(-1) * (t[1] - t[0]) ** 2)
    with torch.no_grad():
        logits = model.decode(z)[:, None]  # (n^2, 1, D) against x (N, D)
        log_px_z = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)
        log_joint = log_px_z + elbo.standard_normal_log_prob(z)[:, None]
    return torch.logsumexp(log_joint + log_cell[:, None], 0)


def test_estimate_is_below_the_exact_log_likelihood_and_converges_to_it():
    model, x = _model(dtype=torch.float64), _data(4, 6, dtype=torch.float64)
    exact = _exact_log_px(model, x)
    for k in (1, 10):  # E[estimate] <= log p(x): average over many independent estimates
        draws = torch.stack([iw_log_likelihood(model, x, k, _gen(s))[0] for s in range(200)])
        assert torch.all(draws.mean(0) < exact), (k, draws.mean(0), exact)
    iw, mean_w = iw_log_likelihood(model, x, 20_000, _gen(9))
    assert torch.all(mean_w < iw)
    torch.testing.assert_close(iw, exact, atol=0.02, rtol=0)


def test_active_units_and_kl_per_dimension():
    model, x = _model(data_dim=20, latent=5, hidden=16), _data(500, 20)
    last = model.encoder[-1]
    with torch.no_grad():
        last.weight[:5] *= 5.0  # spread the means of the live dimensions
        last.weight[[1, 3]] = 0.0  # dims 1 and 3: E_q[z|x] is the same for every x
        last.bias[[1, 3]] = 0.3
    mu, kl = posterior_stats(model, x)
    assert active_units(mu) == 3
    assert mu[:, [1, 3]].var(0).max() == 0
    entry = evaluate_model(model, x, k=3)
    assert entry["active_units"] == 3 and entry["n"] == 500 and entry["k"] == 3
    with torch.no_grad():
        total = elbo.kl_analytic(*model.encode(x)).double().mean()
    assert math.isclose(sum(entry["kl_per_dim"]), total.item(), rel_tol=1e-5)


def _grads(objective, model, x, seed):
    model.zero_grad()
    terms = objective(model, x, _gen(seed))
    terms.loss.backward()
    return terms, [p.grad.clone() for p in model.parameters()]


def test_iwae_with_one_sample_has_the_elbo_gradient():
    model, x = _model(dtype=torch.float64).train(), _data(8, 6, dtype=torch.float64)
    t_iwae, g_iwae = _grads(OBJECTIVES.get("iwae")(k=1), model, x, 11)
    t_elbo, g_elbo = _grads(OBJECTIVES.get("elbo")(k=1, kl="monte_carlo"), model, x, 11)
    torch.testing.assert_close(t_iwae.loss, t_elbo.loss)
    for a, b in zip(g_iwae, g_elbo):
        torch.testing.assert_close(a, b)


def test_iwae_bound_is_above_the_elbo_on_the_same_draws_and_logs_elbo_terms():
    model, x = _model(dtype=torch.float64), _data(8, 6, dtype=torch.float64)
    with torch.no_grad():
        iwae = OBJECTIVES.get("iwae")(k=5, kl="monte_carlo")(model, x, _gen(2))
        same = OBJECTIVES.get("elbo")(k=5, kl="monte_carlo")(model, x, _gen(2))
    for name in ("rec", "kl", "elbo"):
        torch.testing.assert_close(getattr(iwae, name), getattr(same, name))
    assert -iwae.loss > same.elbo.mean()


def test_kl_warmup_and_iwae_learning_rate_schedule():
    assert [kl_weight(2.0, 100, s) for s in (0, 50, 100, 500, None)] == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert kl_weight(0.5, 0, 0) == 0.5
    model, x = _model(dtype=torch.float64), _data(4, 6, dtype=torch.float64)
    with torch.no_grad():
        t = OBJECTIVES.get("elbo")(k=1, warmup=10)(model, x, _gen(1), step=0)
    torch.testing.assert_close(t.loss, -t.rec.mean())
    lr = SCHEDULES.get("iwae")
    steps = 3280  # one update per paper epoch: stage i spans 3^i epochs at 10^(-i/7)
    starts = [(3**i - 1) // 2 for i in range(8)]
    for i, s in enumerate(starts):
        assert math.isclose(lr(s, steps), 10 ** (-i / 7)) and (s == 0 or lr(s - 1, steps) > lr(s, steps))
    assert math.isclose(lr(steps - 1, steps), 0.1) and SCHEDULES.get("none")(7, 10) == 1.0


def test_eval_keys_do_not_change_the_run_id():
    base = resolve({})
    assert resolve({"eval": {"k": 10, "splits": ["test", "val"]}}).run_hash() == base.run_hash()
    assert resolve({"objective": {"name": "iwae", "k": 5}}).run_hash() != base.run_hash()


def test_eval_json_keeps_every_split_k_and_checkpoint_and_reads_the_old_layout(tmp_path):
    """eval.json before entries held one entry per split; it reads as entries of the last
    checkpoint, and writing another (split, k, checkpoint) keeps them all."""
    from vaebench.evaluation import has_eval

    old = {"test": {"iw_ll": -30.0, "iw_ll_se": 0.1, "elbo": -31.0, "elbo_se": 0.1, "k": 250, "n": 10},
           "val": {"iw_ll": -33.0, "iw_ll_se": 0.2, "elbo": -34.0, "elbo_se": 0.2, "k": 250, "n": 5}}
    runs.write_json(tmp_path / runs.EVAL, old)
    assert [(e["split"], e["k"], e["checkpoint"]) for e in runs.read_evals(tmp_path)] == [
        ("test", 250, "last"), ("val", 250, "last")]
    assert has_eval(tmp_path, "test", 250) and not has_eval(tmp_path, "test", 1000)
    assert not has_eval(tmp_path, "test", 250, "best")
    runs.add_eval(tmp_path, {"split": "test", "k": 1000, "checkpoint": "last", "iw_ll": -29.9})
    runs.add_eval(tmp_path, {"split": "test", "k": 250, "checkpoint": "best", "iw_ll": -29.5})
    runs.add_eval(tmp_path, {"split": "test", "k": 250, "checkpoint": "last", "iw_ll": -30.1})  # replaces its own
    got = {(e["split"], e["k"], e["checkpoint"]): e["iw_ll"] for e in runs.read_evals(tmp_path)}
    assert got == {("test", 250, "last"): -30.1, ("test", 1000, "last"): -29.9, ("test", 250, "best"): -29.5,
                   ("val", 250, "last"): -33.0}
    assert runs.find_eval(runs.read_evals(tmp_path), "test")["k"] == 1000  # no k: the largest
    assert "entries" in json.loads((tmp_path / runs.EVAL).read_text())


@pytest.mark.slow
def test_eval_cli_writes_eval_json_and_ls_shows_it(tmp_path, tiny_overrides):
    o = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in tiny_overrides)}
    o |= {"objective.name": "iwae", "objective.k": 3, "objective.warmup": 30, "optim.schedule": "iwae",
          "eval.enabled": True, "eval.k": 4, "eval.splits": ["val"]}
    res = vaebench.run({"name": "t"}, out=tmp_path, overrides=o, progress=False)
    assert res.state == "done"
    entries = runs.read_evals(res.path)  # the config's end-of-run evaluation
    assert [(e["split"], e["k"], e["checkpoint"]) for e in entries] == [("val", 4, "last")]
    assert entries[0]["n"] == 50 and len(entries[0]["kl_per_dim"]) == 8 and entries[0]["step"] == 60

    p = invoke("eval", str(tmp_path), "--k", "3", "--split", "test")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("evaluated") and "IW log p(x) (k=3)" in p.stdout
    assert invoke("eval", str(tmp_path), "--k", "5", "--split", "test").returncode == 0
    entries = runs.read_evals(res.path)  # a second k keeps the first: one entry per (split, k, checkpoint)
    assert [(e["split"], e["k"]) for e in entries] == [("test", 3), ("test", 5), ("val", 4)]
    k3, k5 = (runs.find_eval(entries, "test", k) for k in (3, 5))
    assert k3["n"] == 10_000 and k3["elbo"] <= k3["iw_ll"] < 0 and k3["iw_ll"] != k5["iw_ll"]
    assert invoke("eval", str(tmp_path), "--k", "3").stdout.startswith("skipped")
    assert len(runs.read_evals(res.path)) == 3

    ls = invoke("ls", str(tmp_path))
    assert ls.returncode == 0 and "test_iw_ll" in ls.stdout and "val_iw_ll" in ls.stdout and "test_k" in ls.stdout
    final = vaebench.load(tmp_path, final=True)  # one run: its largest k
    assert final.loc[0, "test_iw_ll"] == pytest.approx(k5["iw_ll"]) and final.loc[0, "test_k"] == 5
    assert final.attrs["k"] == {"test": 5, "val": 4}
    assert vaebench.load(tmp_path, final=True, k=3).loc[0, "test_iw_ll"] == pytest.approx(k3["iw_ll"])
    assert final.loc[0, "val_elbo"] == json.loads((res.path / runs.FINAL).read_text())["val"]["elbo"]

    best = invoke("eval", str(res.path), "--k", "3", "--checkpoint", "best")
    one_line_error(best, "best.pt", "train.keep_best")
    bad = invoke("eval", str(tmp_path), "--k", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == "vaebench: error: k must be at least 1, got 0"
    (res.path / runs.CHECKPOINT).unlink()
    bad = invoke("eval", str(res.path), "--force")
    assert bad.returncode != 0 and "checkpoint.pt is missing" in bad.stderr and "Traceback" not in bad.stderr


def test_every_run_ends_with_test_metrics_unless_disabled(tmp_path, tiny_overrides):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\n")
    sets = [f"--set={o}" for o in tiny_overrides if not o.startswith("eval.")]
    r = invoke("run", str(cfg), "--out", str(tmp_path / "res"), *sets, "--set=eval.k=4")
    assert r.returncode == 0, r.stderr
    assert "test IW log p(x)" in r.stdout and "(k=4)" in r.stdout  # what make run prints for the baseline
    off = invoke("run", str(cfg), "--out", str(tmp_path / "res"), *sets, "--set=seed=1", "--set=eval.enabled=false")
    assert off.returncode == 0, off.stderr
    assert "test IW" not in off.stdout
    final = vaebench.load(tmp_path / "res", final=True).set_index("seed")
    assert final.loc[0, "test_k"] == 4 and final.loc[0, "test_n"] == 10_000
    assert final.loc[0, "test_elbo"] <= final.loc[0, "test_iw_ll"] < 0 and final.loc[0, "test_iw_ll_se"] > 0
    assert math.isnan(final.loc[1, "test_iw_ll"])  # eval.enabled: false skipped it
    # a run without test metrics (an older run) gets them from vaebench eval
    p = invoke("eval", str(tmp_path / "res"), "--k", "4")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("skipped") == 1 and p.stdout.count("evaluated") == 1
    ls = invoke("ls", str(tmp_path / "res"))
    for col in ("test_elbo", "test_elbo_se", "test_iw_ll", "test_iw_ll_se"):
        assert col in ls.stdout
    assert "-" not in ls.stdout.splitlines()[-1].split()[-1]
    table = vaebench.summary(tmp_path / "res")
    assert {"test_elbo_mean", "test_iw_ll_mean"} <= set(table.columns)


def test_a_run_cut_during_its_end_of_run_evaluation_is_evaluated_by_the_rerun(tmp_path, tiny_overrides):
    """Training done, evaluation cut (eval.json missing): the same command evaluates it, trains nothing."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\n")
    sets = [f"--set={o}" for o in tiny_overrides if not o.startswith("eval.")] + ["--set=eval.k=4"]
    first = invoke("run", str(cfg), "--out", str(tmp_path / "res"), *sets)
    assert first.returncode == 0, first.stderr
    run_dir = runs.find_runs(tmp_path / "res")[0]
    metrics = (run_dir / runs.METRICS).read_bytes()
    (run_dir / runs.EVAL).unlink()  # as if killed between final.json and eval.json
    again = invoke("run", str(cfg), "--out", str(tmp_path / "res"), *sets)
    assert again.returncode == 0, again.stderr
    assert (run_dir / runs.EVAL).is_file() and (run_dir / runs.METRICS).read_bytes() == metrics
    assert "test IW log p(x)" in again.stdout


def test_eval_jobs_give_the_numbers_of_one_process_in_run_order(tmp_path, tiny_overrides):
    """eval -j 2: each run in its own one-thread worker; the same eval.json numbers as -j 1, rows in run order."""
    sets = [f"--set={o}" for o in tiny_overrides]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nseeds: 3\n")
    assert invoke("run", str(cfg), "--out", str(tmp_path / "a"), *sets).returncode == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    one = invoke("eval", str(tmp_path / "a"), "--k", "3", "--split", "val")
    two = invoke("eval", str(tmp_path / "b"), "--k", "3", "--split", "val", "-j", "2")
    assert one.returncode == two.returncode == 0, two.stderr
    assert [line.split()[:2] for line in one.stdout.splitlines()] == [line.split()[:2] for line in two.stdout.splitlines()]
    assert two.stdout.count("evaluated") == 3
    for a in runs.find_runs(tmp_path / "a"):
        b = tmp_path / "b" / a.relative_to(tmp_path / "a")
        ea, eb = (runs.find_eval(runs.read_evals(d), "val", 3) for d in (a, b))
        assert {k: ea[k] for k in ("iw_ll", "iw_ll_se", "elbo", "active_units", "kl_per_dim")} == \
               {k: eb[k] for k in ("iw_ll", "iw_ll_se", "elbo", "active_units", "kl_per_dim")}
    again = invoke("eval", str(tmp_path / "b"), "--k", "3", "--split", "val", "-j", "2")
    assert again.stdout.count("skipped") == 3


def test_commands_that_read_models_take_device_and_the_same_split(tmp_path, tiny_overrides):
    res = vaebench.run({"name": "t"}, out=tmp_path, overrides=tiny_overrides, progress=False)
    s = invoke("sample", str(res.path), "--out", str(tmp_path / "s.png"), "--device", "cpu", "-n", "4")
    r = invoke("reconstruct", str(res.path), "--out", str(tmp_path / "r.png"), "--device", "cpu", "--split", "test")
    assert s.returncode == r.returncode == 0, (s.stderr, r.stderr)
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "r.png").stat().st_size > 0
    for cmd in (["eval", str(tmp_path)], ["reconstruct", str(res.path), "--out", str(tmp_path / "x.png")]):
        bad = invoke(*cmd, "--split", "tset")  # one type: the same choice and the same message everywhere
        assert bad.returncode == 2 and "'tset' is not one of 'train', 'val', 'test'" in bad.stderr, bad.stderr
    for cmd in ("sample", "reconstruct", "eval"):
        help_ = invoke(cmd, "--help").stdout
        assert "--device" in help_ and "--import" in help_, cmd
    assert "--jobs" in invoke("eval", "--help").stdout
