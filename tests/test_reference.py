"""vaebench against an independent plain PyTorch loop of the seed's model and protocol."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vaebench
from vaebench.data import load_splits

STEPS, BATCH, K, LR = 1500, 100, 2, 1e-3


def plain_vae_loop(seed: int) -> tuple[float, float, float]:
    """~40 lines in the style of pytorch/examples vae/main.py; returns final val (rec, kl, elbo)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    splits = load_splits("mnist14", None, per_class=1000, data_seed=0, val_size=100, val_from="test")
    train = torch.tensor(splits["train"].images.astype(np.int64) > 512, dtype=torch.float32)
    val = torch.tensor(splits["val"].images.astype(np.int64) > 512, dtype=torch.float32)
    enc = nn.Sequential(nn.Linear(196, 128), nn.Tanh(), nn.Linear(128, 16))
    dec = nn.Sequential(nn.Linear(8, 128), nn.Tanh(), nn.Linear(128, 196))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR)

    def terms(x):
        h = enc(x)
        mu, sigma = h[:, :8], F.softplus(h[:, 8:]) + 1e-4
        z = mu + sigma * torch.randn(K, *mu.shape)
        logits = dec(z)
        rec = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1).mean(0)
        kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * torch.log(sigma)).sum(-1)
        return rec, kl

    step = 0
    while step < STEPS:
        for idx in rng.permutation(len(train)).reshape(-1, BATCH):
            rec, kl = terms(train[idx])
            loss = -(rec - kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == STEPS:
                break
    with torch.no_grad():
        rec, kl = terms(val)
    return rec.mean().item(), kl.mean().item(), (rec - kl).mean().item()


@pytest.mark.slow
def test_matches_an_independent_plain_loop(tmp_path):
    cfg = {"name": "ref", "data": {"val_from": "test", "val_size": 100}, "objective": {"k": K}, "train": {"steps": STEPS, "batch_size": BATCH, "eval_every": 500,
                                                             "threads": 1}, "optim": {"lr": LR},
           "eval": {"enabled": False}}
    ours = []
    theirs = []
    for seed in (0, 1):
        res = vaebench.run(cfg, out=tmp_path, overrides={"seed": seed}, progress=False)
        assert res.state == "done"
        ours.append([res.final["val"][t] for t in ("rec", "kl", "elbo")])
        theirs.append(plain_vae_loop(seed))
    ours, theirs = np.array(ours), np.array(theirs)
    assert np.isfinite(ours).all() and np.isfinite(theirs).all()
    # Same model, data and protocol: the two differ only by their random streams, which move the
    # final validation terms by a few tenths of a nat at this budget (seeds 0-2 measured: <= 0.6).
    np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=1.0)
    # Both have learned: an untrained model sits near -135 nats on these images.
    assert (ours[:, 2] < -35).all() and (ours[:, 2] > -40).all(), ours
