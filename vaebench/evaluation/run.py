"""Evaluate a finished run from its folder: rebuild the model and data, estimate, merge into eval.json.

Reads the run through vaebench.runs only (never the trainer), so it works on any run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import runs
from ..data import BINARIZERS, load_splits
from ..devices import resolve_device, set_threads
from ..errors import ConfigError, VaebenchError
from .estimates import active_units, estimator_path, iw_log_likelihood, mean_and_se, posterior_stats

SPLITS = ("test", "val", "train")
# Fixed seeds: the same run, split and k always give the same numbers on the same device.
BINARIZE_SEED = 20_160_101  # one dynamic binarization of the evaluated images
NOISE_SEED = 5_000  # the z samples
EVAL_LOCK = runs.EVAL_LOCK


def split_images(data_cfg: dict[str, Any], split: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The images of a run's split (0/1, or grey levels in [0, 1] with data.binarize: none): "test" is
    the whole test set, "val"/"train" the run's own splits.

    Binarized on the CPU with a fixed seed, so the images are the same on every device.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    d = data_cfg
    grey = load_splits(d)[split]
    binarizer = BINARIZERS.get(d["binarize"])
    x = binarizer.sample(binarizer.prepare(grey, "cpu"), torch.Generator().manual_seed(BINARIZE_SEED))
    return x.to(device)


def evaluate_model(model, x: torch.Tensor, k: int, seed: int = NOISE_SEED, batch: int | None = None,
                   progress=None) -> dict[str, Any]:
    """The eval.json entry of one split: IW log p(x) and ELBO with standard errors, latent diagnostics,
    and the estimator that ran ("fused": the components' kernels, or "generic").
    ``progress(images)``: called as batches of images finish."""
    start = time.perf_counter()
    gen = torch.Generator(x.device).manual_seed(seed)
    iw, w = iw_log_likelihood(model, x, k, gen, batch=batch, progress=progress)
    mu, kl = posterior_stats(model, x)
    iw_ll, iw_se = mean_and_se(iw)
    elbo, elbo_se = mean_and_se(w)
    return {"iw_ll": iw_ll, "iw_ll_se": iw_se, "elbo": elbo, "elbo_se": elbo_se, "k": int(k), "n": len(x),
            "active_units": active_units(mu), "kl_per_dim": None if kl is None else kl.mean(0).tolist(), "estimator": estimator_path(model),
            "seconds": round(time.perf_counter() - start, 3)}


def has_eval(run_dir: str | Path, split: str, k: int, checkpoint: str = "last") -> bool:
    """Whether eval.json holds (split, k) of that checkpoint."""
    return runs.find_eval(runs.read_evals(run_dir), split, k, checkpoint) is not None


def planned_evals(cfg, run_dir: str | Path, force: bool = False) -> list[tuple[str, str]]:
    """(split, checkpoint) of a config's end-of-run evaluation still missing (all with ``force``):
    eval.splits of the last checkpoint and of best.pt where training kept one (train.keep_best; a
    run done before the key was set has none, and is not failed for it)."""
    if not cfg.eval.enabled:
        return []
    best = cfg.train.keep_best and (Path(run_dir) / runs.BEST).is_file()
    checkpoints = ["last", "best"] if best else ["last"]
    return [(split, c) for c in checkpoints for split in cfg.eval.splits
            if force or not has_eval(run_dir, split, cfg.eval.k, c)]


def evaluate_run(run_dir: str | Path, k: int = 5000, split: str = "test", device: str | torch.device = "auto",
                 batch: int | None = None, threads: int | None = None,
                 progress: bool | None = False, checkpoint: str = "last",
                 allow_changed_code: bool = False) -> dict[str, Any]:
    """Evaluate a run's checkpoint ("last", or "best": best.pt) on ``split`` with ``k`` samples per
    image; merge into its eval.json beside the entries of other (split, k, checkpoint).
    threads: torch threads (default one: vaebench.devices.set_threads); progress: a bar of images
    done and the time left (None: on a terminal only)."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    run_dir = Path(run_dir)
    if not runs.is_run_dir(run_dir):
        raise VaebenchError(f"{run_dir} is not a run folder (no {runs.CONFIG})")
    dev = resolve_device(device)
    model = runs.load_model(run_dir, device=str(dev), checkpoint=checkpoint, allow_changed_code=allow_changed_code)
    x = split_images(runs.read_config(run_dir)["data"], split, dev)
    from tqdm.auto import tqdm

    before = torch.get_num_threads()
    used = set_threads(threads)
    what = f"{split} k={k}" + (" best" if checkpoint == "best" else "")
    bar = tqdm(total=len(x), unit="img", desc=f"{run_dir.name} {what}", dynamic_ncols=True, leave=False,
               disable=None if progress is None else not progress)
    try:
        entry = evaluate_model(model, x, k, batch=batch, progress=bar.update)
    finally:
        bar.close()
        torch.set_num_threads(before)
    entry = {"split": split, "checkpoint": checkpoint, "step": int(getattr(model, "trained_steps", 0)), **entry,
             "threads": used}
    runs.add_eval(run_dir, entry)
    return entry


def evaluate_runs(run_dirs: list[Path], jobs: int = 1, **kw):
    """``evaluate_run(d, **kw)`` for each run folder, yielding (run_dir, entry or the VaebenchError
    it raised) in the order given. ``jobs`` > 1: that many spawned worker processes, one torch
    thread each (the default of evaluate_run), each writing its own run's eval.json; the numbers
    are those of one thread in this process, since every run's seeds are its own."""
    workers = min(jobs, len(run_dirs))
    if workers <= 1:
        for d in run_dirs:
            try:
                yield d, evaluate_run(d, **kw)
            except VaebenchError as e:
                yield d, e
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from .. import plugins
    from ..signals import spawning_workers, stop_pool

    kw = {**kw, "progress": False}  # bars of several processes would overwrite each other
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=plugins.init_worker,
                             initargs=(plugins.loaded(), os.getpid())) as pool:
        try:
            with spawning_workers():
                futures = [pool.submit(_evaluate_caught, d, kw) for d in run_dirs]
            for d, f in zip(run_dirs, futures):
                yield d, f.result()
        except BaseException:  # Ctrl-C, SIGTERM, a bug: stop the others, never leave them running
            stop_pool(pool)
            raise


def _evaluate_caught(run_dir: Path, kw: dict[str, Any]):
    try:
        return evaluate_run(run_dir, **kw)
    except VaebenchError as e:  # a user-facing error travels back as a value, its message intact
        return e
