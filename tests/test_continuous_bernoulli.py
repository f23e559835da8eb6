"""The continuous Bernoulli likelihood and data.binarize: none (grey levels in [0, 1]).

The math against independent references: numerical integration over [0, 1] (a density integrates to
1, its mean is the integral of x p(x)), torch.distributions.ContinuousBernoulli, the closed-form
derivative of log C, the exponential-family identity E[x] = A'(l), and an exact log p(x) over a
grid of z. Then everything downstream on grey levels: the refusal of bernoulli with them, training
on the generic and torch engines (auto picks generic), the held-out evaluator and the figures' means.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from vaebench import elbo, runs
from vaebench.components import LIKELIHOODS, VAE
from vaebench.config import resolve
from vaebench.data import BINARIZERS, load_splits
from vaebench.errors import ConfigError
from vaebench.evaluation import iw_log_likelihood
from vaebench.evaluation.run import evaluate_run, split_images
from vaebench.training import choose_engine, train_group, train_run

from conftest import invoke, one_line_error

CB = "continuous_bernoulli"
F64 = torch.float64
# several lambdas: 0.5 (l = 0), near it, at both sides of each Taylor switch, moderate and extreme
LOGITS = [0.0, 1e-4, -1e-3, 0.05, elbo.CB_LOG_NORM_TAYLOR, -elbo.CB_MEAN_TAYLOR, 1.0, -3.0, 15.0, -15.0]
TINY = ["data.binarize=none", f"model.likelihood={CB}", "data.per_class=20", "data.val_size=20",
        "train.steps=30", "train.batch_size=20", "train.eval_every=10", "train.flush_every=10",
        "train.checkpoint_every=30", "train.threads=1", "model.latent=3", "model.encoder.hidden=[16]",
        "model.decoder.hidden=[16]", "eval.enabled=false"]
RTOL, ATOL = 1e-4, 1e-4  # per-step metrics of one run on two engines (as tests/test_engines.py)


@LIKELIHOODS.register("test_cb_unmarked")
class Unmarked:
    """A user's likelihood that says nothing about its pixels (no binary_only): never refused."""

    def log_prob(self, logits, x):
        return elbo.bernoulli_log_prob(logits, x)

    def mean(self, logits):
        return torch.sigmoid(logits)


# -- the math --------------------------------------------------------------------------------------
@pytest.mark.parametrize("l", LOGITS)
def test_the_density_integrates_to_one_and_its_mean_is_the_integral_of_x(l):
    x = torch.linspace(0.0, 1.0, 200_001, dtype=F64)[:, None]  # 1-pixel images
    lik = LIKELIHOODS.build(CB)
    p = lik.log_prob(torch.full_like(x, l), x).exp()
    assert abs(float(torch.trapezoid(p, x[:, 0])) - 1.0) < 1e-4
    mean = float(torch.trapezoid(x[:, 0] * p, x[:, 0]))
    assert float(lik.mean(torch.tensor(l, dtype=F64))) == pytest.approx(mean, abs=1e-6)


def _grid():
    l = torch.cat([torch.linspace(-15.0, 15.0, 301, dtype=F64),
                   torch.tensor([0.0, 1e-8, -1e-4, 1e-3, 0.0999, 0.1001, 0.4999, -0.5001], dtype=F64)])
    x = torch.rand((3, len(l)), generator=torch.Generator().manual_seed(0), dtype=F64)
    x[0, ::7], x[1, ::5] = 0.0, 1.0  # the edges of the support
    return l.expand(3, -1), x


def test_log_prob_and_mean_equal_torch_distributions_continuous_bernoulli():
    l, x = _grid()
    ref = torch.distributions.ContinuousBernoulli(logits=l)
    lik = LIKELIHOODS.build(CB)
    torch.testing.assert_close(lik.log_prob(l, x), ref.log_prob(x).sum(-1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lik.mean(l), ref.mean, rtol=0, atol=1e-9)
    # float32: within float32 rounding of the float64 reference, summed over 309 pixels
    torch.testing.assert_close(lik.log_prob(l.float(), x.float()).double(), ref.log_prob(x).sum(-1),
                               rtol=0, atol=1e-3)
    torch.testing.assert_close(lik.mean(l.float()).double(), ref.mean, rtol=0, atol=1e-6)
    # logits (B, S, D) against images (B, 1, D), as the held-out evaluator passes them
    ls = torch.stack([l, -l], 1)
    mirror = torch.distributions.ContinuousBernoulli(logits=-l)
    want = torch.stack([ref.log_prob(x).sum(-1), mirror.log_prob(x).sum(-1)], 1)
    torch.testing.assert_close(lik.log_prob(ls, x[:, None]), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_are_finite_everywhere_and_equal_the_closed_form(dtype):
    """d/dl log p(x|l) = x - sigmoid(l) + 1/l - 1/sinh(l), 0 + x - 1/2 at l = 0."""
    special = [0.0, 1e-30, -1e-8, 1e-5, elbo.CB_LOG_NORM_TAYLOR, -elbo.CB_MEAN_TAYLOR, 88.0, -100.0, 1e4, -1e30]
    l = torch.tensor(special, dtype=dtype, requires_grad=True)
    x = torch.linspace(0.0, 1.0, len(special), dtype=dtype)
    lik = LIKELIHOODS.build(CB)
    (g,) = torch.autograd.grad(lik.log_prob(l, x), l)
    (g_mean,) = torch.autograd.grad(lik.mean(l).sum(), l)
    assert torch.isfinite(g).all() and torch.isfinite(g_mean).all()
    ld, xd = l.detach().double(), x.double()
    big = ld.abs() > 1e-3  # where 1/l - 1/sinh(l) does not cancel in float64
    want = xd - torch.sigmoid(ld) + torch.where(big, 1.0 / ld - 1.0 / torch.sinh(ld), ld / 6.0)
    torch.testing.assert_close(g.double(), want, rtol=1e-5, atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert float(g[0]) == pytest.approx(float(x[0]) - 0.5)  # l = 0 exactly


def test_the_mean_is_the_derivative_of_the_log_partition():
    """log p(x|l) = x l - A(l) with A = softplus(l) - log C(l), so E[x] = A'(l): ties the mean's
    formula to the normaliser's, through autograd, Taylor branches included."""
    l, _ = _grid()
    l = l[0].clone().requires_grad_(True)
    (a_prime,) = torch.autograd.grad((F.softplus(l) - elbo.continuous_bernoulli_log_normalizer(l)).sum(), l)
    torch.testing.assert_close(elbo.continuous_bernoulli_mean(l.detach()), a_prime, rtol=0, atol=1e-12)


@pytest.mark.parametrize("switch", [elbo.CB_LOG_NORM_TAYLOR, elbo.CB_MEAN_TAYLOR])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_both_branches_agree_across_the_taylor_switch(switch, dtype):
    at = torch.tensor([switch, -switch], dtype=dtype)
    below = torch.nextafter(at, torch.zeros_like(at))
    tol = 1e-14 if dtype == torch.float64 else 3e-7
    for f in (elbo.continuous_bernoulli_log_normalizer, elbo.continuous_bernoulli_mean):
        assert (f(at) - f(below)).abs().max() < tol, f.__name__
    assert float(elbo.continuous_bernoulli_log_normalizer(torch.zeros((), dtype=dtype))) == pytest.approx(math.log(2))
    assert float(elbo.continuous_bernoulli_mean(torch.zeros((), dtype=dtype))) == 0.5


# -- data.binarize: none and the refusal ---------------------------------------------------------------
def test_binarize_none_keeps_the_grey_levels_in_0_1_and_the_same_each_time():
    grey = load_splits("mnist14", per_class=5, val_size=5)["train"]
    none = BINARIZERS.get("none")
    x = none.prepare(grey, "cpu")
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) <= 1.0
    np.testing.assert_allclose(x.numpy(), grey.images / grey.max_level, rtol=1e-7, atol=0)  # level / max_level
    assert x.equal(BINARIZERS.get("dynamic").prepare(grey, "cpu"))  # the dynamic binarizer's probabilities
    assert float(((x > 0) & (x < 1)).float().mean()) > 0.05  # grey levels, not bits
    assert none.sample(x, torch.Generator().manual_seed(1)).equal(x)
    assert none.fixed and not none.binary
    assert BINARIZERS.get("threshold").binary and BINARIZERS.get("dynamic").binary


def test_bernoulli_on_grey_levels_is_refused_in_one_line_naming_both_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve({}, ["data.binarize=none"])
    msg = str(e.value)
    assert "\n" not in msg and "model.likelihood: bernoulli" in msg and "data.binarize: none" in msg
    assert f"use model.likelihood: {CB}" in msg and "threshold" in msg and "dynamic" in msg
    resolve({}, ["data.binarize=none", f"model.likelihood={CB}"])
    resolve({}, [f"model.likelihood={CB}"])  # a density of 0/1 pixels too: allowed
    resolve({}, ["data.binarize=none", "model.likelihood=test_cb_unmarked"])  # unmarked: not refused
    p = tmp_path / "grey.yaml"
    p.write_text(yaml.safe_dump({"data": {"binarize": "none"}, "train": {"steps": 5}}))
    one_line_error(invoke("run", str(p), "--out", str(tmp_path / "out")),
                   "model.likelihood: bernoulli", "data.binarize: none", str(p), CB)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("config.yaml"))


# -- downstream: engines, evaluation, the figures' means -------------------------------------------------
def test_a_tiny_grey_level_run_trains_on_generic_and_torch_and_evaluates(tmp_path):
    cfgs = [resolve({}, TINY + [f"seed={s}"]) for s in (0, 1)]
    engine, why = choose_engine(cfgs[0])
    assert engine == "generic" and "ContinuousBernoulli declares no fused kernel (likelihood)" in why
    with pytest.raises(ConfigError, match="train.engine=fused cannot train"):
        choose_engine(resolve(cfgs[0], {"train.engine": "fused"}))
    dirs = [tmp_path / "g0", tmp_path / "g1"]
    assert [r.state for r in train_group(cfgs, dirs, "cpu", progress=False)] == ["done"] * 2
    assert {runs.read_json(d / runs.ENV)["engine"] for d in dirs} == {"generic"}
    train_run(resolve(cfgs[0], {"train.engine": "torch"}), tmp_path / "t0", "cpu", progress=False)
    assert runs.read_json(tmp_path / "t0" / runs.ENV)["engine"] == "torch"
    a, b = runs.read_metrics(dirs[0]), runs.read_metrics(tmp_path / "t0")
    assert list(a.step) == list(b.step) and np.isfinite(a[list(runs.TERMS)].to_numpy()).all()
    np.testing.assert_allclose(a[list(runs.TERMS)], b[list(runs.TERMS)], rtol=RTOL, atol=ATOL)

    x = split_images(runs.read_config(dirs[0])["data"], "val")
    assert float(((x > 0) & (x < 1)).float().mean()) > 0.05
    model = runs.load_model(dirs[0])
    iw, mean_w = iw_log_likelihood(model, x, 16, torch.Generator().manual_seed(0))
    assert torch.isfinite(iw).all() and torch.all(iw >= mean_w)  # log-mean-exp >= mean, per image
    entry = evaluate_run(dirs[0], k=16, split="val", device="cpu")
    assert entry["estimator"] == "generic" and math.isfinite(entry["iw_ll"]) and entry["iw_ll"] >= entry["elbo"]
    for means in (model.reconstruct(x), model.sample(8, torch.Generator().manual_seed(0))):
        assert means.shape[1] == x.shape[1] and float(means.min()) >= 0.0 and float(means.max()) <= 1.0


def test_the_estimate_converges_to_the_exact_log_density_of_grey_images():
    """log p(x) = log of the integral of p(x|z) p(z) dz, by a fine grid over a 2-d z."""
    torch.manual_seed(0)
    model = VAE(6, 2, {"name": "mlp", "hidden": [8]}, {"name": "mlp", "hidden": [8]}, likelihood=CB).double().eval()
    x = torch.rand((4, 6), generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        g = torch.linspace(-7.0, 7.0, 401, dtype=F64)
        z = torch.cartesian_prod(g, g)
        logits, log_pz = model.decode(z), elbo.standard_normal_log_prob(z)
        exact = torch.stack([torch.logsumexp(model.likelihood.log_prob(logits, xi) + log_pz, 0) for xi in x])
        exact += 2 * math.log(float(g[1] - g[0]))
    iw, mean_w = iw_log_likelihood(model, x, 20_000, torch.Generator().manual_seed(2))
    assert torch.all(mean_w < iw)
    # 0.05: about 3 standard deviations of this estimate over seeds (0.005 to 0.019 nats for these
    # images, an untrained encoder); log C alone is 6 log 2 = 4.2 nats at l = 0
    torch.testing.assert_close(iw, exact, atol=0.05, rtol=0)
