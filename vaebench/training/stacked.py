"""The fast engine: M runs of one shape trained as one program (M = 1 is the fast single run).

Parameters of the M runs live in one (M, P) tensor; each run's nn.Module parameters are views
into its row, so evaluation, checkpoints and run folders go through the Trainer's own code.
The step is written by hand: forward and backward with batched matmuls (baddbmm/bmm) into
preallocated buffers, then torch.optim.Adam's fused kernel over the rows of the (M, P) tensor
(its math: bias correction, eps, L2 weight decay; hyperparameters per run). Each run keeps its
own generators and draws from them exactly as the Trainer does (order_gen: permutations; noise_gen: binarizer
draws, then eps), so a run's numbers equal the torch engine's up to float reassociation:
tests/test_speed.py checks per-step metrics within rtol 1e-4 + atol 1e-4 nats.

What the engine handles is the tables below; a config outside them trains on the torch Trainer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import elbo
from ..components.networks import tanh_from_sigmoid_
from ..config import RunConfig, flatten

LOG_2PI = math.log(2.0 * math.pi)

# activation -> (scale of the pre-activation the forward takes, forward in place on the scaled
# pre-activation, (grad, output) -> grad of the input: aten's one-pass kernels)
ACTIVATIONS: dict[str, tuple[float, Callable, Callable]] = {
    "tanh": (2.0, tanh_from_sigmoid_, torch.ops.aten.tanh_backward),
    "relu": (1.0, torch.relu_, lambda g, y: torch.ops.aten.threshold_backward(g, y, 0)),
    "sigmoid": (1.0, torch.sigmoid_, torch.ops.aten.sigmoid_backward),
}


def _softplus_sigma(raw):
    return F.softplus(raw) + 1e-4, torch.sigmoid(raw)  # the floor of components.posteriors.SigmaOutput


def _exp_sigma(raw):
    sigma = torch.exp(raw)
    return sigma, sigma


# posterior -> raw -> (sigma, d sigma / d raw)
POSTERIORS: dict[str, Callable] = {"sigma": _softplus_sigma, "log_sigma": _exp_sigma}


BIG = 2**16  # elements from which torch runs an elementwise op on all threads


def _bernoulli(logits: torch.Tensor, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_d log p(x_d | l_d) per row, and its gradient times -scale: (sigmoid(l) - x) * scale.

    Small tensors: log p = log sigmoid(l) + (x - 1) l, and sigmoid(l) = exp(log sigmoid(l)), one
    transcendental pass. Big ones (a stack): torch's logsigmoid is ~3x slower than its exp, so
    sum_d [x l - max(l, 0) - log(1 + exp(-|l|))] with one log per group of pixels
    (elbo.sum_log1p_exp_neg_), and a sigmoid for the gradient."""
    if logits.numel() < BIG:
        log_sig = F.logsigmoid(logits)
        rec = torch.addcmul(log_sig, logits, x - 1.0).sum(-1)
        return rec, log_sig.exp_().sub_(x).mul_(scale)
    log_norm = elbo.sum_log1p_exp_neg_(torch.abs(logits))
    rec = torch.mul(logits, x).sub_(torch.relu(logits)).sum(-1).sub_(log_norm)
    return rec, torch.sigmoid(logits).sub_(x).mul_(scale)


def _kl_analytic(mu, sigma, z, eps, k):
    """Returns kl (M,B) and d kl / d (mu, sigma, z) holding the other two fixed (z: None = 0)."""
    return elbo.kl_analytic(mu, sigma), mu, sigma - 1.0 / sigma, None


def _kl_monte_carlo(mu, sigma, z, eps, k):
    m, s = mu.unsqueeze(1), sigma.unsqueeze(1)  # z is (M, K, B, L)
    kl = (elbo.gaussian_log_prob(z, m, s) - elbo.standard_normal_log_prob(z)).mean(1)
    u = (z - m) / s
    u_s = u / s
    return kl, u_s.sum(1) / k, ((u * u - 1.0) / s).sum(1) / k, (z - u_s) / k


KL_ESTIMATORS: dict[str, Callable] = {"analytic": _kl_analytic, "monte_carlo": _kl_monte_carlo}

# Config values the engine handles; any other value of these keys trains on the torch Trainer.
HANDLED = {
    "model.encoder.name": {"mlp"}, "model.decoder.name": {"mlp"},
    "model.encoder.activation": set(ACTIVATIONS), "model.decoder.activation": set(ACTIVATIONS),
    "model.posterior": set(POSTERIORS), "model.likelihood": {"bernoulli"},
    "objective.name": {"elbo"}, "objective.kl": set(KL_ESTIMATORS), "optim.name": {"adam"},
    "data.binarize": {"threshold", "dynamic"},
}
# Keys whose value the engine reads (or that do not change the step); any other key must keep its
# default (a later addition such as a KL warm-up or a new objective's option trains on torch).
KNOWN = set(HANDLED) | {
    "name", "seed", "data.dataset", "data.root", "data.per_class", "data.seed", "data.val_size",
    "model.latent", "model.encoder.hidden", "model.decoder.hidden", "objective.k", "objective.beta",
    "optim.lr", "optim.betas", "optim.eps", "optim.weight_decay",
    "train.steps", "train.batch_size", "train.eval_every", "train.flush_every", "train.checkpoint_every",
    "train.threads", "train.engine", "train.stack",
}
# Keys that may differ between the runs of one stack; every other key is shared by the stack.
PER_RUN = ("name", "seed", "optim.lr", "optim.betas", "optim.eps", "optim.weight_decay",
           "objective.beta", "objective.kl", "model.posterior")


def unsupported(cfg: RunConfig) -> str | None:
    """Why the fast engine cannot train ``cfg`` (None: it can)."""
    flat = flatten(cfg.to_dict())
    default = flatten(RunConfig().to_dict())
    for key, allowed in HANDLED.items():
        if flat[key] not in allowed:
            return f"{key}={flat[key]!r}"
    for key, value in flat.items():
        if key not in KNOWN and value != default.get(key):
            return f"{key}={value!r}"
    return None


def use_fast(cfg: RunConfig) -> bool:
    """train.engine: auto -> fast when supported; fast -> fast or a ConfigError; torch -> torch."""
    from ..errors import ConfigError

    if cfg.train.engine == "torch":
        return False
    why = unsupported(cfg)
    if why and cfg.train.engine == "fast":
        raise ConfigError(f"train.engine=fast does not support {why}; use train.engine=auto or torch")
    return why is None


def stack_key(cfg: RunConfig) -> str:
    """Runs with the same key can share a stack: everything but the PER_RUN keys is equal."""
    flat = flatten(cfg.to_dict())
    return json.dumps({k: v for k, v in sorted(flat.items()) if k not in PER_RUN}, default=str)


def stack_size(cfg: RunConfig, device: torch.device) -> int:
    s = cfg.train.stack
    if s == "off":
        return 1
    if s == "auto":
        return 256 if device.type == "cuda" else 8
    return int(s)


def _linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


class Stack:
    """The step of M runs (members: Trainers whose step, perm and pos are equal)."""

    def __init__(self, members: list, device: torch.device):
        self.device = device
        cfg = members[0].cfg
        self.k, self.b = cfg.objective.k, cfg.train.batch_size
        self.enc_act = cfg.model.encoder.activation
        self.dec_act = cfg.model.decoder.activation
        self.latent = cfg.model.latent
        self.dynamic = not members[0].binarizer.fixed
        params = [list(t.model.parameters()) for t in members]
        self.shapes = [p.shape for p in params[0]]
        self.sizes = [p.numel() for p in params[0]]
        flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in ps]) for ps in params])
        m, v = torch.zeros_like(flat), torch.zeros_like(flat)
        for j, t in enumerate(members):
            st = [t.optimizer.state.get(p, {}) for p in params[j]]
            if st and "exp_avg" in st[0]:
                m[j] = torch.cat([s["exp_avg"].reshape(-1) for s in st])
                v[j] = torch.cat([s["exp_avg_sq"].reshape(-1) for s in st])
        self._build(members, flat, m, v)

    # -- layout ------------------------------------------------------------
    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, off = [], 0
        for shape, n in zip(self.shapes, self.sizes):
            out.append(flat[:, off:off + n].view(flat.shape[0], *shape))
            off += n
        return out

    def _build(self, members: list, flat: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        """(Re)allocate everything for these members; their modules become views of ``flat``."""
        self.members, self.flat, self.m, self.v = members, flat.contiguous(), m.contiguous(), v.contiguous()
        M, dev, f32 = len(members), self.device, torch.float32
        self.grad = torch.zeros_like(self.flat)
        for j, t in enumerate(members):
            for p, view in zip(t.model.parameters(), self._views(self.flat[j:j + 1])):
                p.data = view[0]
            t.optimizer.state.clear()  # the stack holds the moments; sync_optimizer() fills them back
        pv, gv = self._views(self.flat), self._views(self.grad)
        n_enc = 2 * len(_linears(members[0].model.encoder))
        # per layer: W (M, out, in), its transpose and its bias as (M, 1, out) views, their gradients
        layers = [(pv[i], pv[i].transpose(1, 2), pv[i + 1].unsqueeze(1), gv[i], gv[i + 1])
                  for i in range(0, len(pv), 2)]
        self.enc, self.dec = layers[:n_enc // 2], layers[n_enc // 2:]
        # the encoder's last layer as two heads, so mu and the raw sigma come out contiguous
        _, Wt, bias, _, _ = self.enc[-1]
        L = self.latent
        self.heads = [(Wt[..., :L], bias[..., :L]), (Wt[..., L:], bias[..., L:])]

        def col(values):  # one value per run, as an (M, 1) tensor
            return torch.tensor(values, dtype=torch.float64, device=dev).view(M, 1)

        cfgs = [t.cfg for t in members]
        groups: dict[tuple, list[int]] = {}
        for j, c in enumerate(cfgs):
            groups.setdefault((c.optim.lr, *c.optim.betas, c.optim.eps, c.optim.weight_decay), []).append(j)
        self.adam_groups = [(h, [[t[j] for j in rows] for t in (self.flat, self.grad, self.m, self.v)])
                            for h, rows in groups.items()]
        self.adam_step = torch.zeros((), device=dev)
        self._masks: dict = {}
        betas = {c.objective.beta for c in cfgs}
        self.beta_g = (next(iter(betas)) / self.b if len(betas) == 1
                       else (col([c.objective.beta for c in cfgs]) / self.b).to(f32).view(M, 1, 1))
        self.posts = [c.model.posterior for c in cfgs]
        self.kls = [c.objective.kl for c in cfgs]
        B, K, L, D = self.b, self.k, self.latent, members[0].train_x.shape[1]
        self.x = torch.empty((M, B, D), device=dev)
        self.noise = torch.empty((M, K, B, L), device=dev)
        self.dh = torch.empty((M, B, 2 * L), device=dev)
        self.enc_out = [torch.empty((M, B, W.shape[1]), device=dev) for W, *_ in self.enc[:-1]]
        self.mu, self.raw = torch.empty((M, B, L), device=dev), torch.empty((M, B, L), device=dev)
        self.dec_out = [torch.empty((M, K * B, W.shape[1]), device=dev) for W, *_ in self.dec]

    def drop(self, keep: list[int]) -> None:
        """Go on with the members at ``keep`` only (a diverged run leaves the stack)."""
        idx = torch.tensor(keep, device=self.device)
        self._build([self.members[j] for j in keep], self.flat[idx], self.m[idx], self.v[idx])

    def sync_optimizer(self, j: int, step: int) -> None:
        """Fill member j's torch.optim.Adam state from the stack (copies), for its checkpoint."""
        t = self.members[j]
        for p, ea, eas in zip(t.model.parameters(), self._views(self.m[j:j + 1]), self._views(self.v[j:j + 1])):
            t.optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": ea[0].clone(),
                                    "exp_avg_sq": eas[0].clone()}

    # -- step --------------------------------------------------------------
    def _mixed(self, names: list[str], table: dict, *args) -> tuple:
        """table[name](*args) per run; runs with different choices are combined with torch.where."""
        uniq = sorted(set(names))
        outs = [table[n](*args) for n in uniq]
        if len(uniq) == 1:
            return outs[0]
        res = list(outs[0])
        for n, o in zip(uniq[1:], outs[1:]):
            key = (tuple(names), n)  # cached: a captured step (training.graphs) cannot copy from the host
            if key not in self._masks:
                self._masks[key] = torch.tensor([x == n for x in names], device=self.device)
            mask = self._masks[key]
            for i, (a, b) in enumerate(zip(res, o)):
                if a is None and b is None:
                    continue
                a = torch.zeros_like(b) if a is None else a
                b = torch.zeros_like(a) if b is None else b
                res[i] = torch.where(mask.view(-1, *[1] * (a.dim() - 1)), b, a)
        return tuple(res)

    @staticmethod
    def _forward(layers, a, outs, act, hidden_only=False):
        """Through ``layers``, an activation after each but the last (after every one: hidden_only)."""
        scale, fwd, _ = ACTIVATIONS[act]
        for i, ((_, Wt, bias, _, _), out) in enumerate(zip(layers, outs)):
            if hidden_only or i < len(layers) - 1:
                torch.baddbmm(bias, a, Wt, beta=scale, alpha=scale, out=out)
                fwd(out)
            else:
                torch.baddbmm(bias, a, Wt, out=out)
            a = out
        return a

    @staticmethod
    def _backward(layers, inp, outs, dy, act, need_input_grad):
        backward = ACTIVATIONS[act][2]
        for i in range(len(layers) - 1, -1, -1):
            W, _, _, gW, gb = layers[i]
            a = outs[i - 1] if i else inp
            torch.bmm(dy.transpose(1, 2), a, out=gW)
            torch.sum(dy, 1, out=gb)
            if i or need_input_grad:
                da = torch.bmm(dy, W)
                dy = backward(da, a) if i else da
        return dy

    def step(self, x_idx: torch.Tensor, t: int | None, out: torch.Tensor) -> None:
        """One update of every run: x_idx (M, B) training indices; t the Adam step (from 1; None: read
        from self.adam_step);
        writes the mean (rec, kl, elbo) of each run into ``out`` (M, 3)."""
        M, B, K, L = len(self.members), self.b, self.k, self.latent
        train_x = self.members[0].train_x
        if self.dynamic:
            probs = train_x[x_idx]
            for j, tr in enumerate(self.members):
                torch.bernoulli(probs[j], generator=tr.noise_gen, out=self.x[j])
        else:
            torch.index_select(train_x, 0, x_idx.reshape(-1), out=self.x.view(M * B, -1))
        for j, tr in enumerate(self.members):
            torch.randn((K, B, L), generator=tr.noise_gen, out=self.noise[j])
        x, eps = self.x, self.noise

        hid = self._forward(self.enc[:-1], x, self.enc_out, self.enc_act, hidden_only=True)
        (Wt_mu, b_mu), (Wt_raw, b_raw) = self.heads
        mu = torch.baddbmm(b_mu, hid, Wt_mu, out=self.mu)
        raw = torch.baddbmm(b_raw, hid, Wt_raw, out=self.raw)
        sigma, dsig_draw = self._mixed(self.posts, POSTERIORS, raw)
        z = mu.unsqueeze(1) + sigma.unsqueeze(1) * eps  # (M, K, B, L)
        logits = self._forward(self.dec, z.view(M, K * B, L), self.dec_out, self.dec_act).view(M, K, B, -1)
        xk = x.unsqueeze(1)
        rec, dlog = _bernoulli(logits, xk, 1.0 / (B * K))
        rec = rec[:, 0] if K == 1 else rec.mean(1)
        kl, dmu_kl, dsig_kl, dz_kl = self._mixed(self.kls, KL_ESTIMATORS, mu, sigma, z, eps, K)
        torch.mean(torch.stack([rec, kl], 1), 2, out=out[:, :2])
        torch.sub(out[:, 0], out[:, 1], out=out[:, 2])

        # backward of loss = mean_b(-rec + beta * kl), per run; bg: beta / B, one number or one per run
        bg = self.beta_g
        dz = self._backward(self.dec, z.view(M, K * B, L), self.dec_out, dlog.view(M, K * B, -1), self.dec_act,
                            True).view(M, K, B, L)
        if dz_kl is not None:
            dz = dz.add_(dz_kl, alpha=bg) if isinstance(bg, float) else dz.add_(dz_kl.mul_(bg.unsqueeze(1)))
        dmu, dsig = (dz[:, 0], dz[:, 0] * eps[:, 0]) if K == 1 else (dz.sum(1), (dz * eps).sum(1))
        if isinstance(bg, float):
            torch.add(dmu, dmu_kl, alpha=bg, out=self.dh[..., :L])
            dsig = dsig.add_(dsig_kl, alpha=bg)
        else:
            self.dh[..., :L] = dmu.add(dmu_kl.mul(bg))
            dsig = dsig.add_(dsig_kl.mul(bg))
        torch.mul(dsig, dsig_draw, out=self.dh[..., L:])
        self._backward(self.enc, x, self.enc_out, self.dh, self.enc_act, False)
        self.adam(t)

    def adam(self, t: int | None) -> None:
        """torch.optim.Adam(fused=True)'s kernel, one call per distinct hyperparameter set over the
        rows of the (M, P) stack: one pass over the parameters, moments and gradients. t None: the
        step count is already in self.adam_step (a captured step, training.graphs)."""
        if t is not None:
            self.adam_step.fill_(t)
        for (lr, b1, b2, eps, wd), rows in self.adam_groups:
            torch._fused_adam_(*rows, [], [self.adam_step] * len(rows[0]), amsgrad=False, lr=lr, beta1=b1,
                               beta2=b2, weight_decay=wd, eps=eps, maximize=False)


def train_stack(members: list, progress: Any = None) -> list:
    """Train members (restored Trainers, all at the same step) to their last step; one RunResult each."""
    from tqdm.auto import tqdm

    from .graphs import Stepper, record
    from .trainer import RunResult

    first = members[0]
    tc, dev = first.cfg.train, first.device
    stack = Stack(members, dev)
    run_step = Stepper(stack)  # a CUDA graph replay on CUDA, stack.step elsewhere
    step = first.step
    n, b = len(first.perm), tc.batch_size
    perms = torch.stack([t.perm for t in members])
    pos = first.pos
    flushed = step
    buf = torch.zeros((tc.flush_every, len(members), 3), device=dev, dtype=torch.float32)
    results: dict[int, RunResult] = {}
    ids = list(range(len(members)))  # member j of the stack is members[ids[j]]

    def sync():
        for j, t in enumerate(stack.members):
            t.step, t.pos, t.flushed = step, pos, flushed
            t.perm = perms[j].clone()

    refresh = max(1, min(100, tc.eval_every))
    opts = progress if isinstance(progress, dict) else {"disable": None if progress is None else not progress}
    desc = first.dir.name if len(members) == 1 else f"stack of {len(members)}"
    bar = tqdm(total=tc.steps, initial=step, unit="upd", dynamic_ncols=True, leave=False, desc=desc, **opts)
    try:
        if step == 0:
            sync()
            for t in stack.members:
                t.eval_val()
        while step < tc.steps and stack.members:
            if pos + b > n:
                perms = torch.stack([torch.randperm(n, generator=t.order_gen) for t in stack.members])
                pos = 0
            idx = perms[:, pos:pos + b].to(dev, non_blocking=True)
            pos += b
            run_step(idx, step + 1, buf[step - flushed])
            step += 1
            if step % tc.eval_every == 0:
                sync()
                for t in stack.members:
                    t.eval_val()
            if step % refresh == 0:
                bar.update(step - bar.n)
            if step % tc.flush_every == 0 or step % tc.checkpoint_every == 0 or step == tc.steps:
                sync()
                keep = []
                for j, t in enumerate(stack.members):
                    t.train_buf[: step - flushed] = buf[: step - flushed, j]
                    bad = t.flush()
                    if bad is None:
                        keep.append(j)
                        continue
                    reason = f"loss became NaN/inf at step {bad}"
                    t.step = bad - 1
                    t.write_status("failed", reason)
                    results[ids[j]] = RunResult(t.dir, "failed", t.step, reason)
                flushed = step
                if len(keep) < len(stack.members):
                    ids = [ids[j] for j in keep]
                    perms = perms[keep]
                    if keep:
                        stack.drop(keep)
                    else:
                        stack.members = []
                        break
                    buf = torch.zeros((tc.flush_every, len(keep), 3), device=dev, dtype=torch.float32)
                    sync()
                if step % tc.checkpoint_every == 0 or step == tc.steps:
                    for j, t in enumerate(stack.members):
                        stack.sync_optimizer(j, step)
                        t.save_checkpoint()
                        t.optimizer.state.clear()
    finally:
        bar.close()
        for t in members:
            record(t.dir, run_step.info())
    for j, t in enumerate(stack.members):
        results[ids[j]] = RunResult(t.dir, "done", step, final=t.finish())
    return [results[i] for i in range(len(members))]
