"""The run's cadence, written once for every engine, and which engine trains a run.

A group of runs (one run, or a stack) goes through one loop: evaluate at step 0 and every
``eval_every`` updates, buffer the terms on the device, flush a parquet part every
``flush_every`` updates (the NaN check: a diverged run leaves the group, marked failed), write
checkpoints, keep status.json at the last flushed step, draw the progress bar, and leave
every run resumable on an interrupt. The engine supplies only the update.

Engines, fastest first (``train.engine: auto`` takes the first that supports the config, and
env.json records the one that ran and why a faster one did not):
  fused    hand-written batched step from the kernels the components declare (training/fused.py)
  generic  torch.func: functional_call + vmap + grad over the runs of a stack (training/generic.py)
  torch    autograd on one run (training/trainer.py)
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .. import runs
from ..components import build
from ..config import RunConfig, schema, stack_key as _stack_key
from ..data.datasets import data_dim
from ..devices import matmul_path, matmul_precision, resolve_device
from ..errors import ConfigError, VaebenchError, reason
from .engine import Engine
from .graphs import Stepper, record
from .generic import GenericStack, generic_unsupported
from .fused import FusedStack, fused_unsupported
from .trainer import RunResult, TorchEngine, TrainingRun

ENGINES: dict[str, type[Engine]] = {"fused": FusedStack, "generic": GenericStack, "torch": TorchEngine}
INTERRUPTED = "interrupted; run the same command again to resume"


@functools.lru_cache(maxsize=256)
def _choose(blob: str) -> tuple[str, str | None]:
    cfg = schema().model_validate(json.loads(blob))
    if cfg.train.engine == "torch":
        return "torch", None
    # the structure, at the data's width (a conv network needs its image side)
    parts = build(cfg, data_dim(cfg.data.dataset, cfg.data.root))
    model, objective, optimizer = parts.model, parts.objective, parts.optimizer_factory
    asked = cfg.train.engine
    why_fused = fused_unsupported(model, objective, optimizer)
    if why_fused is None and asked in ("auto", "fused", "fast"):
        return "fused", None
    if asked == "fused":
        raise ConfigError(f"train.engine=fused cannot train this config ({why_fused}); use train.engine=auto, "
                          f"generic or torch")
    why_generic = generic_unsupported(model, objective, optimizer)
    if why_generic is None:
        return "generic", (f"not fused: {why_fused}" if asked != "generic" else "train.engine=generic")
    if asked in ("generic", "fast"):
        raise ConfigError(f"train.engine={asked} cannot train this config ("
                          + (f"fused: {why_fused}; " if asked == "fast" else "")
                          + f"generic: {why_generic}); use train.engine=auto or torch")
    return "torch", f"not fused: {why_fused}; not generic: {why_generic}"


def choose_engine(cfg: RunConfig) -> tuple[str, str | None]:
    """(engine, why a faster one was not taken) for ``cfg``: a function of the config alone, so a run
    trains on one engine however it is resumed or re-run (train_group trains a generic run that is
    alone in its group with autograd, and records that)."""
    return _choose(json.dumps(cfg.to_dict(), sort_keys=True))


def stack_size(cfg: RunConfig, device: torch.device) -> int:
    s = cfg.train.stack
    if s == "off" or choose_engine(cfg)[0] == "torch":
        return 1
    if s == "auto":
        return 256 if device.type == "cuda" else 8
    return int(s)


def stack_key(cfg: RunConfig) -> str:
    """Runs with equal keys may train as one stack (the same engine, equal shared keys)."""
    engine = choose_engine(cfg)[0]
    return engine + _stack_key(cfg, ENGINES[engine].shared)


# -- the loop -----------------------------------------------------------------------------------
POOL_FROM = 16  # members from which a stack's per-run files are written by a thread pool


def each(fn, items: list) -> list:
    """[fn(x) for x in items]; for a big stack on threads, since each run writes its own folder and
    pyarrow and file writes release the GIL (1,024 runs' parquet parts and checkpoints otherwise cost
    more than their updates on a GPU)."""
    if len(items) < POOL_FROM:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def order_on_device(perms: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """An epoch's data order on the device in one asynchronous copy (a step then slices it there,
    so the host never waits on a copy while the GPU works)."""
    if dev.type == "cpu":
        return perms
    return perms.pin_memory().to(dev, non_blocking=True)


def train_members(engine: Engine, progress: Any = None) -> list[RunResult]:
    """Train the engine's members (restored Trainers at one step) to their last step; one
    RunResult each, in order."""
    from tqdm.auto import tqdm

    members = list(engine.members)
    first = members[0]
    tc, dev = first.cfg.train, first.device
    step, pos = first.step, first.pos
    n, b = len(first.perm), tc.batch_size
    perms = torch.stack([t.perm for t in members])  # the data order on the host (checkpoints hold it)
    perms_dev = order_on_device(perms, dev)
    flushed = step
    buf = torch.zeros((tc.flush_every, len(members), 3), device=dev, dtype=torch.float32)
    results: dict[int, RunResult] = {}
    ids = list(range(len(members)))  # engine member j is members[ids[j]]
    run_step = Stepper(engine)  # a CUDA graph replay where the engine and device allow, else engine.step

    def sync() -> None:
        for j, t in enumerate(engine.members):
            t.step, t.pos, t.flushed = step, pos, flushed
            t.perm = perms[j].clone()

    def validate() -> None:  # every member's validation terms, and its best model so far (train.keep_best)
        engine.validate()
        for t in engine.members:
            t.track_best()

    refresh = max(1, min(100, tc.eval_every))
    opts = progress if isinstance(progress, dict) else {"disable": None if progress is None else not progress}
    desc = first.dir.name if len(members) == 1 else f"stack of {len(members)}"
    bar = tqdm(total=tc.steps, initial=step, unit="upd", dynamic_ncols=True, leave=False, desc=desc, **opts)
    try:
        if step == 0:
            sync()
            validate()
        while step < tc.steps and engine.members:
            if pos + b > n:
                perms = torch.stack([torch.randperm(n, generator=t.order_gen) for t in engine.members])
                perms_dev = order_on_device(perms, dev)
                pos = 0
            idx = perms_dev[:, pos:pos + b]
            pos += b
            run_step(idx, step + 1, buf[step - flushed])
            step += 1
            if step % tc.eval_every == 0:
                sync()
                validate()
            if step % refresh == 0:
                bar.update(step - bar.n)
                if not bar.disable:
                    bar.set_postfix(elbo=f"{buf[step - flushed - 1, 0, 2].item():.2f}", refresh=False)
            checkpoint = step % tc.checkpoint_every == 0 or step == tc.steps
            if step % tc.flush_every == 0 or checkpoint:
                sync()
                keep = []
                terms = buf[: step - flushed].cpu()  # one copy from the device for the whole stack
                bads = each(lambda jt: jt[1].flush(terms[:, jt[0]]), list(enumerate(engine.members)))
                for j, (t, bad) in enumerate(zip(engine.members, bads)):
                    if bad is None:
                        keep.append(j)
                        continue
                    why = f"loss became NaN/inf at step {bad}"
                    t.step = bad - 1
                    t.write_status("failed", why)
                    results[ids[j]] = RunResult(t.dir, "failed", t.step, why)
                flushed = step
                if len(keep) < len(engine.members):
                    ids, perms = [ids[j] for j in keep], perms[keep]
                    perms_dev = order_on_device(perms, dev)
                    engine.drop(keep)
                    buf = torch.zeros((tc.flush_every, len(keep), 3), device=dev, dtype=torch.float32)
                    sync()
                if checkpoint:
                    save_checkpoints(engine)
                if step < tc.steps:
                    each(lambda t: t.write_status("running"), engine.members)  # status.json: the last flushed step
    except KeyboardInterrupt:
        for t in engine.members:
            t.write_status("running", INTERRUPTED, step=flushed)  # the last step on disk
        raise
    except Exception as e:
        for t in engine.members:
            t.write_status("failed", reason(e), step=flushed)
        raise
    finally:
        bar.close()
        path = run_step.info() | engine.info()
        each(lambda t: record(t.dir, path), members)  # env.json: cuda_graph (and why not), noise
    for j, final in enumerate(each(lambda t: t.finish(), engine.members)):
        results[ids[j]] = RunResult(engine.members[j].dir, "done", step, final=final)
    return [results[i] for i in range(len(members))]


def save_checkpoints(engine: Engine) -> None:
    """Every member's checkpoint. A stack whose runs' numbers depend on the stack (not
    engine.exact_alone) writes them in two phases, every member's pending checkpoint and then
    each becomes checkpoint.pt, so that a cut anywhere leaves its members resuming at one step
    (TrainingRun.restore settles a cut between the phases)."""
    if engine.exact_alone or len(engine.members) == 1:
        each(engine.save, list(range(len(engine.members))))
        return
    stack = [str(t.dir) for t in engine.members]
    each(lambda j: engine.save(j, stack), list(range(len(engine.members))))
    each(lambda t: runs.commit_checkpoint(t.dir), engine.members)


# -- entry points -------------------------------------------------------------------------------
def _begin(cfg: RunConfig, run_dir: Path, force: bool) -> RunResult | None:
    """Clear a forced run (only once its config.yaml is known to be this run's); return the skip
    result of a done one."""
    status = runs.read_status(run_dir)
    if (run_dir / runs.CONFIG).is_file():
        runs.check_identity(run_dir, cfg.run_hash())  # before anything is removed
    if force and run_dir.exists():
        runs.clear(run_dir)
    elif status.get("state") == "done":
        return RunResult(run_dir, "skipped", int(status.get("step", 0)), final=runs.read_final(run_dir))
    return None


def train_run(cfg: RunConfig, run_dir: str | Path, device: str | torch.device = "auto",
              progress: bool | dict | None = None, force: bool = False) -> RunResult:
    """Train (or finish, or skip) one run in its own folder. Idempotent: a done run is skipped."""
    return train_group([cfg], [run_dir], device, progress, force)[0]


def train_group(cfgs: list[RunConfig], run_dirs: list[str | Path], device: str | torch.device = "auto",
                progress: bool | dict | None = None, force: bool = False) -> list[RunResult]:
    """Train runs in their folders, those that may share a stack (same engine, same step, equal
    shared keys) as one; each run's numbers are those it gets alone. One RunResult per run, in order."""
    dev = resolve_device(device)
    results: dict[int, RunResult] = {}
    groups: dict[tuple, list[tuple[int, TrainingRun]]] = {}
    for i, (cfg, d) in enumerate(zip(cfgs, map(Path, run_dirs))):
        try:
            skipped = _begin(cfg, d, force)
        except VaebenchError as e:  # another run's or a damaged folder: untouched, this run fails
            if len(cfgs) == 1:
                raise
            results[i] = RunResult(d, "failed", 0, str(e))
            continue
        if skipped:
            results[i] = skipped
            continue
        engine, why = choose_engine(cfg)  # engine=fast on a config it cannot train: a ConfigError
        try:
            t = TrainingRun(cfg, d, dev)  # loads data first: a data error writes nothing
            runs.prepare(d, cfg)
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
        key = (t.step, stack_key(cfg)) if engine != "torch" else (t.step, i)
        groups.setdefault(key, []).append((i, t))
    for group in groups.values():
        name, why = choose_engine(group[0][1].cfg)
        if name == "generic" and len(group) == 1:  # vmap pays only across runs: alone, plain autograd
            name, why = "torch", f"{why}; generic alone is autograd"
        trainers = [t for _, t in group]
        mode = trainers[0].cfg.train.matmul  # a shared key: equal across a stack
        for t in trainers:
            runs.record_environment(t.dir, runs.environment(dev, engine=name, engine_why=why,
                                                            matmul=matmul_path(mode, dev)), t.step)
        with matmul_precision(mode, dev):
            try:
                engine = ENGINES[name](trainers, dev)
            except Exception as e:
                for t in trainers:
                    t.write_status("failed", reason(e))
                raise
            trained = train_members(engine, progress)
        for (i, _), r in zip(group, trained):
            results[i] = r
    return [results[i] for i in range(len(cfgs))]
