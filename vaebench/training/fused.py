"""The fused engine: M runs of one shape trained as one program (M = 1 is a fast single run).

Parameters of the M runs live in one (M, P) tensor; each run's nn.Module parameters are views into
its row, so evaluation, checkpoints and run folders go through the Trainer's own code. The step is
written by hand from the kernels the components declare (the contract: vaebench.components.kernels):
the MLP's linear layers as batched matmuls (baddbmm/bmm) into preallocated buffers, each
activation's, posterior's, likelihood's and KL estimator's kernel, and the optimizer's fused
update. Nothing here names a component or holds one of its constants.

A run's numbers do not depend on the stack it is in: the matmuls are per run (one matrix of the
batch each), and on CPU an elementwise kernel computes each of a run's elements in the SIMD lane
it has alone. A kernel over the whole stack does that only when each run's block of every buffer
the kernels write is a whole number of torch's vectorized loop steps (ALIGN floats) and one thread
runs it (two threads split a tensor where they like); otherwise the elementwise kernels run per
run, which is slower by M launches (a run's elements in other lanes, or in the scalar tail, move
the last bit: measured, tests/test_speed.py). The optimizer's kernel runs per run on CPU (a run's
parameter row is rarely a whole number of steps). On CUDA a kernel computes each element the same way whatever the
tensor's size, so there the elementwise kernels run over blocks of up to the whole stack (runs next
to each other with the same kernels and hyperparameters), one launch instead of M. So on CPU a
run trained alone, in any stack, or resumed in another stack has bit for bit the same numbers on
one machine with the same thread count; against the torch engine it agrees up to float
reassociation (tests/test_speed.py, tests/test_engines.py). On CUDA cuBLAS and the reductions
choose their algorithm by the stack's shape, so there a run in a stack agrees with the run alone
up to float rounding only (benchmarks/gpu_check.py; hence exact_alone is False on CUDA).

On CUDA the loop replays the step from a CUDA graph (vaebench.training.graphs): the step has fixed
shapes, preallocated buffers and no host sync; the update count lives in a device tensor
(``count``), and the host values a step bakes in (learning rates, KL weights) are its graph_key.
There the reparameterization noise of every run comes from one batched counter-based draw
(vaebench.training.noise) instead of M torch generators; env.json records which (``noise``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..components import kernels
from . import noise
from .engine import Engine, EngineRefused
from .generic import evaluate_stack


def _layers(net: nn.Module) -> tuple[list[nn.Linear], list] | str:
    """The network as (linears, bound activation kernel between each two), from its network kernel,
    or why the engine cannot run it."""
    k = kernels.of(net, "network")
    if k is None:
        return f"{type(net).__name__} declares no fused kernel (network)"
    return k.layers()


def fused_unsupported(model, objective, optimizer) -> str | None:
    """Why the fused engine cannot train these components (None: it can)."""
    for part in ("encoder", "decoder"):
        got = _layers(getattr(model, part, None))
        if isinstance(got, str):
            return f"{part}: {got}"
    checks = [(model, "model"), (getattr(model, "posterior", None), "posterior"),
              (getattr(model, "likelihood", None), "likelihood"), (objective, "objective"),
              (getattr(objective, "kl", None), "kl"), (optimizer, "optimizer")]
    for component, kind in checks:
        if component is None or kernels.of(component, kind) is None:
            return f"{kernels.name_of(component)} declares no fused kernel ({kind})"
    for component, kind in ((model, "model"), (objective, "objective")):
        why = kernels.departs(component, kind)
        if why:
            return f"{why} is not the composition the fused kernels compute"
    prior = kernels.of(getattr(model, "prior", None), "prior")
    if prior is None or not prior.standard_normal:
        return (f"prior {kernels.name_of(getattr(model, 'prior', None))} is not declared N(0, I) "
                f"(the KL kernels' prior)")
    moments = kernels.of(optimizer, "optimizer").moments
    if not isinstance(moments, tuple) or len(moments) != 2:
        return "the optimizer's fused kernel does not declare its two moments"
    return None


def _same(component) -> tuple:
    """What decides a component's kernel's numbers: its class and its attributes."""
    return type(component), repr(sorted(vars(component).items())) if hasattr(component, "__dict__") else None


def _blocks(keys: list, limit: int) -> list[tuple[int, int]]:
    """[s, e) ranges of neighbouring equal keys, at most ``limit`` long."""
    out, s = [], 0
    for j in range(1, len(keys) + 1):
        if j == len(keys) or keys[j] != keys[s] or j - s == limit:
            out.append((s, j))
            s = j
    return out


NOISE_BYTES = 64 * 2**20


def counter_noise(device: torch.device) -> bool:
    """Draw the stack's noise from vaebench.training.noise (on CUDA), else from each run's generator."""
    return device.type == "cuda"


ALIGN = 32  # floats: a step of torch's vectorized CPU loops (two vectors of 16 on AVX-512)


def block_size(device: torch.device, runs: int, per_run_sizes: tuple[int, ...] = ()) -> int:
    """Runs one elementwise launch covers: any on CUDA; on CPU all of them where every buffer's
    block per run (``per_run_sizes``, in floats) is a multiple of ALIGN and torch runs one thread,
    else one (see the module docstring)."""
    if device.type != "cpu":
        return runs
    aligned = per_run_sizes and all(n % ALIGN == 0 for n in per_run_sizes)
    return runs if aligned and torch.get_num_threads() == 1 else 1


class FusedStack(Engine):
    name = "fused"

    def check(self, members: list) -> None:
        super().check(members)
        for t in members:
            why = fused_unsupported(t.model, t.objective, t.optimizer_factory)
            if why:
                raise EngineRefused(f"fused engine: {t.dir.name}: {why}")

    def __init__(self, members: list, device: torch.device):
        super().__init__(members, device)
        # on CUDA the batched matmuls and reductions pick their algorithm by the stack's shape, so a
        # run's last bits depend on its stack there (benchmarks/gpu_check.py): checkpoints in two phases
        self.exact_alone = device.type == "cpu"
        cfg = members[0].cfg
        self.k, self.b, self.latent = cfg.objective.k, cfg.train.batch_size, cfg.model.latent
        model = members[0].model
        self.enc_acts = _layers(model.encoder)[1]
        self.dec_acts = _layers(model.decoder)[1]
        self.dynamic = not members[0].binarizer.fixed
        params = [list(t.model.parameters()) for t in members]
        self.shapes = [p.shape for p in params[0]]
        self.sizes = [p.numel() for p in params[0]]
        flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in ps]) for ps in params])
        m, v = torch.zeros_like(flat), torch.zeros_like(flat)
        for j, t in enumerate(members):  # the moments, under the names the optimizer's kernel declares
            first, second = kernels.of(t.optimizer_factory, "optimizer").moments
            st = [t.optimizer.state.get(p, {}) for p in params[j]]
            if st and first in st[0]:
                m[j] = torch.cat([s[first].reshape(-1) for s in st])
                v[j] = torch.cat([s[second].reshape(-1) for s in st])
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
        M, dev = len(members), self.device
        self.grad = torch.zeros_like(self.flat)
        for j, t in enumerate(members):
            for p, view in zip(t.model.parameters(), self._views(self.flat[j:j + 1])):
                p.data = view[0]
            t.optimizer.state.clear()  # the stack holds the moments; save() fills them back
        pv, gv = self._views(self.flat), self._views(self.grad)
        n_enc = len(self.enc_acts) + 1
        # per layer: W (M, out, in), its transpose and its bias as (M, 1, out) views, their gradients
        layers = [(pv[i], pv[i].transpose(1, 2), pv[i + 1].unsqueeze(1), gv[i], gv[i + 1])
                  for i in range(0, len(pv), 2)]
        self.enc, self.dec = layers[:n_enc], layers[n_enc:]
        # the encoder's last layer as two heads, so mu and the raw sigma come out contiguous
        _, Wt, bias, _, _ = self.enc[-1]
        L = self.latent
        self.heads = [(Wt[..., :L], bias[..., :L]), (Wt[..., L:], bias[..., L:])]
        # each run's kernels and hyperparameters
        self.sigma_k = [kernels.of(t.model.posterior, "posterior").sigma_and_dsigma for t in members]
        self.lik_k = [kernels.of(t.model.likelihood, "likelihood").log_prob_and_grad for t in members]
        self.kl_k = [kernels.of(t.objective.kl, "kl").kl_and_grads for t in members]
        self.optim_k = [kernels.of(t.optimizer_factory, "optimizer") for t in members]
        # members whose host values (KL weight, optimizer settings and schedule) are equal at every step
        sig = [(_same(t.objective), self.optim_k[j], repr(t.cfg.optim), t.cfg.train.steps) for j, t in enumerate(members)]
        firsts = {k: j for j, k in reversed(list(enumerate(sig)))}
        self.host_of = [firsts[k] for k in sig]  # member j's host values are member host_of[j]'s
        self.host_firsts = sorted(set(self.host_of))
        self._host_t, self._host = None, None
        # the noise: one counter-based draw for the stack on CUDA, each run's torch generator on the CPU
        B, K, D = self.b, self.k, members[0].train_x.shape[1]
        self.noise_keys = None
        if counter_noise(dev):  # drawn NOISE_BYTES ahead (up to 64 updates), a copy per update
            self.noise_keys = torch.tensor([noise.run_key(t.cfg.seed) for t in members], dtype=torch.int64, device=dev)
            self.noise_steps = max(1, min(64, NOISE_BYTES // (M * K * B * L * 4)))
            self.noise_ahead = torch.empty((M, self.noise_steps, K * B * L), device=dev)
            self.noise_slot = torch.zeros(1, dtype=torch.int64, device=dev)
            self.noise_from = None  # the first update noise_ahead holds
        self.x = torch.empty((M, B, D), device=dev)
        self.noise = torch.empty((M, K, B, L), device=dev)
        self.z = torch.empty((M, K, B, L), device=dev)
        self.dsig_draw = torch.empty((M, B, L), device=dev)
        self.dh = torch.empty((M, B, 2 * L), device=dev)
        self.dlog = torch.empty((M, K * B, D), device=dev)
        self.dz = torch.empty((M, K * B, L), device=dev)
        self.enc_out = [torch.empty((M, B, W.shape[1]), device=dev) for W, *_ in self.enc[:-1]]
        self.mu, self.raw = torch.empty((M, B, L), device=dev), torch.empty((M, B, L), device=dev)
        self.dec_out = [torch.empty((M, K * B, W.shape[1]), device=dev) for W, *_ in self.dec]
        self.opt_step = torch.zeros((), device=dev)
        written = [self.noise, self.z, self.dsig_draw, self.dh, self.dlog, self.dz, self.mu, self.raw,
                   *self.enc_out, *self.dec_out]
        self.block = block_size(dev, M, tuple(b[0].numel() for b in written))
        self.blocks = _blocks([(_same(t.model.posterior), _same(t.model.likelihood), _same(t.objective))
                               for t in members], self.block)
        self.opt_blocks = _blocks(self.host_of, 1 if dev.type == "cpu" else self.block)

    def validate(self) -> None:
        """On the CPU each run's own evaluate (its numbers as alone, bit for bit); on CUDA, where a
        run's numbers depend on its stack by float rounding anyway, each block of runs in one
        vmapped evaluation (generic.evaluate_stack): one launch sequence instead of M."""
        if self.exact_alone or len(self.members) == 1:
            return super().validate()
        for s, e in self.blocks:
            first = self.members[s]
            names = [n for n, _ in first.model.named_parameters()]
            terms = evaluate_stack(first.model, first.objective, dict(zip(names, self._views(self.flat[s:e]))),
                                   first.val_x, first.binarizer)
            for j in range(s, e):
                self.members[j].val_rows.append((self.members[j].step, terms[j - s]))

    def drop(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.device)
        if keep:
            self._build([self.members[j] for j in keep], self.flat[idx], self.m[idx], self.v[idx])
        else:
            self.members = []

    def save(self, j: int, stack: list[str] | None = None) -> None:
        """Member j's torch.optim state from the stack (copies), its checkpoint, then no state again."""
        t = self.members[j]
        first, second = self.optim_k[j].moments
        for p, ea, eas in zip(t.model.parameters(), self._views(self.m[j:j + 1]), self._views(self.v[j:j + 1])):
            t.optimizer.state[p] = {"step": torch.tensor(float(t.step)), first: ea[0].clone(), second: eas[0].clone()}
        t.save_checkpoint(stack)
        t.optimizer.state.clear()

    # -- step --------------------------------------------------------------
    def _forward(self, layers, a, outs, acts, hidden_only=False):
        """Through ``layers``, an activation after each but the last (after every one: hidden_only)."""
        for i, ((_, Wt, bias, _, _), out) in enumerate(zip(layers, outs)):
            if hidden_only or i < len(layers) - 1:
                act = acts[i]
                torch.baddbmm(bias, a, Wt, beta=act.scale, alpha=act.scale, out=out)
                for s in range(0, out.shape[0], self.block):  # per run unless aligned: see the module docstring
                    act.scaled_forward_(out[s:s + self.block])
            else:
                torch.baddbmm(bias, a, Wt, out=out)
            a = out
        return a

    def _backward(self, layers, inp, outs, dy, acts, need_input_grad):
        for i in range(len(layers) - 1, -1, -1):
            W, _, _, gW, gb = layers[i]
            a = outs[i - 1] if i else inp
            torch.bmm(dy.transpose(1, 2), a, out=gW)
            torch.sum(dy, 1, out=gb)
            if i or need_input_grad:
                da = torch.bmm(dy, W)
                if i:
                    n = self.block
                    parts = [acts[i - 1].backward(da[s:s + n], a[s:s + n]) for s in range(0, da.shape[0], n)]
                    dy = parts[0] if len(parts) == 1 else torch.cat(parts)
                else:
                    dy = da
        return dy

    # -- the host values of a step, and the CUDA graph interface (training.graphs) ----------------
    def graph_unsupported(self) -> str | None:
        return None

    def host(self, t: int) -> tuple[dict[int, float], dict[int, tuple]]:
        """What update t computes on the host, by member j in host_firsts (member i's values are
        member host_of[i]'s): the KL weight / B, and the optimizer's (kernel, lr at t, betas, eps,
        weight decay). Computed once per distinct setting: a stack of 1,024 seeds asks once."""
        if self._host_t != t:
            kw, opt = {}, {}
            for j in self.host_firsts:
                tr = self.members[j]
                kw[j] = tr.objective.kl_weight(t - 1) / self.b
                opt[j] = (self.optim_k[j], tr.cfg.optim.lr * tr.schedule(t - 1, tr.cfg.train.steps),
                          tuple(tr.cfg.optim.betas), tr.cfg.optim.eps, tr.cfg.optim.weight_decay)
            self._host_t, self._host = t, (kw, opt)
        return self._host

    def graph_key(self, t: int):
        kw, opt = self.host(t)
        return tuple(kw.values()), tuple(o[1:] for o in opt.values())

    def generators(self) -> list[torch.Generator]:
        """The torch generators a step draws from (a CUDA graph registers them)."""
        if self.noise_keys is None or self.dynamic:
            return [t.noise_gen for t in self.members]
        return []

    def info(self) -> dict:
        """What env.json records about this engine's path."""
        return {"noise": noise.NAME if self.noise_keys is not None else "torch generator per run"}

    def count(self, t: int) -> None:
        self.opt_step.fill_(t)
        if self.noise_keys is not None:
            S = self.noise_steps
            if self.noise_from is None or not self.noise_from <= t < self.noise_from + S:
                noise.normal(self.noise_keys, t, self.noise_ahead.shape[2], S, out=self.noise_ahead)
                self.noise_from = t
            self.noise_slot.fill_(t - self.noise_from)

    def step(self, x_idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        self.count(t)
        self.counted_step(x_idx, t, out)

    def counted_step(self, x_idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        """step() once count(t) is done: what a CUDA graph captures."""
        M, B, K, L = len(self.members), self.b, self.k, self.latent
        members = self.members
        train_x = members[0].train_x
        kw, opt = self.host(t)
        if self.dynamic:
            for j, tr in enumerate(members):
                self.x[j] = tr.binarizer.sample(train_x[x_idx[j]], tr.noise_gen)
        else:
            torch.index_select(train_x, 0, x_idx.reshape(-1), out=self.x.view(M * B, -1))
        if self.noise_keys is not None:
            torch.index_select(self.noise_ahead, 1, self.noise_slot, out=self.noise.view(M, 1, -1))
        else:
            for j, tr in enumerate(members):
                torch.randn((K, B, L), generator=tr.noise_gen, out=self.noise[j])
        x, eps = self.x, self.noise

        hid = self._forward(self.enc[:-1], x, self.enc_out, self.enc_acts, hidden_only=True)
        (Wt_mu, b_mu), (Wt_raw, b_raw) = self.heads
        mu = torch.baddbmm(b_mu, hid, Wt_mu, out=self.mu)
        raw = torch.baddbmm(b_raw, hid, Wt_raw, out=self.raw)
        sigmas = []
        for s, e in self.blocks:
            sigma, dsig = self.sigma_k[s](raw[s:e])
            sigmas.append(sigma)
            self.dsig_draw[s:e] = dsig
            torch.addcmul(mu[s:e].unsqueeze(1), sigma.unsqueeze(1), eps[s:e], out=self.z[s:e])
        z = self.z
        logits = self._forward(self.dec, z.view(M, K * B, L), self.dec_out, self.dec_acts).view(M, K, B, -1)
        kls = []
        for (s, e), sigma in zip(self.blocks, sigmas):
            # x as (n, 1, B, D): each run's images against its K samples; z as (K, n, B, L)
            rec, dlog = self.lik_k[s](logits[s:e], x[s:e].unsqueeze(1), 1.0 / (B * K))
            self.dlog[s:e] = dlog.view(e - s, K * B, -1)
            kl = self.kl_k[s](mu[s:e], sigma, z[s:e].transpose(0, 1), K)
            kls.append(kl)
            r, k_ = rec.mean(1).mean(-1), kl[0].mean(-1)
            torch.stack([r, k_, r - k_], dim=1, out=out[s:e])

        # backward of loss = mean_b(-rec + w * kl), per block of runs (w: the KL weight at this step)
        dz = self._backward(self.dec, z.view(M, K * B, L), self.dec_out, self.dlog, self.dec_acts, True)
        dz = dz.view(M, K, B, L)
        for (s, e), (_, dmu_kl, dsig_kl, dz_kl) in zip(self.blocks, kls):
            bg = kw[self.host_of[s]]
            dzb = dz[s:e] if dz_kl is None else dz[s:e].add(dz_kl.transpose(0, 1), alpha=bg)
            dmu, dsig = ((dzb[:, 0], dzb[:, 0] * eps[s:e, 0]) if K == 1
                         else (dzb.sum(1), (dzb * eps[s:e]).sum(1)))
            torch.add(dmu, dmu_kl, alpha=bg, out=self.dh[s:e, :, :L])
            torch.mul(dsig.add_(dsig_kl, alpha=bg), self.dsig_draw[s:e], out=self.dh[s:e, :, L:])
        self._backward(self.enc, x, self.enc_out, self.dh, self.enc_acts, False)
        self.update(t)

    def update(self, t: int) -> None:
        """Each run's optimizer kernel on its row of the (M, P) stack (on CUDA: on blocks of runs with
        equal hyperparameters), with its learning rate at this step (schedule included); the update
        count is in self.opt_step (count)."""
        _, opt = self.host(t)
        for s, e in self.opt_blocks:
            k, lr, betas, eps, wd = opt[self.host_of[s]]
            k.update([self.flat[s:e]], [self.grad[s:e]], [self.m[s:e]], [self.v[s:e]], self.opt_step,
                     lr=lr, betas=betas, eps=eps, weight_decay=wd)
