"""The ELBO's terms against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaebench import elbo
from vaebench.components import KL_ESTIMATORS, OBJECTIVES, POSTERIORS, VAE


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_analytic_kl_equals_closed_form_and_torch():
    g = _gen()
    mu = torch.randn(7, 5, generator=g, dtype=torch.float64)
    sigma = torch.rand(7, 5, generator=g, dtype=torch.float64) * 2 + 0.05
    ours = elbo.kl_analytic(mu, sigma)
    by_hand = 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)
    reference = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(ours, by_hand)
    torch.testing.assert_close(ours, reference)
    assert torch.all(elbo.kl_analytic(torch.zeros(3, 4), torch.ones(3, 4)) == 0)


def test_monte_carlo_kl_is_unbiased_for_the_analytic_value():
    g = _gen(1)
    mu = torch.tensor([[0.3, -1.2, 0.0], [2.0, 0.5, -0.4]], dtype=torch.float64)
    sigma = torch.tensor([[0.5, 1.3, 0.9], [0.2, 1.0, 2.0]], dtype=torch.float64)
    n = 200_000
    z = elbo.reparameterize(mu, sigma, torch.randn(n, *mu.shape, generator=g, dtype=torch.float64))
    per_sample = elbo.gaussian_log_prob(z, mu, sigma) - elbo.standard_normal_log_prob(z)
    estimate = elbo.kl_monte_carlo(z, mu, sigma)
    exact = elbo.kl_analytic(mu, sigma)
    stderr = per_sample.std(0) / math.sqrt(n)
    assert torch.all((estimate - exact).abs() < 4 * stderr), (estimate, exact, stderr)
    torch.testing.assert_close(estimate, per_sample.mean(0))


def test_gaussian_log_probs_match_torch():
    g = _gen(2)
    z, mu = torch.randn(3, 4, 6, generator=g), torch.randn(4, 6, generator=g)
    sigma = torch.rand(4, 6, generator=g) + 0.1
    torch.testing.assert_close(elbo.gaussian_log_prob(z, mu, sigma), Normal(mu, sigma).log_prob(z).sum(-1))
    torch.testing.assert_close(elbo.standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_bernoulli_term_equals_torch_distribution_from_logits():
    g = _gen(3)
    logits = torch.randn(2, 5, 196, generator=g) * 30  # extreme logits where log(sigmoid) would underflow
    x = (torch.rand(5, 196, generator=g) > 0.5).float()
    expected = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    ours = elbo.bernoulli_log_prob(logits, x)
    torch.testing.assert_close(ours, expected)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("name", ["sigma", "log_sigma"])
def test_posterior_inverse_roundtrip(name):
    post = POSTERIORS.get(name)()
    sigma = torch.tensor([1e-3, 0.1, 1.0, 3.0, 20.0], dtype=torch.float64)
    torch.testing.assert_close(post.sigma(post.raw(sigma)), sigma)


def test_sigma_and_log_sigma_give_the_same_distribution_for_matching_outputs():
    """Two encoders whose last layers differ only by the map raw -> sigma define the same q(z|x)."""
    torch.manual_seed(0)
    net = dict(name="mlp", hidden=[16], activation="tanh")
    a = VAE(12, 3, net, net, posterior="sigma").double()
    b = VAE(12, 3, net, net, posterior="log_sigma").double()
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 12, dtype=torch.float64)
    mu_a, sigma_a = a.encode(x)
    raw = a.encoder(x).chunk(2, -1)[1]
    # log_sigma's network outputs log(sigma_a) where sigma's outputs raw:
    matched = b.posterior.sigma(torch.log(a.posterior.sigma(raw)))
    torch.testing.assert_close(matched, sigma_a)
    z = torch.randn(5, 4, 3, dtype=torch.float64)
    qa, qb = Normal(mu_a, sigma_a), Normal(mu_a, matched)
    torch.testing.assert_close(qa.log_prob(z), qb.log_prob(z))
    torch.testing.assert_close(elbo.kl_analytic(mu_a, sigma_a), elbo.kl_analytic(mu_a, matched))


def test_k_sample_reconstruction_is_the_mean_over_samples():
    torch.manual_seed(1)
    net = dict(name="mlp", hidden=[16], activation="tanh")
    model = VAE(10, 2, net, net).double()
    x = (torch.rand(6, 10, dtype=torch.float64) > 0.5).double()
    k = 4
    terms = OBJECTIVES.get("elbo")(k=k, kl="analytic")(model, x, _gen(5))
    # Redo by hand with the same noise.
    mu, sigma = model.encode(x)
    eps = torch.randn((k, *mu.shape), generator=_gen(5), dtype=torch.float64)
    per_sample = torch.stack([elbo.bernoulli_log_prob(model.decode(mu + sigma * eps[i]), x) for i in range(k)])
    torch.testing.assert_close(terms.rec, per_sample.mean(0))
    torch.testing.assert_close(terms.kl, elbo.kl_analytic(mu, sigma))
    torch.testing.assert_close(terms.elbo, terms.rec - terms.kl)
    torch.testing.assert_close(terms.loss, -(terms.rec - terms.kl).mean())


def test_monte_carlo_kl_uses_the_same_z_as_the_reconstruction():
    torch.manual_seed(2)
    net = dict(name="mlp", hidden=[8], activation="tanh")
    model = VAE(10, 2, net, net).double()
    x = (torch.rand(3, 10, dtype=torch.float64) > 0.5).double()
    terms = OBJECTIVES.get("elbo")(k=3, kl="monte_carlo")(model, x, _gen(7))
    mu, sigma = model.encode(x)
    z = mu + sigma * torch.randn((3, *mu.shape), generator=_gen(7), dtype=torch.float64)
    torch.testing.assert_close(terms.kl, (Normal(mu, sigma).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0))
    assert set(KL_ESTIMATORS.names()) >= {"analytic", "monte_carlo"}
