"""Training throughput: a plain PyTorch loop against vaebench's engines, in one process.

    python benchmarks/throughput.py [--device cpu|cuda] [--steps 1000] [--threads 2] [--out CSV]

Variants (the seed's model: 196-128-16 / 8-128-196 tanh, batch 100, Adam, 10,000 images in memory):
  plain            the reference: a loop written plainly, as in pytorch/examples vae/main.py
  torch            vaebench run on the autograd Trainer (train.engine=torch)
  fast             vaebench run on the fast engine (train.engine=fast), one run
  fast-nolog       the fast engine's step alone: no metric buffer, evaluation, parquet or checkpoints
  fast-eager       (CUDA) the fast run with CUDA graph capture off (VAEBENCH_CUDA_GRAPH=0)
  stack-M          M runs (seeds 0..M-1) as one stack on the fused engine; aggregate = M x updates/s
  stack-M-per-run  (CPU) the same with every elementwise kernel run per run (the path of unaligned shapes)
  stack-M-step     (CUDA) the step of a stack of M alone, as fast-nolog; stack-M-step-eager: not captured
  generic-M        the same M runs on the generic stacked engine (torch.func: functional_call + vmap + grad),
                   the path of components that declare no fused kernels (a user's own activation, ...)
The vaebench variants time the training loop of a real run (metric buffer, validation every 100
updates, parquet parts, checkpoints) and leave out building the trainers and run folders and the
final evaluation (reported apart, as overhead_s); fast vs fast-nolog is the cost of logging. Peak memory is the
process's peak RSS above its RSS before the variant (CPU; reset through /proc/self/clear_refs) or
torch.cuda.max_memory_allocated (CUDA). On a shared CPU the numbers move by 10-20% between runs.
Variants run round-robin for --repeat rounds; the CSV has the median and range over the rounds of
updates/s and of the ratio to the plain loop of the same round, the machine and its load average
before the start. captured: whether the fast engine's step ran as a CUDA graph replay.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_io import write_csv  # benchmarks/bench_io.py (scripts run from benchmarks/)

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaebench import runs  # noqa: E402
from vaebench.config import resolve  # noqa: E402
from vaebench.training import loop as loop_mod  # noqa: E402
from vaebench.training import train_group, train_run  # noqa: E402
from vaebench.training import trainer as trainer_mod  # noqa: E402
from vaebench.training.generic import GenericStack  # noqa: E402
from vaebench.training import fused as stacked_mod  # noqa: E402
from vaebench.training.fused import FusedStack  # noqa: E402
from vaebench.training.trainer import Trainer, load_data  # noqa: E402
from vaebench.training.graphs import Stepper  # noqa: E402

BATCH = 100


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Memory:
    """Peak memory of one variant, in MB."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux
            except OSError:
                pass
            self.base = rss_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mb = (rss_kb("VmHWM") - self.base) / 1024


class Overhead:
    """Wall seconds spent outside the training loop (building trainers, run folders, final evaluation),
    so that loop throughput compares with the plain loop, which has none of them. Calls that overlap
    (a big stack finishes its runs on threads) count once."""

    seconds = 0.0
    active, since = 0, 0.0
    lock = threading.Lock()

    @classmethod
    def install(cls) -> None:
        for owner, name in ((trainer_mod.Trainer, "__init__"), (trainer_mod.Trainer, "finish"),
                            (runs, "prepare"), (loop_mod, "_begin")):
            setattr(owner, name, cls.timed(getattr(owner, name)))

    @classmethod
    def timed(cls, fn):
        def wrapper(*a, **k):
            with cls.lock:
                if cls.active == 0:
                    cls.since = time.perf_counter()
                cls.active += 1
            try:
                return fn(*a, **k)
            finally:
                with cls.lock:
                    cls.active -= 1
                    if cls.active == 0:
                        cls.seconds += time.perf_counter() - cls.since
        return wrapper


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


K = 1  # z samples per image, for every variant (--k)


def plain_loop(train: torch.Tensor, steps: int, device: torch.device) -> None:
    """The reference: the seed's VAE trained the plain way (K samples, as benchmarks/plain_vae.py)."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(196, 128), nn.Tanh(), nn.Linear(128, 16)).to(device)
    dec = nn.Sequential(nn.Linear(8, 128), nn.Tanh(), nn.Linear(128, 196)).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    perm, pos = torch.randperm(len(train), device=device), 0
    for _ in range(steps):
        if pos + BATCH > len(train):
            perm, pos = torch.randperm(len(train), device=device), 0
        x = train[perm[pos:pos + BATCH]]
        pos += BATCH
        h = enc(x)
        mu, sigma = h[:, :8], F.softplus(h[:, 8:]) + 1e-4
        z = mu + sigma * torch.randn((K, *mu.shape), device=device)
        rec = -F.binary_cross_entropy_with_logits(dec(z), x.expand(K, -1, -1), reduction="none").sum(-1).mean(0)
        kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * torch.log(sigma)).sum(-1)
        loss = -(rec - kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)


def config(steps: int, threads: int, engine: str, seed: int = 0, stack="auto"):
    return resolve({"name": f"s{seed}"}, {"seed": seed, "train.steps": steps, "train.batch_size": BATCH,
                                          "train.threads": threads, "train.engine": engine, "train.stack": stack,
                                          "objective.k": K})


def bare_step(cfgs, tmp: Path, device: torch.device, capture: bool = True) -> bool:
    """The fast engine's step alone (M runs), with the same data order and noise as the runs;
    returns whether it ran captured."""
    os.environ["VAEBENCH_CUDA_GRAPH"] = "1" if capture else "0"
    ts = [Trainer(cfg, tmp / "nolog" / str(i), device) for i, cfg in enumerate(cfgs)]
    stack = FusedStack(ts, device)
    step_fn = Stepper(stack)
    n, pos = len(ts[0].perm), 0
    perm = loop_mod.order_on_device(torch.stack([t.perm for t in ts]), device)  # an epoch's order, as the loop has it
    out = torch.empty((len(ts), 3), device=device)
    for step in range(cfgs[0].train.steps):
        if pos + BATCH > n:
            perm, pos = loop_mod.order_on_device(torch.stack([torch.randperm(n, generator=t.order_gen) for t in ts]), device), 0
        step_fn(perm[:, pos:pos + BATCH], step + 1, out)
        pos += BATCH
    sync(device)
    os.environ["VAEBENCH_CUDA_GRAPH"] = "1"
    return step_fn.captured


def whole_run(cfgs, dirs, device: torch.device, capture: bool = True) -> bool:
    os.environ["VAEBENCH_CUDA_GRAPH"] = "1" if capture else "0"
    if len(cfgs) == 1:
        train_run(cfgs[0], dirs[0], device, False, force=True)
    else:
        train_group(cfgs, dirs, device, False, force=True)
    os.environ["VAEBENCH_CUDA_GRAPH"] = "1"
    return bool((runs.read_json(Path(dirs[0]) / runs.ENV) or {}).get("cuda_graph", False))


def per_run_kernels(fn, *args):
    """fn(*args) with the fused engine's CPU elementwise kernels one run at a time."""
    orig = stacked_mod.block_size
    stacked_mod.block_size = lambda device, runs, sizes=(): 1
    try:
        return fn(*args)
    finally:
        stacked_mod.block_size = orig


def generic_group(cfgs, dirs, device: torch.device) -> None:
    """M runs through the loop on the generic engine (the built-in components would take the fused one)."""
    trainers = [Trainer(c, d, device) for c, d in zip(cfgs, dirs)]
    for t in trainers:
        runs.prepare(t.dir, t.cfg, {})
    loop_mod.train_members(GenericStack(trainers, device), progress=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=1000, help="updates per run (fewer for big stacks)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for every variant")
    ap.add_argument("--stacks", default=None, help="comma-separated M (default 1,8,32 on CPU; 1,8,32,256,1024 on CUDA)")
    ap.add_argument("--generic", default="1,8", help="comma-separated M for the generic engine")
    ap.add_argument("--k", type=int, default=1, help="z samples per image (the baseline's is 2)")
    ap.add_argument("--stack-steps", type=int, default=None,
                    help="updates per run of the stacks over 8 runs (default: max(200, steps * 8 / M))")
    ap.add_argument("--loop-stacks", default=None, help="the M whose whole training loop is timed (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (median and range over them)")
    ap.add_argument("--out", default=None, help="CSV path (default benchmarks/results/throughput-<device>.csv)")
    args = ap.parse_args(argv)
    global K
    K = args.k
    load = os.getloadavg()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    stacks = [int(m) for m in (args.stacks or ("1,8,32" if not cuda else "1,8,32,256,1024")).split(",")]
    loop_stacks = stacks if args.loop_stacks is None else [int(m) for m in args.loop_stacks.split(",") if m]
    out = Path(args.out or Path(__file__).parent / "results" / f"throughput-{device.type}.csv")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    machine = f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"
    print(f"device {name}, torch {torch.__version__}, {args.threads} threads, {args.steps} steps, K = {K}, "
          f"load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="vaebench-bench-"))
    cfg0 = config(args.steps, args.threads, "torch")
    train_x, _ = load_data(cfg0.data, device)
    variants = []  # (name, runs, steps, fn -> captured or None)
    s = args.steps
    one = [config(s, args.threads, "fast")]
    variants.append(("plain", 1, s, lambda: plain_loop(train_x, s, device)))
    variants.append(("torch", 1, s, lambda: train_run(config(s, args.threads, "torch"), tmp / "torch", device,
                                                      False, force=True) and None))
    variants.append(("fast", 1, s, lambda: whole_run(one, [tmp / "fast"], device)))
    if cuda:
        variants.append(("fast-eager", 1, s, lambda: whole_run(one, [tmp / "fast-eager"], device, False)))
    variants.append(("fast-nolog", 1, s, lambda: bare_step(one, tmp, device)))
    for m in stacks:
        sm = (args.stack_steps or max(200, s * 8 // m)) if m > 8 else s
        cfgs = [config(sm, args.threads, "fast", seed, stack=m) for seed in range(m)]
        dirs = [tmp / f"stack{m}" / f"s{i}" for i in range(m)]
        if m in loop_stacks:
            variants.append((f"stack-{m}", m, sm, lambda cfgs=cfgs, dirs=dirs: whole_run(cfgs, dirs, device)))
            if not cuda and m > 1:  # the same with the elementwise kernels forced per run (the unaligned path)
                variants.append((f"stack-{m}-per-run", m, sm,
                                 lambda cfgs=cfgs, dirs=dirs: per_run_kernels(whole_run, cfgs, dirs, device)))
        if cuda:
            variants.append((f"stack-{m}-step", m, sm, lambda cfgs=cfgs: bare_step(cfgs, tmp, device)))
            if m in (1, stacks[-1]):
                variants.append((f"stack-{m}-step-eager", m, sm, lambda cfgs=cfgs: bare_step(cfgs, tmp, device, False)))
    for m in [int(g) for g in args.generic.split(",") if g]:
        cfgs = [config(s, args.threads, "fast", seed, stack=m) for seed in range(m)]
        dirs = [tmp / f"generic{m}" / f"s{i}" for i in range(m)]
        variants.append((f"generic-{m}", m, s, lambda cfgs=cfgs, dirs=dirs: generic_group(cfgs, dirs, device)))
    Overhead.install()
    plain_loop(train_x, 20, device)  # warm-up: first-call costs stay out of every variant
    rounds: dict[str, list[dict]] = {}
    for r in range(args.repeat):  # round-robin: a shared machine's noise hits all variants alike
        plain = None
        for variant, nruns, steps, fn in variants:
            with Memory(device) as mem:
                sync(device)
                Overhead.seconds = 0.0
                t0 = time.perf_counter()
                captured = fn()
                sync(device)
                total = time.perf_counter() - t0
            secs = total - Overhead.seconds
            row = {"variant": variant, "runs": nruns, "steps": steps, "seconds": secs, "overhead_s": Overhead.seconds,
                   "updates_per_s": steps / secs, "aggregate_updates_per_s": steps * nruns / secs,
                   "whole_run_aggregate_updates_per_s": steps * nruns / total, "peak_mb": mem.peak_mb,
                   "captured": captured}
            plain = row["aggregate_updates_per_s"] if variant == "plain" else plain
            row["ratio_to_plain"] = row["aggregate_updates_per_s"] / plain
            rounds.setdefault(variant, []).append(row)
            print(f"round {r + 1}: {variant:>22} {row['aggregate_updates_per_s']:>12.1f} aggregate upd/s "
                  f"x{row['ratio_to_plain']:.2f}", file=sys.stderr, flush=True)
    rows = []
    for variant, rs in rounds.items():
        def med(k):
            return statistics.median(x[k] for x in rs)
        row = {"variant": variant, "runs": rs[0]["runs"], "steps": rs[0]["steps"], "repeats": len(rs)}
        for k in ("updates_per_s", "aggregate_updates_per_s", "ratio_to_plain"):
            row[k] = round(med(k), 2)
            row[k + "_min"] = round(min(x[k] for x in rs), 2)
            row[k + "_max"] = round(max(x[k] for x in rs), 2)
        row |= {"seconds": round(med("seconds"), 3), "overhead_s": round(med("overhead_s"), 3),
                "whole_run_aggregate_updates_per_s": round(med("whole_run_aggregate_updates_per_s"), 1),
                "peak_mb": round(max(x["peak_mb"] for x in rs), 1), "captured": rs[0]["captured"],
                "device": name, "threads": args.threads, "k": K, "torch": torch.__version__, "machine": machine,
                "load_before": " ".join(f"{x:.2f}" for x in load)}
        rows.append(row)
        print(f"{variant:>22}  runs {row['runs']:>5}  {row['updates_per_s']:>9.1f} upd/s  aggregate "
              f"{row['aggregate_updates_per_s']:>11.1f}  x{row['ratio_to_plain']:<7} ({row['ratio_to_plain_min']}-"
              f"{row['ratio_to_plain_max']})  peak {row['peak_mb']:.1f} MB  captured {row['captured']}")
    fast = statistics.median(x["seconds"] for x in rounds["fast"])
    log = fast / statistics.median(x["seconds"] for x in rounds["fast-nolog"]) - 1
    print(f"logging cost (fast run's loop vs its bare step: metric buffer, parquet parts, validation every "
          f"100 updates, checkpoints): {100 * log:.1f}%")
    shutil.rmtree(tmp, ignore_errors=True)
    write_csv(out, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
