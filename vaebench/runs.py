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

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .errors import VaebenchError

CONFIG, STATUS, ENV, FINAL, CHECKPOINT = "config.yaml", "status.json", "env.json", "final.json", "checkpoint.pt"
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


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: ~10x faster on 100 configs


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    try:
        cfg = yaml.load(path.read_text(), Loader=_YAML_LOADER)
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


def read_metrics_table(run_dir: Path) -> pa.Table:
    """Per-step terms as an Arrow table (step, split, rec, kl, elbo), from the whole file or the parts."""
    run_dir = Path(run_dir)
    files = [run_dir / METRICS] if (run_dir / METRICS).is_file() else part_files(run_dir)
    return read_tables(files)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """Per-step terms in wide form (step, split, rec, kl, elbo), from the whole file or the parts."""
    return read_metrics_table(run_dir).to_pandas()


def read_grid(study_dir: Path) -> dict[str, dict[str, Any]]:
    """{run folder: its varied values, in grid order} from a study's grid.yaml; {} when there is none."""
    try:
        doc = yaml.load((Path(study_dir) / GRID).read_text(), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError):
        return {}
    entries = doc.get("runs") if isinstance(doc, dict) else None
    return {e["folder"]: dict(e.get("varied") or {}) for e in entries or []
            if isinstance(e, dict) and isinstance(e.get("folder"), str)}


def iter_runs(root: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for run_dir in find_runs(root):
        yield run_dir, read_config(run_dir)


def load_model(run_dir: str | Path, device: str = "cpu"):
    """Rebuild a run's VAE from its config and checkpoint (eval mode), without the trainer."""
    import torch

    from .components import build_model

    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise VaebenchError(f"{run_dir} has no checkpoint yet; train it first (vaebench run)")
    cfg = read_config(run_dir)
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
