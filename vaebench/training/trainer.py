"""The training loop for one run.

The loop never waits on the device per step: terms are accumulated in a device
buffer and flushed to a parquet part every ``flush_every`` updates. Checkpoints
hold everything needed to continue to exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch
import yaml

from .. import __version__
from .. import runs
from ..components import OBJECTIVES, OPTIMIZERS, SCHEDULES, build_model
from ..config import RunConfig, resolve
from ..data import BINARIZERS, load_splits
from ..devices import resolve_device, set_threads
from ..errors import ConfigError, VaebenchError, reason

EVAL_BATCH = 2_000
# Validation uses the same z noise at every evaluation, so curves move only with the model.
EVAL_SEED = 2_147_483_647


@dataclass
class RunResult:
    path: Path
    state: str  # done | failed | skipped
    step: int
    reason: str | None = None
    final: dict[str, Any] | None = field(default=None, repr=False)


def derive_seed(seed: int, purpose: int) -> int:
    """Independent streams for init, data order and noise from one user seed."""
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1, np.uint64)[0] >> 1)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "vaebench": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "git_commit": commit, "argv": sys.argv,
    }


@torch.no_grad()
def evaluate(model, objective, x: torch.Tensor, binarizer, seed: int = EVAL_SEED) -> torch.Tensor:
    """Mean (rec, kl, elbo) over ``x`` as a device tensor, with fixed noise."""
    gen = torch.Generator(x.device).manual_seed(seed)
    total = torch.zeros(3, device=x.device, dtype=torch.float64)
    for i in range(0, len(x), EVAL_BATCH):
        t = objective(model, binarizer.sample(x[i:i + EVAL_BATCH], gen), gen)
        total += torch.stack([t.rec.sum(), t.kl.sum(), t.elbo.sum()]).double()
    return total / len(x)


@functools.lru_cache(maxsize=4)
def load_data(d, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) prepared on the device; cached so the runs of a stack share one copy."""
    splits = load_splits(d.dataset, d.root, d.per_class, d.seed, d.val_size)
    binarizer = BINARIZERS.get(d.binarize)
    return binarizer.prepare(splits["train"], device), binarizer.prepare(splits["val"], device)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, device: torch.device):
        self.cfg, self.dir, self.device = cfg, Path(run_dir), device
        tc = cfg.train
        set_threads(tc.threads)  # train.threads, else one (vaebench.devices.set_threads says why)
        d = cfg.data
        self.binarizer = BINARIZERS.get(d.binarize)()
        self.train_x, self.val_x = load_data(d, device)
        n = len(self.train_x)
        if tc.batch_size > n:
            raise ConfigError(f"train.batch_size {tc.batch_size} is larger than the {n} training images")
        self.batches_per_epoch = n // tc.batch_size

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, 0))
            self.model = build_model(cfg.model.model_dump(mode="json"), self.train_x.shape[1]).to(device)
        o = cfg.optim.model_dump(mode="json")
        self.schedule = SCHEDULES.get(o.pop("schedule"))
        self.optimizer = OPTIMIZERS.get(o.pop("name"))(self.model.parameters(), **o)
        ob = cfg.objective.model_dump(mode="json")
        self.objective = OBJECTIVES.get(ob.pop("name"))(**ob)
        self.order_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 1))
        self.noise_gen = torch.Generator(device).manual_seed(derive_seed(cfg.seed, 2))
        self.step = 0
        self.perm = torch.randperm(n, generator=self.order_gen)
        self.pos = 0
        self.train_buf = torch.zeros((tc.flush_every, 3), device=device, dtype=torch.float64)
        self.val_rows: list[tuple[int, torch.Tensor]] = []
        self.flushed = 0  # last step written to a part

    # -- state -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            # clones: the fast engine's parameters are views into one tensor of all its runs
            "step": self.step, "model": {k: v.clone() for k, v in self.model.state_dict().items()}, "optimizer": self.optimizer.state_dict(),
            "perm": self.perm, "pos": self.pos, "order_gen": self.order_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(), "config_hash": self.cfg.run_hash(),
        }

    def save_checkpoint(self) -> None:
        import io

        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        runs.atomic_write(self.dir / runs.CHECKPOINT, buf.getvalue())

    def restore(self) -> None:
        """Continue from the checkpoint, dropping metrics logged after it."""
        ckpt_path = self.dir / runs.CHECKPOINT
        if not ckpt_path.is_file():
            shutil.rmtree(self.dir / runs.PARTS, ignore_errors=True)
            (self.dir / runs.METRICS).unlink(missing_ok=True)
            return
        try:
            st = torch.load(ckpt_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.perm, self.pos, self.step = st["perm"].cpu(), int(st["pos"]), int(st["step"])
            self.order_gen.set_state(st["order_gen"].cpu())
            self.noise_gen.set_state(st["noise_gen"].cpu() if self.device.type == "cpu" else st["noise_gen"])
        except Exception as e:  # truncated, corrupt, or from another model
            why = (str(e).splitlines() or [""])[0].split(". ")[0][:160]
            raise VaebenchError(f"unreadable checkpoint {ckpt_path} ({type(e).__name__}: {why}); "
                                f"rerun with --force to start this run over") from None
        for p in runs.part_files(self.dir):
            if runs.part_end(p) > self.step:
                p.unlink()
        self.flushed = self.step

    # -- loop --------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        b = self.cfg.train.batch_size
        if self.pos + b > len(self.perm):
            self.perm = torch.randperm(len(self.perm), generator=self.order_gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + b].to(self.device, non_blocking=True)
        self.pos += b
        return self.binarizer.sample(self.train_x[idx], self.noise_gen)

    def train_step(self) -> torch.Tensor:
        x = self.next_batch()
        lr = self.cfg.optim.lr * self.schedule(self.step, self.cfg.train.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        terms = self.objective(self.model, x, self.noise_gen, step=self.step)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.optimizer.step()
        return torch.stack([terms.rec.mean(), terms.kl.mean(), terms.elbo.mean()]).detach()

    def eval_val(self) -> None:
        self.model.eval()
        self.val_rows.append((self.step, evaluate(self.model, self.objective, self.val_x, self.binarizer)))
        self.model.train()

    def flush(self) -> int | None:
        """Write the buffered steps as one part; return the first non-finite step, if any."""
        first, last = self.flushed, self.step
        if last == first and not self.val_rows:
            return None
        train = self.train_buf[: last - first].cpu().numpy()
        steps = np.arange(first + 1, last + 1)
        val_steps = np.array([s for s, _ in self.val_rows], dtype=np.int64)
        val = torch.stack([v for _, v in self.val_rows]).cpu().numpy() if self.val_rows else np.zeros((0, 3))
        bad_train = steps[~np.isfinite(train).all(1)]
        bad_val = val_steps[~np.isfinite(val).all(1)]
        bad = min([*bad_train[:1], *bad_val[:1]], default=None)
        if bad is not None:
            keep, keep_val = steps < bad, val_steps < bad
            train, steps, val, val_steps = train[keep], steps[keep], val[keep_val], val_steps[keep_val]
        all_steps = np.concatenate([steps, val_steps])
        table = pa.table({
            "step": all_steps.astype(np.int64),
            "split": ["train"] * len(steps) + ["val"] * len(val_steps),
            "rec": np.concatenate([train[:, 0], val[:, 0]]),
            "kl": np.concatenate([train[:, 1], val[:, 1]]),
            "elbo": np.concatenate([train[:, 2], val[:, 2]]),
        }, schema=runs.METRICS_SCHEMA)
        runs.write_table(self.dir / runs.PARTS / f"part-{last:09d}.parquet", table)
        self.flushed = last
        self.val_rows.clear()
        return int(bad) if bad is not None else None

    def write_status(self, state: str, reason: str | None = None) -> None:
        runs.write_json(self.dir / runs.STATUS, {"state": state, "step": self.step, "steps": self.cfg.train.steps,
                                                 "reason": reason, "updated": _now()})

    def run(self, progress: bool | dict | None = None) -> RunResult:
        from tqdm.auto import tqdm

        tc = self.cfg.train
        self.restore()
        self.write_status("running")
        refresh = max(1, min(100, tc.eval_every))
        # progress: True/False/None (None: only on a terminal), or tqdm options such as a bar position
        opts = progress if isinstance(progress, dict) else {"disable": None if progress is None else not progress}
        bar = tqdm(total=tc.steps, initial=self.step, unit="upd", dynamic_ncols=True, leave=False,
                   desc=self.dir.name, **opts)
        try:
            if self.step == 0:
                self.eval_val()
            while self.step < tc.steps:
                i = self.step - self.flushed
                self.train_buf[i] = self.train_step()
                self.step += 1
                if self.step % tc.eval_every == 0:
                    self.eval_val()
                if self.step % refresh == 0:
                    bar.update(self.step - bar.n)
                    bar.set_postfix(elbo=f"{self.train_buf[i, 2].item():.2f}", refresh=False)
                if (self.step % tc.flush_every == 0 or self.step % tc.checkpoint_every == 0
                        or self.step == tc.steps):
                    bad = self.flush()
                    if bad is not None:
                        reason = f"loss became NaN/inf at step {bad}"
                        self.step = bad - 1
                        self.write_status("failed", reason)
                        return RunResult(self.dir, "failed", self.step, reason)
                    if self.step % tc.checkpoint_every == 0 or self.step == tc.steps:
                        self.save_checkpoint()
        finally:
            bar.close()
        final = self.finish()
        return RunResult(self.dir, "done", self.step, final=final)

    def finish(self) -> dict[str, Any]:
        self.model.eval()
        final: dict[str, Any] = {"step": self.step}
        for split, x in (("train", self.train_x), ("val", self.val_x)):
            v = evaluate(self.model, self.objective, x, self.binarizer).cpu().tolist()
            final[split] = dict(zip(runs.TERMS, v)) | {"n": len(x)}
        runs.write_json(self.dir / runs.FINAL, final)
        compact_metrics(self.dir)
        self.write_status("done")
        return final


def compact_metrics(run_dir: Path) -> None:
    """Join the parts into one metrics.parquet (atomically), then drop the parts."""
    parts = runs.part_files(run_dir)
    if parts:
        runs.write_table(run_dir / runs.METRICS, runs.read_tables(parts))
        shutil.rmtree(run_dir / runs.PARTS, ignore_errors=True)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, device: torch.device) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    cfg_path = run_dir / runs.CONFIG
    if cfg_path.is_file():
        try:
            same = resolve(runs.read_config(run_dir)).run_hash() == cfg.run_hash()
        except ConfigError:
            same = False
        if not same:
            raise ConfigError(f"{run_dir} holds a run of a different config; choose another --out or delete it")
    runs.atomic_write(cfg_path, text)  # execution-only keys (flush_every, threads, ...) may have changed
    runs.write_json(run_dir / runs.ENV, environment(device))


def _begin(cfg: RunConfig, run_dir: Path, force: bool) -> RunResult | None:
    """Clear a forced run; return the skip result of a done one."""
    status = runs.read_status(run_dir)
    if force and run_dir.exists():
        for name in (runs.CHECKPOINT, runs.METRICS, runs.FINAL, runs.STATUS):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / runs.PARTS, ignore_errors=True)
    elif status.get("state") == "done":
        return RunResult(run_dir, "skipped", int(status.get("step", 0)), final=runs.read_final(run_dir))
    return None


def train_run(cfg: RunConfig, run_dir: str | Path, device: str | torch.device = "auto",
              progress: bool | dict | None = None, force: bool = False) -> RunResult:
    """Train (or finish, or skip) one run in its own folder. Idempotent: a done run is skipped."""
    from .stacked import use_fast

    run_dir = Path(run_dir)
    if use_fast(cfg):
        return train_group([cfg], [run_dir], device, progress, force)[0]
    dev = resolve_device(device)
    skipped = _begin(cfg, run_dir, force)
    if skipped:
        return skipped
    trainer = Trainer(cfg, run_dir, dev)  # loads data first: a data error writes nothing
    prepare_run_dir(cfg, run_dir, dev)
    try:
        return trainer.run(progress)
    except KeyboardInterrupt:
        trainer.write_status("running", "interrupted; run the same command again to resume")
        raise
    except Exception as e:
        trainer.write_status("failed", reason(e))
        raise


def train_group(cfgs: list[RunConfig], run_dirs: list[str | Path], device: str | torch.device = "auto",
                progress: bool | dict | None = None, force: bool = False) -> list[RunResult]:
    """Train runs that share a stack key (vaebench.training.stacked) as one stacked program on the fast
    engine; each keeps its own folder, exactly as if alone. Runs resumed at different steps train in
    separate stacks. One RunResult per run, in order."""
    from .stacked import train_stack

    dev = resolve_device(device)
    results: dict[int, RunResult] = {}
    members: list[tuple[int, Trainer]] = []
    for i, (cfg, d) in enumerate(zip(cfgs, map(Path, run_dirs))):
        skipped = _begin(cfg, d, force)
        if skipped:
            results[i] = skipped
            continue
        try:
            t = Trainer(cfg, d, dev)
            prepare_run_dir(cfg, d, dev)
        except VaebenchError as e:  # alone: the caller's one-line error; in a stack: this run fails
            if len(cfgs) == 1:
                raise
            results[i] = RunResult(d, "failed", 0, str(e))
            continue
        try:
            t.restore()
        except VaebenchError as e:  # a bad checkpoint fails its own run only, and says so on disk
            t.write_status("failed", str(e))
            results[i] = RunResult(d, "failed", t.step, str(e))
            continue
        t.write_status("running")
        members.append((i, t))
    by_step: dict[int, list[tuple[int, Trainer]]] = {}
    for i, t in members:
        by_step.setdefault(t.step, []).append((i, t))
    for group in by_step.values():
        try:
            for (i, _), r in zip(group, train_stack([t for _, t in group], progress)):
                results[i] = r
        except KeyboardInterrupt:
            for _, t in group:
                t.write_status("running", "interrupted; run the same command again to resume")
            raise
        except Exception as e:
            for _, t in group:
                t.write_status("failed", reason(e))
            raise
    return [results[i] for i in range(len(cfgs))]
