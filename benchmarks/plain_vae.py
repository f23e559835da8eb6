"""One config trained the plain way: the reference for benchmarks/whole_run.py and benchmarks/study.py.

    python benchmarks/plain_vae.py [--steps 20000] [--threads N] [--hidden 128] [--posterior sigma]
        [--kl analytic] [--k 2] [--seed 0] [--val-from test] [--val-size 100] [--val-every 0]
        [--eval-k 0] [--eval-chunk 100]

What a researcher would write (pytorch/examples vae/main.py style) for experiments/baseline.yaml
and the four axes of experiments/ablations.yaml: 196-H-16 / 8-H-196 tanh MLPs, sigma = softplus +
1e-4 (or exp of a log-sigma head), K samples, analytic or Monte-Carlo KL, Adam 1e-3, batch 100 from
1,000 training images of each digit (the 14x14 MNIST shipped in the package, read with numpy: no
vaebench import). Validation: the first val_size test images (the seed's protocol) or val_size
training images never trained on; with --val-every N its ELBO every N updates, kept in a list.
With --eval-k K, the test ELBO and the importance-weighted log p(x) with K samples on the 10,000
test images, --eval-chunk images at a time. Defaults: the baseline without periodic validation.
"""

import argparse
import gzip
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20_000)
ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
ap.add_argument("--hidden", type=int, default=128, help="encoder and decoder width")
ap.add_argument("--posterior", choices=["sigma", "log_sigma"], default="sigma")
ap.add_argument("--kl", choices=["analytic", "monte_carlo"], default="analytic")
ap.add_argument("--k", type=int, default=2, help="z samples per image")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--val-from", choices=["test", "train"], default="test")
ap.add_argument("--val-size", type=int, default=100)
ap.add_argument("--val-every", type=int, default=0, help="validation ELBO every N updates (0: none)")
ap.add_argument("--eval-k", type=int, default=0, help="importance samples of the final test log p(x) (0: none)")
ap.add_argument("--eval-chunk", type=int, default=100, help="test images per batch of the final estimate")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
with gzip.open(Path(__file__).resolve().parents[1] / "vaebench" / "data" / "mnist14.bin.gz") as f:
    train_sums, train_labels, test_sums, _ = (np.lib.format.read_array(f) for _ in range(4))
rng = np.random.default_rng(0)
perms = [rng.permutation(np.flatnonzero(train_labels == c)) for c in range(10)]
keep = np.concatenate([p[:1000] for p in perms])
binary = lambda sums: torch.from_numpy((sums.reshape(-1, 196) > 512).astype(np.float32))  # 2x2 mean > 128
train, test = binary(train_sums[keep]), binary(test_sums)
if args.val_from == "test":
    val = test[: args.val_size]
else:  # training images never trained on
    rest = np.concatenate([p[1000:] for p in perms])
    val = binary(train_sums[rng.permutation(rest)[: args.val_size]])
H = args.hidden
enc = nn.Sequential(nn.Linear(196, H), nn.Tanh(), nn.Linear(H, 16))
dec = nn.Sequential(nn.Linear(8, H), nn.Tanh(), nn.Linear(H, 196))
opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)


def posterior(x):
    h = enc(x)
    mu = h[:, :8]
    sigma = torch.exp(h[:, 8:]) if args.posterior == "log_sigma" else F.softplus(h[:, 8:]) + 1e-4
    return mu, sigma


def log_normal(z, mu, sigma):
    return (-0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)


def elbo(x, k=args.k):
    mu, sigma = posterior(x)
    z = mu + sigma * torch.randn((k, *mu.shape))
    rec = -F.binary_cross_entropy_with_logits(dec(z), x.expand(k, -1, -1), reduction="none").sum(-1).mean(0)
    if args.kl == "analytic":
        kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * torch.log(sigma)).sum(-1)
    else:
        kl = (log_normal(z, mu, sigma) - log_normal(z, torch.zeros_like(z), torch.ones_like(z))).mean(0)
    return (rec - kl).mean()


def iw_log_px(x, k):
    mu, sigma = posterior(x)
    z = mu + sigma * torch.randn((k, *mu.shape))
    rec = -F.binary_cross_entropy_with_logits(dec(z), x.expand(k, -1, -1), reduction="none").sum(-1)
    log_w = rec + log_normal(z, torch.zeros_like(z), torch.ones_like(z)) - log_normal(z, mu, sigma)
    return torch.logsumexp(log_w, 0) - math.log(k)


step, curve = 0, []
while step < args.steps:
    for idx in torch.randperm(len(train)).split(100):
        loss = -elbo(train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if args.val_every and step % args.val_every == 0:
            with torch.no_grad():
                curve.append(elbo(val).item())
        if step == args.steps:
            break
with torch.no_grad():
    print(f"step {step}: train ELBO {elbo(train).item():.2f}, val ELBO {elbo(val).item():.2f}")
    if args.eval_k:
        chunks = test.split(args.eval_chunk)
        ll = torch.cat([iw_log_px(c, args.eval_k) for c in chunks]).mean()
        print(f"test ELBO {elbo(test).item():.2f}, test log p(x) (K={args.eval_k}) {ll.item():.2f}")
