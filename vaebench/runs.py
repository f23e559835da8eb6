"""The run folder: its file names, atomic writes, and readers.

Everything that reads results (load, report, evaluation) goes through here and
never through the trainer. A run folder holds:

    config.yaml       the resolved config, every default filled in
    status.json       running / done / failed, the step, and the reason
    env.json          versions, device, git commit
    metrics.parquet   per-step terms (while running: metrics/part-*.parquet)
    final.json        terms on the whole train and validation splits at the end
    eval.json         held-out evaluations (importance-weighted log-likelihood, ...)
    checkpoint.pt     model, optimizer, RNG states and step
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from . import plugins
from .errors import VaebenchError

CONFIG, STATUS, ENV, FINAL, CHECKPOINT = "config.yaml", "status.json", "env.json", "final.json", "checkpoint.pt"
# A stack's next checkpoint, written by every member before any becomes checkpoint.pt (see Trainer.restore)
CHECKPOINT_NEXT = "checkpoint.next.pt"
EVAL = "eval.json"  # held-out evaluations: {"test": {"iw_ll": ..., ...}}
GRID = "grid.yaml"  # beside a study's runs: each run's folder, id and varied values (vaebench.grid)
METRICS, PARTS = "metrics.parquet", "metrics"
TERMS = ("rec", "kl", "elbo")
METRICS_SCHEMA = pa.schema([("step", pa.int64()), ("split", pa.string()),
                            ("rec", pa.float64()), ("kl", pa.float64()), ("elbo", pa.float64())])


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path`` and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(path, sink.getvalue().to_pybytes())


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder at or below ``root``, in a stable order."""
    root = Path(root)
    if not root.exists():
        raise VaebenchError(f"results folder not found: {root}")
    if is_run_dir(root):
        return [root]
    return sorted(p.parent for p in root.rglob(CONFIG) if not any(s.startswith(".") for s in p.parts[len(root.parts):]))


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise VaebenchError(f"unreadable {path}: {str(e).splitlines()[0]}; restore it or delete the run folder") from None
    if not isinstance(cfg, dict):
        raise VaebenchError(f"{path} is not a run config (a mapping of keys); restore it or delete the run folder")
    return cfg


def read_status(run_dir: Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / STATUS) or {"state": "new", "step": 0}


def read_final(run_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / FINAL)


def part_files(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / PARTS).glob("part-*.parquet"))


def part_end(path: Path) -> int:
    """The last step a part covers, from its name ``part-000001000.parquet``."""
    return int(path.stem.split("-")[1])


def read_tables(files: list[Path]) -> pa.Table:
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, schema=METRICS_SCHEMA))
        except (OSError, pa.ArrowException) as e:
            raise VaebenchError(f"unreadable metrics file {f}: {e}") from None
    return pa.concat_tables(tables) if tables else METRICS_SCHEMA.empty_table()


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """Per-step terms in wide form (step, split, rec, kl, elbo), from the whole file or the parts."""
    run_dir = Path(run_dir)
    files = [run_dir / METRICS] if (run_dir / METRICS).is_file() else part_files(run_dir)
    return read_tables(files).to_pandas()


def read_grid(study_dir: Path) -> dict[str, dict[str, Any]]:
    """{run folder: its varied values, in grid order} from a study's grid.yaml; {} when there is none."""
    try:
        doc = yaml.safe_load((Path(study_dir) / GRID).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    entries = doc.get("runs") if isinstance(doc, dict) else None
    return {e["folder"]: dict(e.get("varied") or {}) for e in entries or []
            if isinstance(e, dict) and isinstance(e.get("folder"), str)}


# -- the lifecycle of a run folder: prepare, status, compaction, environment ------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_status(run_dir: Path, state: str, step: int, steps: int, reason: str | None = None) -> None:
    """status.json: the state, the last step whose metrics are on disk, and why (failed, interrupted)."""
    write_json(Path(run_dir) / STATUS, {"state": state, "step": step, "steps": steps, "reason": reason,
                                        "updated": _now()})


def clear(run_dir: Path) -> None:
    """Forget a run's results (--force): checkpoint, metrics, final and status; config and env stay."""
    for name in (CHECKPOINT, CHECKPOINT_NEXT, METRICS, FINAL, STATUS):
        (Path(run_dir) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / PARTS, ignore_errors=True)


def commit_checkpoint(run_dir: Path) -> None:
    """The pending checkpoint of a stack's two-phase write becomes the run's checkpoint."""
    os.replace(Path(run_dir) / CHECKPOINT_NEXT, Path(run_dir) / CHECKPOINT)


def compact_metrics(run_dir: Path) -> None:
    """Join the parts into one metrics.parquet (atomically), then drop the parts."""
    parts = part_files(run_dir)
    if parts:
        write_table(Path(run_dir) / METRICS, read_tables(parts))
        shutil.rmtree(Path(run_dir) / PARTS, ignore_errors=True)


def environment(device: Any, **extra: Any) -> dict[str, Any]:
    """What env.json records: versions, device, threads, commit, argv, and ``extra`` (the engine)."""
    import numpy as np
    import torch

    from . import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = torch.device(device)
    return {
        "vaebench": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "git_commit": commit, "argv": sys.argv, **extra,
    }


def prepare(run_dir: Path, cfg: Any, env: dict[str, Any] | None = None) -> None:
    """Create the folder (or check it holds this run), write config.yaml (and env.json).

    ``cfg``: a vaebench.config.RunConfig; a stored config is compared by its run id."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / CONFIG
    if cfg_path.is_file():
        try:
            same = type(cfg).model_validate(read_config(run_dir)).run_hash() == cfg.run_hash()
        except Exception:  # unreadable or no longer valid: not this run
            same = False
        if not same:
            from .errors import ConfigError

            raise ConfigError(f"{run_dir} holds a run of a different config; choose another --out or delete it")
    atomic_write(cfg_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # execution-only keys may have changed
    if env is not None:
        write_json(run_dir / ENV, env)


def load_model(run_dir: str | Path, device: str = "cpu"):
    """Rebuild a run's VAE from its config and checkpoint (eval mode), without the trainer."""
    import torch

    from .components import build_model

    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise VaebenchError(f"{run_dir} has no checkpoint yet; train it first (vaebench run)")
    cfg = read_config(run_dir)
    plugins.load(cfg.get("imports") or [])  # the components the run was trained with, in any process
    state = torch.load(ckpt, map_location=device, weights_only=True)
    model_state = state["model"]
    model = build_model(cfg["model"], _data_dim(model_state)).to(device)
    model.load_state_dict(model_state)
    model.trained_steps = int(state.get("step", 0))
    return model.eval()


def _data_dim(model_state: dict) -> int:
    """The data dimension is the width of the decoder's last layer."""
    last_bias = [k for k in model_state if k.startswith("decoder.") and k.endswith(".bias")][-1]
    return int(model_state[last_bias].shape[0])
