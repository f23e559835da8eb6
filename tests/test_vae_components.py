"""Priors, flows, gradient estimators and free bits, each against an independent reference.

- MoG and VampPrior log densities against torch.distributions (MixtureSameFamily of Normals).
- Flows' log-determinants against torch.autograd.functional.jacobian (slogdet) on small inputs.
- STL: its gradient is the reparameterization gradient minus the score-function term, and that term
  is zero in it; DReG: its expectation equals the IWAE gradient (Monte Carlo, within 4 standard
  errors), and with K = 1 it is STL.
- Free bits at 0 is the plain ELBO bit for bit; above 0 it is Kingma et al.'s max(lambda, KL).
- Every prior and flow evaluates: IW log p(x) >= the ELBO of the same draws, increasing in k.
- Every new component trains on the generic stacked engine and agrees with autograd per run.
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from vaebench import elbo, runs
from vaebench.components import FLOWS, PRIORS, VAE, build
from vaebench.components.objectives import OBJECTIVES
from vaebench.config import resolve
from vaebench.errors import ConfigError
from vaebench.evaluation import estimator_path, iw_log_likelihood
from vaebench.training import choose_engine, train_group, train_run

TINY = {"data.per_class": 20, "data.val_size": 20, "train.batch_size": 20, "train.threads": 1, "train.steps": 30,
        "train.eval_every": 10, "train.flush_every": 10, "eval.enabled": False,
        "model.encoder.hidden": [16], "model.decoder.hidden": [16], "model.latent": 4}
MC = {"objective.kl": "monte_carlo"}
VAMP = {"name": "vamp", "pseudo_inputs": 7}


def _model(**kw) -> VAE:
    torch.manual_seed(0)
    return VAE(12, 3, {"name": "mlp", "hidden": [6]}, {"name": "mlp", "hidden": [6]}, **kw).double()


# -- priors -----------------------------------------------------------------------------------------
def test_mog_log_density_and_samples_against_torch_distributions():
    torch.manual_seed(1)
    prior = PRIORS.build({"name": "mog", "components": 5}, latent=3).double()
    with torch.no_grad():
        prior.log_sigmas.normal_(0, 0.3)
        prior.logits.normal_()
    ref = D.MixtureSameFamily(D.Categorical(logits=prior.logits),
                              D.Independent(D.Normal(prior.means, prior.log_sigmas.exp()), 1))
    z = torch.randn(4, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), ref.log_prob(z), rtol=1e-12, atol=1e-12)
    s = prior.sample(20_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    # the samples' mean is the mixture's mean, within 5 standard errors
    se = ref.variance.sqrt() / math.sqrt(len(s))
    assert ((s.mean(0) - ref.mean).abs() < 5 * se).all()


def test_vamp_log_density_is_the_mean_of_the_encoders_posteriors_at_the_pseudo_inputs():
    m = _model(prior=VAMP)
    z = torch.randn(2, 5, 3, dtype=torch.float64)
    u = torch.sigmoid(m.prior.raw)
    assert u.shape == (7, 12) and m.prior.raw in set(m.parameters())
    mu, sigma = m.encode(u)
    direct = torch.stack([D.Independent(D.Normal(mu[k], sigma[k]), 1).log_prob(z) for k in range(7)])
    torch.testing.assert_close(m.prior.log_prob(z),
                               torch.logsumexp(direct, 0) - math.log(7), rtol=1e-12, atol=1e-12)
    # it learns through the encoder: a gradient reaches the encoder's weights and the pseudo-inputs
    m.prior.log_prob(z).sum().backward()
    assert m.encoder[0].weight.grad.abs().sum() > 0 and m.prior.raw.grad.abs().sum() > 0
    # deep copies keep the prior bound to their own encoder
    c = copy.deepcopy(m)
    with torch.no_grad():
        c.encoder[0].weight.add_(1.0)
    assert not torch.allclose(c.prior.log_prob(z), m.prior.log_prob(z))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_priors_without_a_closed_form_kl_refuse_the_analytic_kl(prior):
    with pytest.raises(ConfigError, match="use objective.kl: monte_carlo"):
        build(resolve({}, {"model.prior": prior}), 196)


# -- flows ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flow", [{"name": "planar", "steps": 3}, {"name": "iaf", "steps": 3, "hidden": 9}])
def test_flow_log_determinants_equal_the_jacobians(flow):
    torch.manual_seed(2)
    f = FLOWS.build(flow, latent=4).double()
    with torch.no_grad():  # away from the near-identity start, so the check has something to check
        for p in f.parameters():
            p.add_(0.5 * torch.randn_like(p))
    z = torch.randn(6, 4, dtype=torch.float64)
    out, logdet = f(z)
    assert out.shape == z.shape and logdet.shape == (6,)
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: f(v)[0], z[i])
        sign, want = torch.linalg.slogdet(jac)
        assert sign > 0 if flow["name"] == "iaf" else True
        torch.testing.assert_close(logdet[i], want, rtol=1e-10, atol=1e-10)
    # leading (K, B) dims are per sample
    torch.testing.assert_close(f(z.view(2, 3, 4))[1], logdet.view(2, 3))


def test_an_iaf_step_is_autoregressive():
    step = FLOWS.build({"name": "iaf", "steps": 1, "hidden": 10}, latent=5).double().steps[0]
    jac = torch.autograd.functional.jacobian(lambda v: step(v)[0], torch.randn(5, dtype=torch.float64))
    assert torch.equal(jac, torch.tril(jac))  # output i depends on z_<=i only


def test_a_flow_draw_gives_log_q_of_the_transformed_sample():
    m = _model(flow={"name": "planar", "steps": 2})
    mu, sigma = m.encode(torch.rand(3, 12, dtype=torch.float64))
    eps = torch.randn(2, 3, 3, dtype=torch.float64)
    z, log_q = m.draw(mu, sigma, eps)
    z0 = mu + sigma * eps
    want = D.Independent(D.Normal(mu, sigma), 1).log_prob(z0) - m.flow(z0)[1]
    torch.testing.assert_close(z, m.flow(z0)[0])
    torch.testing.assert_close(log_q, want)


# -- gradient estimators ----------------------------------------------------------------------------
def _grads(model, loss):
    return [g if g is not None else torch.zeros_like(p)
            for p, g in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))]


def _loss(model, objective, x, eps):
    return objective(model, x, eps).loss


def test_stl_is_the_reparameterization_gradient_without_the_score_term():
    m = _model()
    x = torch.bernoulli(torch.full((5, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(3, 5, 3, dtype=torch.float64)
    reparam = OBJECTIVES.build({"name": "elbo", "k": 3, "kl": "monte_carlo"})
    stl = OBJECTIVES.build({"name": "elbo", "k": 3, "kl": "monte_carlo", "gradient": "stl"})
    t_r, t_s = reparam(m, x, eps), stl(m, x, eps)
    for a in ("rec", "kl", "elbo", "loss"):
        assert torch.equal(getattr(t_r, a), getattr(t_s, a))  # the same value
    # the score term: d/dphi of -(-mean log q(z|x)) with z held fixed
    mu, sigma = m.encode(x)
    z = (mu + sigma * eps).detach()
    score = elbo.gaussian_log_prob(z, mu, sigma).mean(0).mean()
    for g_r, g_s, g_score in zip(_grads(m, t_r.loss), _grads(m, t_s.loss), _grads(m, score)):
        torch.testing.assert_close(g_r - g_s, g_score, rtol=1e-9, atol=1e-12)
    # and STL's own KL has no score term: with z held fixed its gradient in the encoder is zero
    kl_fixed_z = stl.kl_term(m, *stl.q_params(mu, sigma), z).mean()
    assert not kl_fixed_z.requires_grad  # no path from phi to it but through z
    assert reparam.kl_term(m, *reparam.q_params(mu, sigma), z).requires_grad


def _mean_and_se(model, objective, x, draws, chunks):
    """The gradient averaged over ``draws`` noise draws per image (in ``chunks`` replicas of x),
    and its standard error over the chunks."""
    per = []
    gen = torch.Generator().manual_seed(3)
    xs = x.repeat(draws // chunks, 1)
    for _ in range(chunks):
        eps = torch.randn(objective.k, len(xs), model.latent, generator=gen, dtype=torch.float64)
        per.append(torch.cat([g.flatten() for g in _grads(model, _loss(model, objective, xs, eps))]))
    per = torch.stack(per)
    return per.mean(0), per.std(0) / math.sqrt(chunks)


def test_dreg_estimates_the_iwae_gradient_and_is_stl_at_k1():
    m = _model(prior="mog")
    x = torch.bernoulli(torch.full((2, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    iwae = OBJECTIVES.build({"name": "iwae", "k": 4, "kl": "monte_carlo"})
    dreg = OBJECTIVES.build({"name": "iwae", "k": 4, "kl": "monte_carlo", "gradient": "dreg"})
    eps = torch.randn(4, 2, 3, dtype=torch.float64)
    assert torch.equal(iwae(m, x, eps).loss, dreg(m, x, eps).loss)
    g_i, se_i = _mean_and_se(m, iwae, x, 40_000, 20)
    g_d, se_d = _mean_and_se(m, dreg, x, 40_000, 20)
    tol = 4 * torch.sqrt(se_i**2 + se_d**2) + 1e-9
    assert ((g_i - g_d).abs() <= tol).all(), float(((g_i - g_d).abs() / tol).max())
    # the check has the power to tell a biased estimator apart: STL is biased for IWAE (Tucker et al.)
    g_s, se_s = _mean_and_se(m, OBJECTIVES.build({"name": "iwae", "k": 4, "kl": "monte_carlo", "gradient": "stl"}),
                             x, 40_000, 20)
    assert ((g_i - g_s).abs() > 4 * torch.sqrt(se_i**2 + se_s**2)).any()
    # K = 1: DReG's weights are 1 and it is STL's gradient
    one = {"name": "iwae", "k": 1, "kl": "monte_carlo"}
    e1 = eps[:1]
    for a, b in zip(_grads(m, _loss(m, OBJECTIVES.build({**one, "gradient": "dreg"}), x, e1)),
                    _grads(m, _loss(m, OBJECTIVES.build({**one, "gradient": "stl"}), x, e1))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("overrides, needle", [
    ({"objective.gradient": "dreg"}, "objective.name: iwae"),
    ({"objective.gradient": "stl"}, "objective.kl: monte_carlo"),
    ({"objective.gradient": "stl", "model.flow": "planar", **MC}, "objective.gradient: reparam"),
    ({"model.flow": "iaf"}, "objective.kl: monte_carlo"),
    ({"objective.name": "iwae", "objective.gradient": "dreg", "objective.beta": 0.5}, "objective.beta: 1"),
    ({"objective.free_bits": 0.5, "model.prior": "mog", **MC}, "objective.free_bits_per: total"),
])
def test_combinations_without_a_meaning_are_refused_in_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        build(resolve({}, overrides), 196)
    assert needle in str(e.value) and "\n" not in str(e.value)


# -- free bits --------------------------------------------------------------------------------------
def test_free_bits_at_zero_is_the_plain_elbo_bit_for_bit(tmp_path):
    plain = resolve({"name": "a"}, TINY)
    assert resolve({"name": "a"}, {**TINY, "objective.free_bits": 0.0}).run_hash() == plain.run_hash()
    zero = resolve({"name": "a"}, {**TINY, "objective.free_bits": 0.0, "objective.free_bits_per": "total"})
    train_run(resolve(zero, {"train.engine": "torch"}), tmp_path / "zero", "cpu", progress=False)
    train_run(resolve(plain, {"train.engine": "torch"}), tmp_path / "torch", "cpu", progress=False)
    a, b = runs.read_metrics(tmp_path / "torch"), runs.read_metrics(tmp_path / "zero")
    assert a[list(runs.TERMS)].equals(b[list(runs.TERMS)])


@pytest.mark.parametrize("per", ["dimension", "total"])
def test_free_bits_loss_is_max_of_the_floor_and_the_batch_mean_kl(per):
    m = _model()
    x = torch.bernoulli(torch.full((6, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(2))
    eps = torch.randn(1, 6, 3, dtype=torch.float64)
    obj = OBJECTIVES.build({"name": "elbo", "free_bits": 0.3, "free_bits_per": per})
    t = obj(m, x, eps, step=None)
    mu, sigma = m.encode(x)
    rec = m.log_likelihood(mu + sigma * eps, x).mean(0)
    kl = elbo.kl_analytic_per_dim(mu, sigma)
    groups = kl.mean(0) if per == "dimension" else kl.sum(-1).mean().unsqueeze(0)
    want = -rec.mean() + torch.maximum(groups, torch.tensor(0.3, dtype=torch.float64)).sum()
    torch.testing.assert_close(t.loss, want)
    torch.testing.assert_close(t.kl, kl.sum(-1))  # the logged KL is the KL itself


# -- evaluation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{"prior": "mog"}, {"prior": VAMP}, {"flow": "planar"},
                                {"flow": {"name": "iaf", "hidden": 8}}])
def test_iw_estimates_bound_the_elbo_and_grow_with_k_for_every_prior_and_flow(kw):
    torch.manual_seed(4)
    m = VAE(196, 4, {"name": "mlp", "hidden": [16]}, {"name": "mlp", "hidden": [16]}, **kw)
    x = torch.bernoulli(torch.full((300, 196), 0.15), generator=torch.Generator().manual_seed(0))
    assert estimator_path(m) == "generic"
    means = []
    for k in (1, 10, 100):
        iw, w = iw_log_likelihood(m, x, k, torch.Generator().manual_seed(5))
        assert (iw >= w - 1e-9).all() and torch.isfinite(iw).all()
        means.append(float(iw.mean()))
    assert means[0] < means[1] < means[2], means


# -- engines ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides", [
    ("vamp_dreg", {"model.prior": VAMP, "objective.name": "iwae", "objective.k": 3, "objective.gradient": "dreg", **MC}),
    ("iaf_mog", {"model.flow": {"name": "iaf", "hidden": 8}, "model.prior": "mog", **MC}),
    ("planar_free_bits", {"model.flow": "planar", "objective.free_bits": 1.0, "objective.free_bits_per": "total", **MC}),
    ("stl", {"objective.gradient": "stl", "objective.k": 2, **MC}),
])
def test_new_components_train_on_the_generic_stack_as_they_do_alone(tmp_path, name, overrides):
    cfgs = [resolve({"name": name, "seed": s}, {**TINY, **overrides}) for s in (0, 1)]
    engine, why = choose_engine(cfgs[0])
    assert engine == "generic" and why.startswith("not fused: "), (engine, why)
    train_group(cfgs, [tmp_path / f"g{s}" for s in (0, 1)], "cpu", progress=False)
    for s, c in enumerate(cfgs):
        assert json.loads((tmp_path / f"g{s}" / runs.ENV).read_text())["engine"] == "generic"
        train_run(resolve(c, {"train.engine": "torch"}), tmp_path / f"t{s}", "cpu", progress=False)
        a, b = runs.read_metrics(tmp_path / f"g{s}"), runs.read_metrics(tmp_path / f"t{s}")
        np.testing.assert_allclose(a[list(runs.TERMS)], b[list(runs.TERMS)], rtol=1e-4, atol=1e-4)
