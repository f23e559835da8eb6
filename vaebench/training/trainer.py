"""One run's state while it trains (TrainingRun: its model, optimizer, random streams, data order,
metric writer and checkpoint), and the torch engine, which updates it with autograd.

Checkpoints hold everything needed to continue to exactly the numbers of an uninterrupted run.
The run's cadence is vaebench.training.loop's; the run folder's lifecycle is vaebench.runs'.
"""

from __future__ import annotations

import functools
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .. import runs
from ..components import build
from ..config import RunConfig
from ..data import BINARIZERS, load_splits
from ..devices import set_threads
from ..errors import ConfigError, VaebenchError
from .engine import Engine

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


@torch.no_grad()
def evaluate(model, objective, x: torch.Tensor, binarizer, seed: int = EVAL_SEED) -> torch.Tensor:
    """Mean (rec, kl, elbo) over ``x`` as a device tensor, with fixed noise."""
    def sums(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = objective(model, xb, gen)
        return torch.stack([t.rec.sum(), t.kl.sum(), t.elbo.sum()])

    return mean_over_batches(x, binarizer, sums, seed)


def mean_over_batches(x: torch.Tensor, binarizer, sums, seed: int = EVAL_SEED) -> torch.Tensor:
    """The mean over ``x`` of ``sums(batch, generator)`` (a batch's summed terms, (..., 3)) in
    float64: the batches and draws every validation shares (EVAL_BATCH images at a time, binarized,
    from one generator seeded ``seed``), whether of one run or of a stack at once."""
    gen = torch.Generator(x.device).manual_seed(seed)
    total: torch.Tensor | float = 0.0
    for i in range(0, len(x), EVAL_BATCH):
        total = total + sums(binarizer.sample(x[i:i + EVAL_BATCH], gen), gen).double()
    return total / len(x)


@functools.lru_cache(maxsize=4)
def load_data(d, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) prepared on the device; cached so the runs of a stack share one copy."""
    splits = load_splits(d)
    binarizer = BINARIZERS.get(d.binarize)
    return binarizer.prepare(splits["train"], device), binarizer.prepare(splits["val"], device)


class TrainingRun:
    """One run while it trains: its config, built components, data, random streams, data order,
    pending metrics and checkpoint. An engine updates it; the loop keeps its cadence."""

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

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, 0))
            parts = build(cfg, self.train_x.shape[1])
        self.model = parts.model.to(device)
        self.schedule, self.objective = parts.schedule, parts.objective
        self.optimizer_factory, self.optimizer_kwargs = parts.optimizer_factory, parts.optimizer_kwargs
        self.optimizer = parts.optimizer(self.model.parameters())
        self.order_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 1))
        self.noise_gen = torch.Generator(device).manual_seed(derive_seed(cfg.seed, 2))
        self.model.use_generator(self.noise_gen)  # dropout draws from the run's noise stream
        self.step = 0
        self.perm = torch.randperm(n, generator=self.order_gen)
        self.pos = 0
        self.val_rows: list[tuple[int, torch.Tensor]] = []
        self.flushed = 0  # last step written to a part
        # train.keep_best: {"step", "val" (rec, kl, elbo), "model"} of the best validation ELBO so far
        self.best: dict[str, Any] | None = None

    # -- state -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            # clones: a stacked engine's parameters are views into one tensor of all its runs
            "step": self.step, "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "perm": self.perm, "pos": self.pos, "order_gen": self.order_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(), "config_hash": self.cfg.run_hash(),
        } | ({"best": self.best} if self.best is not None else {})  # the best so far survives a kill

    def save_checkpoint(self, stack: list[str] | None = None) -> None:
        """checkpoint.pt; with ``stack`` (the folders of the stack's members), the pending
        checkpoint.next.pt of a two-phase write (vaebench.training.loop), which names them."""
        buf = io.BytesIO()
        torch.save(self.state_dict() | ({"stack": stack} if stack else {}), buf)
        runs.atomic_write(self.dir / (runs.CHECKPOINT_NEXT if stack else runs.CHECKPOINT), buf.getvalue())

    def _settle_pending(self) -> None:
        """A stack cut between its two checkpoint phases: its pending checkpoint becomes the run's
        when every member wrote one (then they all resume at its step), else it is dropped."""
        pending = self.dir / runs.CHECKPOINT_NEXT
        if not pending.is_file():
            return
        try:
            st = torch.load(pending, map_location="cpu", weights_only=True)
            step, stack = int(st["step"]), [Path(d) for d in st.get("stack", [])]
        except Exception:  # cut while written (atomic writes make this unlikely): not committed
            pending.unlink(missing_ok=True)
            return

        def reached(d: Path) -> bool:
            for name, ok in ((runs.CHECKPOINT_NEXT, step.__eq__), (runs.CHECKPOINT, step.__le__)):
                try:
                    if ok(int(torch.load(d / name, map_location="cpu", weights_only=True)["step"])):
                        return True
                except Exception:
                    pass
            return False

        if all(reached(d) for d in stack if d.resolve() != self.dir.resolve()):
            runs.commit_checkpoint(self.dir)
        else:
            pending.unlink(missing_ok=True)

    def restore(self) -> None:
        """Continue from the checkpoint, dropping metrics logged after it."""
        self._settle_pending()
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
            best = st.get("best")
            if best is not None and self.cfg.train.keep_best:
                self.best = {"step": best["step"], "val": best["val"], "model": best["model"]}
        except Exception as e:  # truncated, corrupt, or from another model
            why = (str(e).splitlines() or [""])[0].split(". ")[0][:160]
            raise VaebenchError(f"unreadable checkpoint {ckpt_path} ({type(e).__name__}: {why}); "
                                f"{runs.retry_hint(self.dir)}") from None
        for p in runs.part_files(self.dir):
            if runs.part_end(p) > self.step:
                p.unlink()
        self.flushed = self.step

    # -- metrics -----------------------------------------------------------
    def eval_val(self) -> None:
        self.model.eval()
        self.val_rows.append((self.step, evaluate(self.model, self.objective, self.val_x, self.binarizer)))
        self.model.train()

    def track_best(self) -> None:
        """train.keep_best: after a validation, keep a copy of the model if its validation ELBO beats
        the best so far (the earliest on ties). Chosen on the device with torch.where: no host sync."""
        if not self.cfg.train.keep_best or not self.val_rows:
            return
        step, val = self.val_rows[-1]
        state = self.model.state_dict()
        at = torch.tensor(step, dtype=torch.int64, device=val.device)
        if self.best is None:
            self.best = {"step": at, "val": val.clone(), "model": {k: v.clone() for k, v in state.items()}}
            return
        b = self.best
        better = (val[2] > b["val"][2]) | torch.isnan(b["val"][2])
        b["step"] = torch.where(better, at, b["step"])
        b["val"] = torch.where(better, val, b["val"])
        for k, v in state.items():
            b["model"][k].copy_(torch.where(better, v, b["model"][k]))

    def flush(self, train_terms: torch.Tensor) -> int | None:
        """Write the steps since the last flush (``train_terms``: one (rec, kl, elbo) row each) and the
        validation rows as one part; return the first non-finite step, if any."""
        first, last = self.flushed, self.step
        if last == first and not self.val_rows:
            return None
        train = train_terms[: last - first].cpu().numpy().astype(np.float64)
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

    def write_status(self, state: str, reason: str | None = None, step: int | None = None) -> None:
        runs.write_status(self.dir, state, self.step if step is None else step, self.cfg.train.steps, reason)

    def _final_terms(self) -> dict[str, Any]:
        """rec, KL and ELBO of the model as it is, on the whole train and validation splits."""
        out = {}
        for split, x in (("train", self.train_x), ("val", self.val_x)):
            v = evaluate(self.model, self.objective, x, self.binarizer).cpu().tolist()
            out[split] = dict(zip(runs.TERMS, v)) | {"n": len(x)}
        return out

    def finish(self) -> dict[str, Any]:
        self.model.eval()
        final: dict[str, Any] = {"step": self.step, **self._final_terms()}
        if self.best is not None:  # best.pt, and its terms recomputed on both splits (val: the row it was chosen by)
            last = {k: v.clone() for k, v in self.model.state_dict().items()}
            best_step, best_model = int(self.best["step"]), {k: v.cpu() for k, v in self.best["model"].items()}
            self.model.load_state_dict(best_model)
            final["best"] = {"step": best_step, **self._final_terms()}
            self.model.load_state_dict(last)
            buf = io.BytesIO()
            torch.save({"model": best_model, "step": best_step, "val": final["best"]["val"],
                        "config_hash": self.cfg.run_hash()}, buf)
            runs.atomic_write(self.dir / runs.BEST, buf.getvalue())
        runs.write_json(self.dir / runs.FINAL, final)
        runs.compact_metrics(self.dir)
        self.write_status("done")
        return final


Trainer = TrainingRun  # the name before 0.2, kept for scripts that import it


class TorchEngine(Engine):
    """Autograd on the run's own modules, optimizer and objective: any component, one run at a time."""

    name = "torch"

    def check(self, members: list) -> None:
        if len(members) != 1:
            raise VaebenchError(f"torch engine: trains one run at a time, got {len(members)}")

    def step(self, idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        tr = self.members[0]
        x = tr.binarizer.sample(tr.train_x[idx[0]], tr.noise_gen)
        lr = tr.cfg.optim.lr * tr.schedule(t - 1, tr.cfg.train.steps)
        for group in tr.optimizer.param_groups:
            group["lr"] = lr
        terms = tr.objective(tr.model, x, tr.noise_gen, step=t - 1)
        tr.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        tr.optimizer.step()
        out[0] = torch.stack([terms.rec.mean(), terms.kl.mean(), terms.elbo.mean()]).detach()
