"""The kernel contract (vaebench.components.kernels): every built-in kernel agrees with its reference,
a wrong kernel is caught with its name and the size of the disagreement, and a kernel is trusted
only where it was declared."""

import functools
import re

import pytest
import torch
from torch import nn

from vaebench import elbo
from vaebench.components import (ACTIVATIONS, KL_ESTIMATORS, LIKELIHOODS, NETWORKS, OBJECTIVES, OPTIMIZERS,
                                 POSTERIORS, PRIORS, VAE, KernelMismatch, check_kernels, kernels)
from vaebench.components.kernels import Activation, KLEstimator, Likelihood, Objective, Optimizer, Posterior
from vaebench.components.likelihoods import Bernoulli
from vaebench.components.networks import MLP
from vaebench.components.objectives import ELBO, Terms
from vaebench.components.optimizers import adam
from vaebench.components.posteriors import SigmaOutput

REGISTRIES = (ACTIVATIONS, POSTERIORS, PRIORS, LIKELIHOODS, KL_ESTIMATORS, OPTIMIZERS, NETWORKS, OBJECTIVES)
EVERY = [pytest.param(reg.get(n), id=f"{reg.kind}:{n}") for reg in REGISTRIES for n in reg] + [pytest.param(VAE, id="VAE")]
# the built-ins that declare kernels (everything else: [])
WITH_KERNELS = {"Tanh", "ReLU", "Sigmoid", "SigmaOutput", "LogSigmaOutput", "Bernoulli", "analytic", "monte_carlo",
                "adam", "MLP", "ELBO", "VAE", "StandardNormal"}


@pytest.mark.parametrize("component", EVERY)
def test_every_registered_component_agrees_with_its_kernels(component):
    records = check_kernels(component)
    name = kernels.name_of(component)
    if name in WITH_KERNELS:
        assert records, f"{name} declares kernels but none was checked"
    elif getattr(component, "__module__", "").startswith("vaebench") or isinstance(component, type) and \
            component.__module__.startswith("torch"):
        assert records == [], name
    for r in records:
        rtol, atol = kernels.TOLERANCES[getattr(torch, r.dtype)]
        assert r.tolerance == f"{atol:g} + {rtol:g} |ref|"
        assert 0.0 <= r.max_abs_error < float("inf") and r.kernel.startswith(name)
    kinds = {r.kernel.split(".")[1].split("/")[0] for r in records}
    assert kinds == {k.kind for k in kernels.declared(component)}


def test_the_checks_cover_both_dtypes_and_every_output():
    got = {(r.kernel, r.dtype) for r in check_kernels(KL_ESTIMATORS.get("monte_carlo"))}
    want = {(f"monte_carlo.kl.kl_and_grads/{o}", d) for o in ("kl", "dmu", "dsigma", "dz")
            for d in ("float64", "float32")}
    assert got == want
    got = {r.kernel for r in check_kernels(ACTIVATIONS.get("tanh"))}
    assert got == {f"Tanh.activation.{f}" for f in ("scaled_forward_", "backward", "inplace_forward_")}


def _mismatch(component) -> tuple[str, float]:
    with pytest.raises(KernelMismatch) as e:
        check_kernels(component)
    msg = str(e.value)
    assert isinstance(e.value, AssertionError) and "\n" not in msg
    assert "tolerance" in msg
    size = re.search(r"max \|diff\| ([0-9.e+-]+)", msg)
    return msg, float(size.group(1)) if size else float("nan")


# -- deliberately wrong kernels -------------------------------------------------------------------
class OffBackward(nn.Tanh):
    kernels = Activation(1.0, lambda self, y: torch.tanh_(y),
                         lambda self, g, y: 1.5 * torch.ops.aten.tanh_backward(g, y))


class WrongScaledForward(nn.Tanh):  # forgets that its input is scaled: tanh(2a) instead of tanh(a)
    kernels = Activation(2.0, lambda self, y: torch.tanh_(y), lambda self, g, y: torch.ops.aten.tanh_backward(g, y))


def wrong_dmu(mu, sigma, z):
    return elbo.kl_analytic(mu, sigma)


wrong_dmu.kernels = KLEstimator(lambda mu, sigma, z, k: (elbo.kl_analytic(mu, sigma), 2 * mu, sigma - 1 / sigma, None))


class FixedFloor(SigmaOutput):
    """A kernel that ignores the floor it stands for."""

    floor = 0.05
    kernels = Posterior(lambda self, raw: (torch.nn.functional.softplus(raw) + 1e-4, torch.sigmoid(raw)))


class SignFlipped(Bernoulli):
    kernels = Likelihood(lambda self, logits, x, scale: (lambda r, g: (r, -g))(*Bernoulli._log_prob_and_grad(self, logits, x, scale)))


class DoubledLoss(ELBO):
    kernels = Objective()

    def __call__(self, model, x, generator=None, step=None):
        t = super().__call__(model, x, generator, step)
        return Terms(rec=t.rec, kl=t.kl, elbo=t.elbo, loss=2 * t.loss)


def misnamed_moments(params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    return adam(params, lr, betas, eps, weight_decay)


misnamed_moments.kernels = Optimizer(kernels.of(adam, "optimizer").update, moments=("m", "v"))


def test_an_activation_whose_backward_is_off_by_a_factor_fails_naming_it():
    msg, size = _mismatch(OffBackward)
    assert msg.startswith("OffBackward: kernel activation.backward: disagrees with autograd of OffBackward.forward")
    assert size > 0.1 and "float64" in msg and "1e-07 + 1e-07 |ref|" in msg
    msg, _ = _mismatch(WrongScaledForward)
    assert "activation.scaled_forward_" in msg


def test_a_kl_kernel_with_a_wrong_dmu_fails_naming_it():
    msg, size = _mismatch(wrong_dmu)
    assert msg.startswith("wrong_dmu: kernel kl.kl_and_grads/dmu: disagrees with autograd of wrong_dmu")
    assert size > 0.5 and "K=1" in msg


def test_the_size_of_the_disagreement_is_the_largest_one():
    msg, size = _mismatch(FixedFloor)  # sigma off by exactly 0.05 - 1e-4 everywhere
    assert "posterior.sigma_and_dsigma/sigma" in msg
    assert size == pytest.approx(0.0499, rel=1e-3)


def test_wrong_likelihood_optimizer_and_objective_kernels_fail():
    assert "likelihood.log_prob_and_grad/grad" in _mismatch(SignFlipped)[0]
    assert "objective/loss" in _mismatch(DoubledLoss)[0]
    with pytest.raises(KernelMismatch, match=r"misnamed_moments: kernel optimizer.moments: .* keeps no state 'm'"):
        check_kernels(misnamed_moments)


# -- where a kernel is trusted --------------------------------------------------------------------
class WideFloor(SigmaOutput):
    floor = 0.05  # a constant the kernel reads: it keeps the kernel


class ScaledSigma(SigmaOutput):
    def sigma(self, raw):  # new math: no kernel for it
        return 2.0 * torch.nn.functional.softplus(raw) + self.floor


class MyTanh(ACTIVATIONS.get("tanh")):
    def forward(self, x):
        return torch.tanh(2 * x)


class MyMLP(MLP):
    def forward(self, x):
        return super().forward(x) + 1.0


def test_a_subclass_that_changes_the_math_loses_the_kernel():
    assert kernels.of(WideFloor(), "posterior") is not None and check_kernels(WideFloor)
    assert kernels.of(ScaledSigma(), "posterior") is None and check_kernels(ScaledSigma) == []
    assert kernels.of(MyTanh(), "activation") is None and check_kernels(MyTanh) == []
    assert kernels.of(ACTIVATIONS.get("tanh")(), "activation") is not None
    assert kernels.of(MyMLP(3, [4], 2), "network") is None
    assert kernels.of(OBJECTIVES.get("iwae")(), "objective") is None and check_kernels(OBJECTIVES.get("iwae")) == []
    assert kernels.of(ELBO(), "objective") is not None


def test_a_kernel_reads_the_instance_it_is_bound_to():
    raw = torch.full((3,), -50.0)
    sigma, _ = kernels.of(WideFloor(), "posterior").sigma_and_dsigma(raw)
    assert torch.equal(sigma, WideFloor().sigma(raw)) and float(sigma[0]) == pytest.approx(0.05)


def weighted_kl(mu, sigma, z, weight: float = 1.0):
    return weight * elbo.kl_analytic(mu, sigma)


weighted_kl.kernels = KLEstimator(lambda mu, sigma, z, k, weight=1.0: (
    weight * elbo.kl_analytic(mu, sigma), weight * mu, weight * (sigma - 1.0 / sigma), None))


def forgets_weight(mu, sigma, z, weight: float = 1.0):
    return weight * elbo.kl_analytic(mu, sigma)


forgets_weight.kernels = KLEstimator(lambda mu, sigma, z, k, **_: (elbo.kl_analytic(mu, sigma), mu, sigma - 1.0 / sigma, None))


def test_a_partial_of_a_function_component_passes_its_keywords_to_the_kernel():
    bound = functools.partial(weighted_kl, weight=3.0)
    assert check_kernels(bound) and check_kernels(functools.partial(bound))
    mu, sigma = torch.zeros(2, 3), torch.ones(2, 3)
    kl, dmu, dsig, dz = kernels.of(bound, "kl").kl_and_grads(mu + 1, sigma, None, 1)
    assert torch.allclose(kl, 3.0 * elbo.kl_analytic(mu + 1, sigma)) and torch.equal(dmu, 3.0 * (mu + 1))
    assert check_kernels(forgets_weight)  # at the default weight the kernel is right ...
    msg, size = _mismatch(functools.partial(forgets_weight, weight=2.0))  # ... and wrong at another
    assert msg.startswith("forgets_weight(weight=2.0): kernel kl.kl_and_grads/kl") and size > 0
    assert kernels.of(functools.partial(adam, eps=1e-6), "optimizer") == kernels.of(functools.partial(adam, eps=1e-6), "optimizer")


def test_lookup():
    assert kernels.of(adam, "optimizer") is adam.kernels  # a plain function: the declaration itself
    assert kernels.of(adam, "kl") is None and kernels.of(OPTIMIZERS.get("sgd"), "optimizer") is None
    assert kernels.of(nn.ELU(), "activation") is None and check_kernels(nn.ELU) == []
    with pytest.raises(KeyError, match="unknown kernel kind"):
        kernels.of(adam, "fused")


def test_a_prior_whose_log_ratio_is_wrong_fails_naming_it():
    from vaebench.components.kernels import Prior
    from vaebench.components.priors import StandardNormal

    class Shifted(StandardNormal):
        kernels = Prior(log_ratio=lambda self, eps, z, ls: 0.5 * ((eps - z) * (eps + z)).sum(-1) + ls + 0.5,
                        standard_normal=True, example=lambda cls: [cls(3)])

    msg, err = _mismatch(Shifted)
    assert "prior.log_ratio" in msg and err == pytest.approx(0.5, rel=1e-6)

    class Learned(StandardNormal):  # new math, no declaration: neither fast path trusts it
        def log_prob(self, z):
            return super().log_prob(z) - 1.0

    assert kernels.of(Learned(3), "prior") is None and check_kernels(Learned(3)) == []
