"""The kernel contract: what a fast path may run instead of a component's torch code, in one place.

A fast path (the fused training engine, vaebench.training.fused; the fused held-out evaluator,
vaebench.evaluation.estimates) never runs a component's reference math through autograd: it runs
the component's *kernels*, hand-written functions that must agree with that reference. Each kind
of kernel is one frozen dataclass below; its ``reference`` names the attributes whose math it
stands for, its fields are callables of the protocols below it lists.

Declaring. A component declares its kernel in ONE attribute, ``kernels``, holding one of those
dataclasses (or a tuple of them, one per kind)::

    class Tanh(nn.Tanh):
        kernels = Activation(scale=2.0, scaled_forward_=..., backward=..., inplace_forward_=...)

    def analytic(mu, sigma, z): ...
    analytic.kernels = KLEstimator(kl_and_grads=...)

The kernel callables of a class component are declared like methods: they are called with the
component instance first (so they read its constants, ``self.floor``); those of a function
component are called with the keyword arguments a ``functools.partial`` of it binds (none for the
plain function). ``of(component, kind)`` returns the kernel with that first argument (or those
keywords) bound: the form the protocols below describe and the engines call.

Trust. A kernel is trusted only where it was declared: a subclass that redefines one of the
``reference`` attributes below the class that declared ``kernels`` (say ``SigmaOutput.sigma``, an
activation's ``forward``) without declaring ``kernels`` again has none, so the fast paths refuse it
and the generic paths (autograd on its torch code) run it; a subclass that only changes a
constant the kernel reads (``SigmaOutput.floor``) keeps the kernel and gets the same numbers on
every engine. ``check_kernels(component)`` compares every kernel a component declares with its
reference (values and gradients, TOLERANCES); run it on your own components.

The engines read kernels only through ``of`` (and ``check_kernels`` through it too): no other
module reads a ``kernels`` attribute.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Protocol, Sequence

import torch

# -- the callables, as the engines call them (bound: no component argument) -------------------


class ScaledForward(Protocol):
    """In place on ``y = scale * a`` (the engine's matmul applies ``scale`` for free): writes
    ``activation(a)`` into ``y`` and returns it."""

    def __call__(self, y: torch.Tensor) -> torch.Tensor: ...


class ActivationBackward(Protocol):
    """(grad of the output, the output ``activation(a)``) -> grad of the input ``a``."""

    def __call__(self, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor: ...


class InplaceForward(Protocol):
    """In place on the unscaled input ``a``: writes ``activation(a)`` into ``a`` and returns it."""

    def __call__(self, a: torch.Tensor) -> torch.Tensor: ...


class SigmaMap(Protocol):
    """raw (..., B, L) -> (sigma(raw), d sigma / d raw), elementwise."""

    def __call__(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class LogProbGrad(Protocol):
    """(logits (..., D), x broadcasting against them, scale) -> (log p(x | logits) summed over the
    last dim, its gradient in the logits times -scale)."""

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


class LinearLogProb(Protocol):
    """(images x (B, D), a linear layer's weight (D, H)) -> f with f(h) = log_prob(weight @ h[b],
    x[b]) for h (B, H, S), samples last, shape (B, S). No gradient (the evaluator's kernel)."""

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]: ...


class KLGrads(Protocol):
    """(mu (..., B, L), sigma (..., B, L), z (K, ..., B, L), K) -> (KL per example (..., B), its
    gradient in mu, in sigma, in z (None when it is 0)), each holding the other two fixed."""

    def __call__(self, mu: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


class OptimizerUpdate(Protocol):
    """One update, in place, of each tensor of ``params`` from ``grads`` and the two moment lists
    (the optimizer's state under the names ``Optimizer.moments``); ``step``: the update count
    after this one (a 0-dim tensor)."""

    def __call__(self, params: list, grads: list, first: list, second: list, step: torch.Tensor, *,
                 lr: float, betas: Sequence[float], eps: float, weight_decay: float) -> None: ...


class LogRatio(Protocol):
    """(eps (..., L), z = mu + sigma * eps (..., L), sum of log sigma over L (..., 1) or (...,)) ->
    log p(z) - log q(z|x) summed over L, q = N(mu, diag sigma^2). No gradient (the evaluator's)."""

    def __call__(self, eps: torch.Tensor, z: torch.Tensor, log_sigma_sum: torch.Tensor) -> torch.Tensor: ...


class DepartsFrom(Protocol):
    """() -> None when this instance is the composition its class declares, else a one-line reason
    it is not (a VAE with a flow, an ELBO with another gradient estimator): the fast paths then
    refuse it and say why."""

    def __call__(self) -> str | None: ...


class NetworkLayers(Protocol):
    """() -> (the network's nn.Linear layers in order, the bound Activation kernel between each
    two), or a one-line reason the fused engine cannot run this instance."""

    def __call__(self) -> tuple[list, list[Activation]] | str: ...


class ColumnsForward(Protocol):
    """(h_t (features + 1, rows) whose last row is ones, out (features_out, rows), layers: how many
    leading modules to run, None: all) -> ``out`` holding those modules on the columns, without
    autograd; or None (nothing written) when this instance has no such kernel."""

    def __call__(self, h_t: torch.Tensor, out: torch.Tensor, layers: int | None = None) -> torch.Tensor | None: ...


# -- the kinds --------------------------------------------------------------------------------
# ``example``: for check_kernels, the class -> a few small instances to check (default: the class
# called with no arguments). Not a kernel; never bound.


@dataclass(frozen=True)
class Activation:
    """An activation. Reference: its ``forward`` (the module called on a tensor).

    Training (the fused engine): ``scale`` (the factor the engine's matmul applies to the
    pre-activation), ``scaled_forward_`` (ScaledForward: in place on the *scaled* pre-activation,
    e.g. tanh(a) = 2 sigmoid(2a) - 1 from 2a), ``backward`` (ActivationBackward). Evaluation (the
    held-out evaluator): ``inplace_forward_`` (InplaceForward: in place on the *unscaled* input;
    None: the evaluator runs the module)."""

    kind: ClassVar[str] = "activation"
    reference: ClassVar[tuple[str, ...]] = ("forward",)
    scale: float
    scaled_forward_: Callable
    backward: Callable
    inplace_forward_: Callable | None = None
    example: Callable | None = None


@dataclass(frozen=True)
class Posterior:
    """How the encoder's raw output becomes sigma. Reference: its ``sigma``.
    ``sigma_and_dsigma``: SigmaMap."""

    kind: ClassVar[str] = "posterior"
    reference: ClassVar[tuple[str, ...]] = ("sigma",)
    sigma_and_dsigma: Callable
    example: Callable | None = None


@dataclass(frozen=True)
class Likelihood:
    """An observation model on logits. Reference: its ``log_prob``.
    ``log_prob_and_grad``: LogProbGrad (training); ``linear_log_prob``: LinearLogProb (evaluation;
    None: the evaluator runs ``log_prob``)."""

    kind: ClassVar[str] = "likelihood"
    reference: ClassVar[tuple[str, ...]] = ("log_prob",)
    log_prob_and_grad: Callable
    linear_log_prob: Callable | None = None
    example: Callable | None = None


@dataclass(frozen=True)
class KLEstimator:
    """A KL estimator (a function component). Reference: the function itself,
    ``fn(mu, sigma, z)`` -> KL per example. ``kl_and_grads``: KLGrads."""

    kind: ClassVar[str] = "kl"
    reference: ClassVar[tuple[str, ...]] = ()
    kl_and_grads: Callable
    example: Callable | None = None


@dataclass(frozen=True)
class Optimizer:
    """An optimizer (a function component). Reference: the torch.optim optimizer the function
    builds, ``fn(params, lr=..., ...)``, and its ``step()``. ``update``: OptimizerUpdate;
    ``moments``: the names of its two state tensors per parameter, as the torch optimizer keeps
    them (checkpoints carry them under these names)."""

    kind: ClassVar[str] = "optimizer"
    reference: ClassVar[tuple[str, ...]] = ()
    update: Callable
    moments: tuple[str, str]
    example: Callable | None = None


@dataclass(frozen=True)
class Prior:
    """A prior p(z). Reference: its ``log_prob``. ``log_ratio``: LogRatio (the held-out evaluator's
    importance weight; None: it computes log_prob(z) - log q(z|x) itself). ``standard_normal``: the
    prior is N(0, I), what the fused engine's KL kernels (analytic, monte_carlo) are written
    against; a prior that does not declare it trains on the generic or torch engine."""

    kind: ClassVar[str] = "prior"
    reference: ClassVar[tuple[str, ...]] = ("log_prob",)
    log_ratio: Callable | None = None
    standard_normal: bool = False
    example: Callable | None = None


@dataclass(frozen=True)
class Network:
    """An encoder/decoder network. Reference: its ``forward``. ``layers``: NetworkLayers (the fused
    engine: Linear layers with biases, an activation kernel between each two); ``columns``:
    ColumnsForward (the held-out evaluator; None: it runs the module)."""

    kind: ClassVar[str] = "network"
    reference: ClassVar[tuple[str, ...]] = ("forward",)
    layers: Callable
    columns: Callable | None = None
    example: Callable | None = None


@dataclass(frozen=True)
class Model:
    """A composition declaration: the model's ``encode``, ``decode`` and ``log_likelihood`` are
    exactly what the VAE writes, so a fast path may compute them from its parts' kernels:
    encode(x) = (mu, posterior.sigma(raw)) with (mu, raw) = encoder(x).chunk(2, -1);
    decode(z) = decoder(z); log_likelihood(z, x) = likelihood.log_prob(decoder(z), x).
    Reference: those three methods. ``departs``: DepartsFrom (None: every instance is that composition)."""

    kind: ClassVar[str] = "model"
    reference: ClassVar[tuple[str, ...]] = ("encode", "decode", "log_likelihood")
    departs: Callable | None = None
    example: Callable | None = None


@dataclass(frozen=True)
class Objective:
    """A composition declaration: the objective's ``__call__(model, x, eps, step)`` is the ELBO as
    the fused engine computes it from the kernels: (mu, sigma) = model.encode(x), z = mu + sigma *
    eps (eps of shape ``eps_shape``), rec = mean over K of model.log_likelihood(z, x),
    kl = self.kl(mu, sigma, z), loss = -mean(rec - self.kl_weight(step) * kl), elbo = rec - kl.
    Reference: ``__call__``. ``departs``: DepartsFrom (None: every instance is that composition)."""

    kind: ClassVar[str] = "objective"
    reference: ClassVar[tuple[str, ...]] = ("__call__",)
    departs: Callable | None = None
    example: Callable | None = None


KINDS: dict[str, type] = {k.kind: k for k in (Activation, Posterior, Likelihood, KLEstimator, Optimizer,
                                               Prior, Network, Model, Objective)}


# -- lookup -----------------------------------------------------------------------------------


class _Bound:
    """A kernel callable with its component (or a partial's keywords) bound; equal to another bound
    to the same function, instance and keywords (the fused engine groups runs by kernel)."""

    __slots__ = ("fn", "args", "kw")

    def __init__(self, fn: Callable, args: tuple, kw: dict):
        self.fn, self.args, self.kw = fn, args, kw

    def __call__(self, *args, **kw):
        return self.fn(*self.args, *args, **self.kw, **kw)

    def _key(self):
        return self.fn, tuple(id(a) for a in self.args), repr(sorted(self.kw.items()))

    def __eq__(self, other):
        return isinstance(other, _Bound) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"bound({self.fn!r})"


def _unwrap(component: Any) -> tuple[Any, dict]:
    """The component under any functools.partial, and the keywords those partials bind."""
    keywords: dict = {}
    while isinstance(component, functools.partial):
        keywords = {**component.keywords, **keywords}
        component = component.func
    return component, keywords


def _is_function(obj: Any) -> bool:
    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType))


def name_of(component: Any) -> str:
    """The name of a component's function or class (under any partial), for messages."""
    fn, _ = _unwrap(component)
    return getattr(fn, "__name__", None) if isinstance(fn, type) or _is_function(fn) else type(fn).__name__


def _owner(cls: type, attr: str) -> type | None:
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def _pick(decl: Any, kind: str) -> Any:
    for k in decl if isinstance(decl, tuple) else (decl,):
        if getattr(k, "kind", None) == kind and isinstance(k, KINDS[kind]):
            return k
    return None


def _bind(k: Any, args: tuple, kw: dict) -> Any:
    fields = {f.name: _Bound(getattr(k, f.name), args, kw) for f in dataclasses.fields(k)
              if f.name != "example" and callable(getattr(k, f.name))}
    return dataclasses.replace(k, **fields)


def declared(component: Any) -> list:
    """Every kernel ``component`` (a class, instance, function or a partial of one) declares and
    keeps (see Trust in the module docstring), unbound, one per kind."""
    return [k for kind in KINDS if (k := _lookup(component, kind)) is not None]


def _lookup(component: Any, kind: str) -> Any:
    fn, _ = _unwrap(component)
    if _is_function(fn):
        return _pick(getattr(fn, "kernels", None), kind)
    cls = fn if isinstance(fn, type) else type(fn)
    owner = _owner(cls, "kernels")
    if owner is None:
        return None
    k = _pick(vars(owner)["kernels"], kind)
    if k is None:
        return None
    for attr in k.reference:
        redefined = _owner(cls, attr)
        if redefined is not None and redefined is not owner and issubclass(redefined, owner):
            return None
    return k


def of(component: Any, kind: str) -> Any:
    """``component``'s kernel of ``kind`` (a key of KINDS), bound to the instance (or to the
    keywords of a partial of a function component), or None when it declares none or a subclass
    below the declaration redefines its reference. A class (not an instance) gets the declaration
    unbound: enough to ask whether it has one."""
    if kind not in KINDS:
        raise KeyError(f"unknown kernel kind {kind!r}; known: {', '.join(KINDS)}")
    k = _lookup(component, kind)
    if k is None:
        return None
    fn, kw = _unwrap(component)
    if _is_function(fn):
        return _bind(k, (), kw) if kw else k
    return k if isinstance(fn, type) else _bind(k, (fn,), {})


def departs(component: Any, kind: str) -> str | None:
    """Why ``component``'s instance is not the composition its kernel of ``kind`` (model, objective)
    declares, from its ``departs``; None: it is (or it declares no such kernel)."""
    k = of(component, kind)
    return k.departs() if k is not None and getattr(k, "departs", None) is not None else None


# -- checking ---------------------------------------------------------------------------------

# |kernel - reference| <= atol + rtol * |reference|, elementwise, per dtype: float64 is the
# reference math in another order; float32 adds reassociation over sums of up to a few hundred
# terms (the likelihood's, the KL's).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {torch.float64: (1e-7, 1e-7), torch.float32: (1e-5, 1e-5)}
DTYPES = (torch.float64, torch.float32)


class KernelMismatch(AssertionError):
    """A declared kernel disagrees with its reference beyond TOLERANCES (or breaks its protocol)."""


class Checked(NamedTuple):
    """One kernel output compared with its reference over every probe of one dtype."""

    kernel: str  # "Component.kind.field[/output]"
    dtype: str
    max_abs_error: float
    tolerance: str  # "atol + rtol |ref|"


def _name(component: Any) -> str:
    fn, kw = _unwrap(component)
    base = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    if not (isinstance(fn, type) or _is_function(fn)):
        base = type(fn).__qualname__
    return base + (f"({', '.join(f'{k}={v!r}' for k, v in kw.items())})" if kw else "")


class _Checker:
    def __init__(self, component: Any):
        self.component = _name(component)
        self.records: dict[tuple[str, str], Checked] = {}
        self.gen = torch.Generator().manual_seed(0)

    def randn(self, *shape, dtype):
        return torch.randn(shape, generator=self.gen, dtype=dtype)

    def rand(self, *shape, dtype):
        return torch.rand(shape, generator=self.gen, dtype=dtype)

    def fail(self, kernel: str, what: str) -> None:
        raise KernelMismatch(f"{self.component}: kernel {kernel}: {what}")

    def compare(self, kernel: str, reference: str, got: Any, want: Any, probe: str) -> None:
        if want is None or got is None:
            if got is None and want is None:
                return
            self.fail(kernel, f"returned {'None' if got is None else 'a tensor'} where autograd of "
                              f"{reference} gives {'None' if want is None else 'a tensor'} ({probe})")
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            self.fail(kernel, f"shape {shape} where {reference} gives {tuple(want.shape)} ({probe})")
        rtol, atol = TOLERANCES[want.dtype]
        want64 = want.detach().double()
        diff = (got.detach().double() - want64).abs()
        diff = torch.where(torch.isnan(want64) & torch.isnan(got.detach().double()), 0.0, diff)
        diff = torch.nan_to_num(diff, nan=float("inf"))
        bound = atol + rtol * want64.abs()
        tol = f"{atol:g} + {rtol:g} |ref|"
        if bool((diff > bound).any()):
            worst = int(torch.argmax(diff - bound))
            where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape)) if diff.dim() else ()
            self.fail(kernel, f"disagrees with {reference}: max |diff| {float(diff.max()):.3g} at index "
                              f"{where} (kernel {float(got.detach().reshape(-1)[worst]):.6g}, reference "
                              f"{float(want64.reshape(-1)[worst]):.6g}; {probe}); tolerance |diff| <= {tol} "
                              f"({str(want.dtype).replace('torch.', '')})")
        key = (kernel, str(want.dtype).replace("torch.", ""))
        err = float(diff.max()) if diff.numel() else 0.0
        old = self.records.get(key)
        if old is None or err > old.max_abs_error:
            self.records[key] = Checked(f"{self.component}.{kernel}", key[1], err, tol)


def _instances(component: Any, k: Any) -> list:
    fn, _ = _unwrap(component)
    if not isinstance(fn, type):
        return [component]
    if k.example is not None:
        return list(k.example(fn))
    try:
        return [fn()]
    except TypeError as e:
        raise TypeError(f"check_kernels({fn.__qualname__}): cannot build one without arguments ({e}); "
                        f"pass an instance, or declare example= in its kernels") from None


def _grads(out: torch.Tensor, inputs: Sequence[torch.Tensor], grad: torch.Tensor | None = None) -> list:
    return list(torch.autograd.grad(out, inputs, grad if grad is not None else torch.ones_like(out),
                                    allow_unused=True))


def _check_activation(c: _Checker, module: Any, k: Activation) -> None:
    ref = f"{type(module).__qualname__}.forward"
    for dtype in DTYPES:
        for shape in ((5, 7), (2, 3, 33), (1,)):
            probe = f"input {shape}"
            a = (2 * c.randn(*shape, dtype=dtype)).requires_grad_()
            y = module(a)
            g = c.randn(*shape, dtype=dtype)
            (da,) = _grads(y, [a], g)
            buf = (a.detach() * k.scale).clone()
            k.scaled_forward_(buf)
            c.compare("activation.scaled_forward_", f"{ref} (on input * scale {k.scale:g}, in place)", buf, y, probe)
            c.compare("activation.backward", f"autograd of {ref}", k.backward(g, buf), da, probe)
            if k.inplace_forward_ is not None:
                buf = a.detach().clone()
                k.inplace_forward_(buf)
                c.compare("activation.inplace_forward_", f"{ref} (in place)", buf, y, probe)


def _check_posterior(c: _Checker, post: Any, k: Posterior) -> None:
    ref = f"{type(post).__qualname__}.sigma"
    for dtype in DTYPES:
        for shape in ((6, 4), (3, 5, 4), (1, 1)):
            probe = f"raw {shape}"
            raw = (3 * c.randn(*shape, dtype=dtype)).requires_grad_()
            want = post.sigma(raw)
            (d,) = _grads(want, [raw])
            sigma, dsig = k.sigma_and_dsigma(raw.detach().clone())
            c.compare("posterior.sigma_and_dsigma/sigma", ref, sigma, want, probe)
            c.compare("posterior.sigma_and_dsigma/dsigma", f"autograd of {ref}", dsig, d, probe)


def _check_likelihood(c: _Checker, lik: Any, k: Likelihood) -> None:
    ref = f"{type(lik).__qualname__}.log_prob"
    scale = 0.25
    for dtype in DTYPES:
        # (logits, x): a batch of K samples; a block of runs, x as (n, 1, B, D); one pixel
        for ls, xs in (((2, 5, 9), (5, 9)), ((3, 2, 4, 7), (3, 1, 4, 7)), ((1, 1), (1,))):
            probe = f"logits {ls}, x {xs}"
            logits = (3 * c.randn(*ls, dtype=dtype)).requires_grad_()
            x = torch.bernoulli(torch.full(xs, 0.4, dtype=dtype), generator=c.gen)
            want = lik.log_prob(logits, x)
            (d,) = _grads(want, [logits])
            rec, dlog = k.log_prob_and_grad(logits.detach().clone(), x, scale)
            c.compare("likelihood.log_prob_and_grad/log_prob", ref, rec, want, probe)
            c.compare("likelihood.log_prob_and_grad/grad", f"-{scale} * autograd of {ref}", dlog, -scale * d, probe)
        if k.linear_log_prob is None:
            continue
        b, h_dim, s = 3, 4, 5
        for d_dim in (7, 56):
            w = 3 * c.randn(d_dim, h_dim, dtype=dtype)
            h = c.randn(b, h_dim, s, dtype=dtype)
            h[0, :, 1] = 100.0  # logits of hundreds
            h[1, :, 2] = 0.0
            for what, x in (("binary", torch.bernoulli(torch.full((b, d_dim), 0.3, dtype=dtype), generator=c.gen)),
                            ("grey", c.rand(b, d_dim, dtype=dtype))):
                want = lik.log_prob(torch.einsum("dk,bks->bsd", w, h), x.unsqueeze(1))
                got = k.linear_log_prob(x, w)(h.clone())
                c.compare("likelihood.linear_log_prob", f"{ref} of weight @ h",
                          got, want, f"{what} x ({b}, {d_dim}), h ({b}, {h_dim}, {s})")


def _check_kl(c: _Checker, fn: Any, k: KLEstimator) -> None:
    ref = _name(fn)
    for dtype in DTYPES:
        for shape in ((5, 3), (2, 5, 3)):  # (B, L), a block of runs (n, B, L)
            for kk in (1, 2, 7):
                probe = f"mu {shape}, K={kk}"
                mu = c.randn(*shape, dtype=dtype).requires_grad_()
                sigma = (0.2 + c.rand(*shape, dtype=dtype)).requires_grad_()
                z = (mu.detach() + sigma.detach() * c.randn(kk, *shape, dtype=dtype)).requires_grad_()
                want = fn(mu, sigma, z)
                gm, gs, gz = _grads(want, [mu, sigma, z])
                kl, dmu, dsig, dz = k.kl_and_grads(mu.detach(), sigma.detach(), z.detach(), kk)
                c.compare("kl.kl_and_grads/kl", ref, kl, want, probe)
                c.compare("kl.kl_and_grads/dmu", f"autograd of {ref}", dmu, gm if gm is not None else torch.zeros_like(mu), probe)
                c.compare("kl.kl_and_grads/dsigma", f"autograd of {ref}", dsig,
                          gs if gs is not None else torch.zeros_like(sigma), probe)
                zero = torch.zeros_like(z)
                c.compare("kl.kl_and_grads/dz", f"autograd of {ref}", zero if dz is None else dz,
                          zero if gz is None else gz, probe)


def _check_optimizer(c: _Checker, fn: Any, k: Optimizer) -> None:
    ref = f"{_name(fn)}(...).step()"
    if not (isinstance(k.moments, tuple) and len(k.moments) == 2 and all(isinstance(m, str) for m in k.moments)):
        c.fail("optimizer.moments", f"must name two state tensors, got {k.moments!r}")
    hyper = {"lr": 1e-2, "weight_decay": 1e-3}
    for dtype in DTYPES:
        shapes = ((50,), (2, 7))
        ps = [c.randn(*s, dtype=dtype) for s in shapes]
        qs = [p.clone().requires_grad_() for p in ps]
        opt = fn(qs, **hyper)
        first, second = k.moments
        m = [torch.zeros_like(p) for p in ps]
        v = [torch.zeros_like(p) for p in ps]
        step = torch.zeros((), dtype=dtype)
        for t in range(1, 4):
            gs = [c.randn(*s, dtype=dtype) for s in shapes]
            for q, g in zip(qs, gs):
                q.grad = g.clone()
            opt.step()
            step.fill_(t)
            group = opt.param_groups[0]
            k.update(ps, gs, m, v, step, lr=group["lr"], betas=tuple(group.get("betas", (0.9, 0.999))),
                     eps=group.get("eps", 1e-8), weight_decay=group["weight_decay"])
            probe = f"update {t}"
            for i, (p, q) in enumerate(zip(ps, qs)):
                c.compare("optimizer.update/params", ref, p, q.detach(), f"{probe}, parameter {i}")
                st = opt.state[q]
                for name, mine in ((first, m[i]), (second, v[i])):
                    if name not in st:
                        c.fail("optimizer.moments", f"{ref} keeps no state {name!r} (it keeps {sorted(st)})")
                    c.compare(f"optimizer.update/{name}", f"{ref} state {name!r}", mine, st[name], f"{probe}, parameter {i}")


def _check_network(c: _Checker, net: Any, k: Network) -> None:
    from torch import nn

    ref = f"{type(net).__qualname__}.forward"
    for dtype in DTYPES:
        m = copy.deepcopy(net).to(dtype)
        n_in = next(mod for mod in m.modules() if isinstance(mod, nn.Linear)).in_features
        x = c.randn(9, n_in, dtype=dtype).requires_grad_()
        want = m(x)
        g = c.randn(*want.shape, dtype=dtype)
        params = list(m.parameters())
        want_grads = _grads(want, [x, *params], g)
        probe = f"input (9, {n_in})"
        bound = of(m, "network")
        got = bound.layers()
        if not isinstance(got, str):
            linears, acts = got
            if len(acts) != len(linears) - 1:
                c.fail("network.layers", f"{len(linears)} linears need {len(linears) - 1} activations, got {len(acts)}")
            a, outs = x.detach(), []
            for i, lin in enumerate(linears):  # as the fused engine: scale * (b + a W^T), then in place
                if i < len(linears) - 1:
                    y = torch.addmm(lin.bias.detach(), a, lin.weight.detach().t(), beta=acts[i].scale, alpha=acts[i].scale)
                    acts[i].scaled_forward_(y)
                else:
                    y = torch.addmm(lin.bias.detach(), a, lin.weight.detach().t())
                outs.append(y)
                a = y
            c.compare("network.layers/forward", ref, a, want, probe)
            dy, grads = g, {}
            for i in range(len(linears) - 1, -1, -1):
                inp = outs[i - 1] if i else x.detach()
                grads[id(linears[i].weight)] = dy.t() @ inp
                grads[id(linears[i].bias)] = dy.sum(0)
                da = dy @ linears[i].weight.detach()
                dy = acts[i - 1].backward(da, inp) if i else da
            c.compare("network.layers/input_grad", f"autograd of {ref}", dy, want_grads[0], probe)
            for p, w in zip(params, want_grads[1:]):
                if id(p) not in grads:
                    c.fail("network.layers", f"parameter of shape {tuple(p.shape)} is in no Linear layers() returns")
                c.compare("network.layers/param_grad", f"autograd of {ref}", grads[id(p)], w, f"{probe}, shape {tuple(p.shape)}")
        if bound.columns is not None:
            h_t = torch.cat([x.detach(), torch.ones(9, 1, dtype=dtype)], 1).t().contiguous()
            out = torch.empty(want.shape[1], 9, dtype=dtype)
            if bound.columns(h_t, out) is not None:
                c.compare("network.columns", f"{ref} (transposed)", out, want.t(), probe)


def _check_model(c: _Checker, model: Any, k: Model) -> None:
    name = type(model).__qualname__
    for dtype in DTYPES:
        m = copy.deepcopy(model).to(dtype)
        params = list(m.parameters())
        n_in = next(p for p in m.encoder.parameters()).shape[-1]
        latent = getattr(m, "latent", None)
        x = torch.bernoulli(torch.full((4, n_in), 0.4, dtype=dtype), generator=c.gen)
        mu, sigma = m.encode(x)
        h_mu, raw = m.encoder(x).chunk(2, dim=-1)
        want_sigma = m.posterior.sigma(raw)
        c.compare("model/encode.mu", f"{name}.encode", mu, h_mu, "x (4, D)")
        c.compare("model/encode.sigma", f"{name}.encode", sigma, want_sigma, "x (4, D)")
        for a, b in zip(_grads(mu.sum() + sigma.sum(), params), _grads(h_mu.sum() + want_sigma.sum(), params)):
            c.compare("model/encode.grad", f"autograd of {name}.encode", a, b, "x (4, D)")
        z = c.randn(2, 4, latent or mu.shape[-1], dtype=dtype)
        c.compare("model/decode", f"{name}.decode", m.decode(z), m.decoder(z), "z (2, 4, L)")
        ll, want = m.log_likelihood(z, x), m.likelihood.log_prob(m.decoder(z), x)
        c.compare("model/log_likelihood", f"{name}.log_likelihood", ll, want, "z (2, 4, L)")
        for a, b in zip(_grads(ll.sum(), params), _grads(want.sum(), params)):
            c.compare("model/log_likelihood.grad", f"autograd of {name}.log_likelihood", a, b, "z (2, 4, L)")


def _check_objective(c: _Checker, obj: Any, k: Objective) -> None:
    from .vae import VAE

    name = f"{type(obj).__qualname__}.__call__"
    model = _instances(VAE, of(VAE, "model"))[0]
    for dtype in DTYPES:
        m = copy.deepcopy(model).to(dtype)
        params = list(m.parameters())
        x = torch.bernoulli(torch.full((4, m.data_dim), 0.4, dtype=dtype), generator=c.gen)
        for step in (None, 0, 3):
            probe = f"x (4, D), step {step}"
            eps = c.randn(*obj.eps_shape(4, m.latent), dtype=dtype)
            terms = obj(m, x, eps, step=step)
            mu, sigma = m.encode(x)
            z = mu + sigma * eps
            rec = m.log_likelihood(z, x).mean(0)
            kl = obj.kl(mu, sigma, z)
            loss = -(rec - obj.kl_weight(step) * kl).mean()
            for part, want in (("rec", rec), ("kl", kl), ("elbo", rec - kl), ("loss", loss)):
                c.compare(f"objective/{part}", name, getattr(terms, part), want, probe)
            for a, b in zip(_grads(terms.loss, params), _grads(loss, params)):
                c.compare("objective/loss.grad", f"autograd of {name}", a, b, probe)


def _check_prior(c: _Checker, prior: Any, k: Prior) -> None:
    from .. import elbo

    ref = f"{type(prior).__qualname__}.log_prob"
    for dtype in DTYPES:
        for shape in ((5, 3), (2, 7, 3)):
            probe = f"z {shape}"
            mu, sigma = c.randn(*shape, dtype=dtype), 0.2 + c.rand(*shape, dtype=dtype)
            eps = c.randn(*shape, dtype=dtype)
            z = mu + sigma * eps
            if k.standard_normal:
                c.compare("prior.standard_normal", f"{ref} against N(0, I)", prior.log_prob(z),
                          elbo.standard_normal_log_prob(z), probe)
            if k.log_ratio is not None:
                want = prior.log_prob(z) - elbo.gaussian_log_prob(z, mu, sigma)
                got = k.log_ratio(eps, z, torch.log(sigma).sum(-1))
                c.compare("prior.log_ratio", f"{ref}(z) - log q(z|x)", got, want, probe)


_CHECKS: dict[str, Callable] = {"activation": _check_activation, "posterior": _check_posterior,
                                "likelihood": _check_likelihood, "kl": _check_kl, "optimizer": _check_optimizer,
                                "prior": _check_prior, "network": _check_network, "model": _check_model,
                                "objective": _check_objective}


def check_kernels(component: Any) -> list[Checked]:
    """Compare every kernel ``component`` declares (and keeps: see Trust) with its reference.

    ``component``: a class (checked on the instances its kernels' ``example`` builds, else on
    ``cls()``), an instance, a function, or a functools.partial of one, as registries hold them.
    Values and gradients (autograd on the reference) on seeded random float64 and float32 inputs of
    a few shapes each (for a KL estimator K in {1, 2, 7}, with and without a leading dim of runs).
    Tolerance, elementwise: |kernel - reference| <= atol + rtol * |reference|, with (rtol, atol)
    = (1e-7, 1e-7) in float64 and (1e-5, 1e-5) in float32 (TOLERANCES).

    Returns one Checked per kernel output and dtype (its largest |diff| and the tolerance); []
    for a component that declares no kernel. Raises KernelMismatch (an AssertionError) on the
    first disagreement, one line: the component, the kernel, max |diff|, where, the tolerance.
    """
    c = _Checker(component)
    with torch.enable_grad():
        for k in declared(component):
            for inst in _instances(component, k) if k.reference else [component]:
                bound = of(inst, k.kind)
                _CHECKS[k.kind](c, inst, bound)
    return list(c.records.values())
