"""The generic stacked engine: any model and objective made of differentiable torch ops, a user's
included, trained M runs at a time with torch.func (functional_call + vmap + grad).

The runs' parameters live in (M, ...) tensors; each run's nn.Module parameters are views into its
slice, updated by the run's own optimizer component (runs with equal optim settings share one
instance over all their parameters: a foreach update of a list is per tensor), and each run keeps its own generators, drawn in the TrainingRun's order: the data order, the binarizer's draws, then
the objective's eps (``objective.eps_shape``), drawn before the vmapped step and handed to the
objective in place of a generator (vaebench.components.objectives.draw_eps). So a run's numbers
match the torch engine's up to float reassociation (tests/test_engines.py states the tolerance).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .engine import Engine
from .trainer import EVAL_SEED, mean_over_batches

PROBE_RUNS, PROBE_BATCH = 2, 3


class _Loss(nn.Module):
    """The objective as a module call, so functional_call can swap in a run's parameters."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model, self.objective, self.update = model, objective, 0

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        t = self.objective(self.model, x, eps, step=self.update)
        return t.loss, torch.stack([t.rec.mean(), t.kl.mean(), t.elbo.mean()])


def _vmapped(loss: _Loss):
    def f(params, x, eps):
        return functional_call(loss, params, (x, eps))

    return vmap(grad_and_value(f, has_aux=True))


@torch.no_grad()
def evaluate_stack(model: nn.Module, objective, params: dict[str, torch.Tensor], x: torch.Tensor, binarizer,
                   seed: int = EVAL_SEED) -> torch.Tensor:
    """vaebench.training.trainer.evaluate for n runs of ``model``'s structure at once (``params``: name
    -> (n, ...) stacked): the same draws (one generator, shared, as each run's evaluate draws them),
    the objective vmapped over the runs. (n, 3) mean (rec, kl, elbo), equal to n evaluate() calls up
    to float reassociation."""
    fn = vmap(lambda p, xb, eps: functional_call(_Loss(model, objective), p, (xb, eps))[1], in_dims=(0, None, None))
    args = {"model." + name: p for name, p in params.items()}

    def sums(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        eps = torch.randn(objective.eps_shape(len(xb), model.latent), generator=gen, device=x.device)
        return fn(args, xb, eps).double() * len(xb)

    return mean_over_batches(x, binarizer, sums, seed)


def generic_unsupported(model, objective, optimizer) -> str | None:
    """Why the generic engine cannot train these components (None: it can): the objective must say
    which noise a step draws, and one vmapped step must run (no in-place writes to inputs, no
    data-dependent Python control flow, no randomness of its own)."""
    if not callable(getattr(objective, "eps_shape", None)):
        return f"objective {type(objective).__name__} declares no eps_shape (the noise a stacked step draws)"
    latent = getattr(model, "latent", None)
    data_dim = getattr(model, "data_dim", None)
    if latent is None or data_dim is None:
        return f"model {type(model).__name__} has no latent/data_dim"
    params = {"model." + n: torch.stack([p.detach()] * PROBE_RUNS) for n, p in model.named_parameters()}
    x = torch.ones((PROBE_RUNS, PROBE_BATCH, data_dim))
    eps = torch.zeros((PROBE_RUNS, *objective.eps_shape(PROBE_BATCH, latent)))
    try:
        _vmapped(_Loss(model, objective))(params, x, eps)
    except Exception as e:  # noqa: BLE001 - any failure means: not this engine
        return f"a vmapped step fails ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})"
    return None


def _per_element(v, like=None) -> bool:
    """An optimizer state tensor with one value per parameter element (a moment), not a scalar (the step)."""
    return isinstance(v, torch.Tensor) and v.dim() > 0 and (like is None or v.shape[1:] == like.shape[1:])


class GenericStack(Engine):
    name = "generic"
    exact_alone = False  # vmapped elementwise ops over the whole stack: reassociation-level differences
    shared = ("model", "objective")  # one vmapped function: the runs differ in data, noise and optimizer only

    def __init__(self, members: list, device: torch.device):
        super().__init__(members, device)
        first = members[0]
        self.loss = _Loss(first.model, first.objective)
        self.fn = _vmapped(self.loss)
        self.eps_shape = first.objective.eps_shape(first.cfg.train.batch_size, first.cfg.model.latent)
        self._build(members, {n: torch.stack([dict(t.model.named_parameters())[n].detach() for t in members])
                              for n, _ in first.model.named_parameters()})

    def _build(self, members: list, params: dict[str, torch.Tensor]) -> None:
        self.members = members
        self.params = {n: p.contiguous() for n, p in params.items()}
        self.args = {"model." + n: p for n, p in self.params.items()}
        for j, t in enumerate(members):
            for n, p in t.model.named_parameters():
                p.data = self.params[n][j]
        M, B = len(members), members[0].cfg.train.batch_size
        self.x = torch.empty((M, B, members[0].train_x.shape[1]), device=self.device)
        self.eps = torch.empty((M, *self.eps_shape), device=self.device)
        # One optimizer per distinct optim setting, holding its runs' state: over the (M, ...) tensors
        # when every run has the same setting (the usual seeds), else over its runs' parameter views.
        by_optim: dict[str, list[int]] = {}
        for j, t in enumerate(members):
            by_optim.setdefault(t.cfg.optim.model_dump_json(), []).append(j)
        self.whole = len(by_optim) == 1
        self.optimizers = []
        for rows in by_optim.values():
            o = members[rows[0]].optimizer_kwargs
            if self.whole:
                opt = members[0].optimizer_factory(list(self.params.values()), **o)
                per_run = [[t.optimizer.state.get(p) for p in t.model.parameters()] for t in members]
                for stacked, states in zip(self.params.values(), zip(*per_run)):
                    if all(states):
                        opt.state[stacked] = {k: torch.stack([s[k] for s in states]) if _per_element(v) else v
                                              for k, v in states[0].items()}
            else:
                opt = members[rows[0]].optimizer_factory([p for j in rows for p in members[j].model.parameters()],
                                                         **o)
                for j in rows:
                    opt.state.update(members[j].optimizer.state)
            self.optimizers.append((members[rows[0]], opt))
        for t in members:
            t.optimizer.state.clear()

    def _state_of(self, j: int) -> dict:
        """Member j's optimizer state keyed by its parameters (slices of the stack's, or the same tensors)."""
        t, out = self.members[j], {}
        for p, stacked in zip(t.model.parameters(), self.params.values()):
            if self.whole:
                st = self.optimizers[0][1].state.get(stacked)
                if st:
                    out[p] = {k: v[j].clone() if _per_element(v, stacked) else v.clone() for k, v in st.items()}
            else:
                for _, opt in self.optimizers:
                    if p in opt.state:
                        out[p] = opt.state[p]
        return out

    def save(self, j: int, stack: list[str] | None = None) -> None:
        """Member j's checkpoint, with its optimizer state from the stack's optimizer."""
        t = self.members[j]
        t.optimizer.state.update(self._state_of(j))
        t.save_checkpoint(stack)
        t.optimizer.state.clear()

    def drop(self, keep: list[int]) -> None:
        for j in keep:  # the optimizer state goes back to the runs that stay, then into the new stack
            self.members[j].optimizer.state.update(self._state_of(j))
        if keep:
            idx = torch.tensor(keep, device=self.device)
            self._build([self.members[j] for j in keep], {n: p[idx] for n, p in self.params.items()})
        else:
            self.members = []

    def step(self, idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        for j, tr in enumerate(self.members):
            self.x[j] = tr.binarizer.sample(tr.train_x[idx[j]], tr.noise_gen)
            torch.randn(self.eps_shape, generator=tr.noise_gen, out=self.eps[j])
        self.loss.update = t - 1
        grads, (_, terms) = self.fn(self.args, self.x, self.eps)
        out.copy_(terms)
        if self.whole:
            for n, p in self.params.items():
                p.grad = grads["model." + n]
        else:
            for j, tr in enumerate(self.members):
                for n, p in tr.model.named_parameters():
                    p.grad = grads["model." + n][j]
        for tr, opt in self.optimizers:
            opt.param_groups[0]["lr"] = tr.cfg.optim.lr * tr.schedule(t - 1, tr.cfg.train.steps)
            opt.step()
