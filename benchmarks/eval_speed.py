"""Held-out IW log-likelihood: a straightforward batched PyTorch estimate against vaebench's, in one process.

    python benchmarks/eval_speed.py [RUN_FOLDER] [--images 1000] [--k 5000] [--threads 2]

RUN_FOLDER is a trained run (default: a model of the seed's shape trained here for 2,000 updates).
Both estimate log p(x) = logsumexp_i(log p(x, z_i) - log q(z_i|x)) - log k on the same test images
with the same k, in float32 with float64 log-sum-exps; they differ only in how the work is done.
Prints seconds, images per second, the ratio, and the time projected to the 10,000 test images.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaebench import runs  # noqa: E402
from vaebench.evaluation.estimates import iw_log_likelihood  # noqa: E402
from vaebench.evaluation.run import split_images  # noqa: E402


@torch.inference_mode()
def plain_iw(model, x: torch.Tensor, k: int, batch: int = 100, chunk: int = 1000) -> torch.Tensor:
    """The reference: batches of images, chunks of samples, torch.distributions-style terms."""
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        mu, sigma = model.encode(xb)
        parts = []
        for j in range(0, k, chunk):
            eps = torch.randn((min(chunk, k - j), *mu.shape))
            z = mu + sigma * eps
            log_px = -F.binary_cross_entropy_with_logits(model.decode(z), xb.expand(len(z), -1, -1),
                                                         reduction="none").sum(-1)
            log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_qz = (-0.5 * eps**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
            parts.append((log_px + log_pz - log_qz).double())
        out.append(torch.logsumexp(torch.cat(parts), 0) - math.log(k))
    return torch.cat(out)


def trained_run(tmp: Path) -> Path:
    import vaebench

    res = vaebench.run({"name": "evalbench", "objective": {"k": 2}, "train": {"steps": 2000}}, out=tmp,
                       progress=False)
    return Path(res.path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=None)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else trained_run(Path(tmp))
        torch.set_num_threads(args.threads)
        model = runs.load_model(run)
        x = split_images(runs.read_config(run)["data"], "test")[:args.images]
        times, values = {}, {}
        for name, fn in (("plain", lambda: plain_iw(model, x, args.k)),
                         ("vaebench", lambda: iw_log_likelihood(model, x, args.k, torch.Generator().manual_seed(0))[0])):
            torch.manual_seed(0)
            t0 = time.perf_counter()
            values[name] = float(fn().mean())
            times[name] = time.perf_counter() - t0
        for name in times:
            print(f"{name:9s} {times[name]:7.1f} s  {len(x) / times[name]:7.1f} images/s  IW log p(x) {values[name]:.3f}"
                  f"  (10,000 images: ~{times[name] * 10_000 / len(x):.0f} s)")
        print(f"ratio plain / vaebench: {times['plain'] / times['vaebench']:.2f}x  "
              f"(k = {args.k}, {len(x)} images, {args.threads} threads)")


if __name__ == "__main__":
    main()
