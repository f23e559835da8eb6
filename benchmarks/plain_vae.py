"""The baseline trained the plain way: the reference for benchmarks/whole_run.py.

    python benchmarks/plain_vae.py [--steps 20000] [--threads N]

What a researcher would write (pytorch/examples vae/main.py style) for experiments/baseline.yaml:
196-128-16 / 8-128-196 tanh MLPs, sigma = softplus + 1e-4, K = 2 samples, analytic KL, Adam 1e-3,
batch 100 from 1,000 training images of each digit (the 14x14 MNIST shipped in the package, read
with numpy: no vaebench import), no periodic validation, the final train and validation ELBO
printed at the end.
"""

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20_000)
ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(0)
with gzip.open(Path(__file__).resolve().parents[1] / "vaebench" / "data" / "mnist14.bin.gz") as f:
    train_sums, train_labels, test_sums, _ = (np.lib.format.read_array(f) for _ in range(4))
rng = np.random.default_rng(0)
keep = np.concatenate([rng.permutation(np.flatnonzero(train_labels == c))[:1000] for c in range(10)])
train = torch.from_numpy((train_sums[keep].reshape(-1, 196) > 512).astype(np.float32))  # 2x2 mean > 128
val = torch.from_numpy((test_sums[:100].reshape(-1, 196) > 512).astype(np.float32))
enc = nn.Sequential(nn.Linear(196, 128), nn.Tanh(), nn.Linear(128, 16))
dec = nn.Sequential(nn.Linear(8, 128), nn.Tanh(), nn.Linear(128, 196))
opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)


def elbo(x, k=2):
    h = enc(x)
    mu, sigma = h[:, :8], F.softplus(h[:, 8:]) + 1e-4
    z = mu + sigma * torch.randn((k, *mu.shape))
    rec = -F.binary_cross_entropy_with_logits(dec(z), x.expand(k, -1, -1), reduction="none").sum(-1).mean(0)
    kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * torch.log(sigma)).sum(-1)
    return (rec - kl).mean()


step = 0
while step < args.steps:
    for idx in torch.randperm(len(train)).split(100):
        loss = -elbo(train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step == args.steps:
            break
with torch.no_grad():
    print(f"step {step}: train ELBO {elbo(train).item():.2f}, val ELBO {elbo(val).item():.2f}")
