"""The run folder: its file names, atomic writes, and readers.

Everything that reads results (load, report, evaluation) goes through here and
never through the trainer. A run folder holds:

    config.yaml       the resolved config, every default filled in
    status.json       running / done / failed, the step, and the reason
    env.json          versions, device, git commit
    code.json         the code the run was trained with: each plugin's hash, vaebench's version (read_code)
    metrics.parquet   per-step terms (while running: metrics/part-*.parquet)
    final.json        terms on the whole train and validation splits at the end
    eval.json         held-out evaluations, one entry per (split, k, checkpoint) (read_evals)
    checkpoint.pt     model, optimizer, RNG states and step (and, with train.keep_best, the best so far)
    best.pt           with train.keep_best: the model at the best validation ELBO, its step and terms
    run.lock          held while a process trains the run

A run's state is derived here, one way, for everything that shows it (``run_state``).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from . import plugins
from .errors import VaebenchError

CONFIG, STATUS, ENV, FINAL, CHECKPOINT = "config.yaml", "status.json", "env.json", "final.json", "checkpoint.pt"
# A stack's next checkpoint, written by every member before any becomes checkpoint.pt (see TrainingRun.restore)
CHECKPOINT_NEXT = "checkpoint.next.pt"
CODE = "code.json"  # {"plugins": {item: hash}, "vaebench": version, "git_commit": ...}, at the run's start
EVAL = "eval.json"  # held-out evaluations: {"entries": [{"split", "k", "checkpoint", "iw_ll", ...}, ...]}
EVAL_LOCK = "eval.lock"  # held while an evaluation merges its entry into eval.json
BEST = "best.pt"  # train.keep_best: {"model", "step", "val"} of the best validation ELBO
CHECKPOINTS = ("last", "best")  # the models a run keeps: checkpoint.pt's and best.pt's
SPLIT_ORDER = ("test", "val", "train")
REPORT_FOLDER = "report"  # RESULTS/report: where `vaebench report` writes, so no study may be named so
GRID = "grid.yaml"  # beside a study's runs: each run's folder, id and varied values (vaebench.grid)
METRICS, PARTS = "metrics.parquet", "metrics"
TERMS = ("rec", "kl", "elbo")
LOCK = "run.lock"
METRICS_SCHEMA = pa.schema([("step", pa.int64()), ("split", pa.string()),
                            ("rec", pa.float64()), ("kl", pa.float64()), ("elbo", pa.float64())])


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HOST = socket.gethostname().replace(".", "_")


def _temp_prefix(path: Path) -> str:
    """``.<name>.<host>-<pid>.``: who wrote a temp file, so a dead writer's leftovers can be removed."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path`` and rename: readers never see half a file.

    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600. An OSError
    always names ``path`` (a full disk reports no file name on its own)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if e.filename is None or Path(e.filename).name.startswith(_temp_prefix(path)):
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def clean_temps(folder: Path) -> list[Path]:
    """Remove temp files in ``folder`` left by killed writers (same host, process gone); return them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for f in entries:
        if not (f.name.startswith(".") and f.name.endswith(".tmp")):
            continue
        host_pid = f.name[:-len(".tmp")].rsplit(".", 2)
        if len(host_pid) < 3 or "-" not in host_pid[1]:
            continue
        host, _, pid = host_pid[1].rpartition("-")
        if host != _HOST or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    if not root.is_dir():
        raise VaebenchError(f"{root} is a file, not a results folder")
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
    from .config import saved  # here: the schema's facts, read only when a config is

    return saved(cfg)


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json as a mapping; a missing or damaged one reads as new (run_state says damaged)."""
    doc = read_json(Path(run_dir) / STATUS)
    return doc if isinstance(doc, dict) else {"state": "new", "step": 0}


def read_final(run_dir: Path) -> dict[str, Any] | None:
    """final.json when it is a mapping (valid JSON of another type reads as none: run_state says damaged)."""
    doc = read_json(Path(run_dir) / FINAL)
    return doc if isinstance(doc, dict) else None


def _eval_entries(doc: Any) -> list[dict[str, Any]]:
    """eval.json's entries, each with its split, k and checkpoint. The layout before entries
    ({split: {..., "k": k}}, one per split) reads as entries of the last checkpoint."""
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("entries"), list):
        found = [e for e in doc["entries"] if isinstance(e, dict)]
    else:
        found = [{"split": split, **e} for split, e in doc.items() if isinstance(e, dict)]
    return [{**e, "checkpoint": e.get("checkpoint") or "last"} for e in found
            if isinstance(e.get("split"), str) and isinstance(e.get("k"), int) and not isinstance(e.get("k"), bool)]


def read_evals(run_dir: Path) -> list[dict[str, Any]]:
    """Every evaluation a run has: one entry per (split, k, checkpoint), in either layout."""
    return _eval_entries(read_json(Path(run_dir) / EVAL))


def find_eval(entries: list[dict[str, Any]], split: str, k: int | None = None,
              checkpoint: str = "last") -> dict[str, Any] | None:
    """The entry of (split, k, checkpoint) among ``entries``; k None: the one with the largest k."""
    found = [e for e in entries if e["split"] == split and e["checkpoint"] == checkpoint and (k is None or e["k"] == k)]
    return max(found, key=lambda e: e["k"]) if found else None


def add_eval(run_dir: Path, entry: dict[str, Any]) -> None:
    """Merge one evaluation into eval.json, replacing only the entry of the same (split, k,
    checkpoint); under eval.lock, so concurrent evaluations of a run keep each other's entries."""
    from filelock import FileLock

    run_dir = Path(run_dir)
    ident = (entry["split"], entry["k"], entry["checkpoint"])
    with FileLock(run_dir / EVAL_LOCK):
        path = run_dir / EVAL
        if path.is_file() and not isinstance(read_json(path), dict):  # damaged: kept beside, not overwritten
            os.replace(path, run_dir / f"{EVAL}.damaged-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S%f}")
        kept = [e for e in read_evals(run_dir) if (e["split"], e["k"], e["checkpoint"]) != ident]
        entries = sorted([*kept, entry], key=lambda e: (
            SPLIT_ORDER.index(e["split"]) if e["split"] in SPLIT_ORDER else len(SPLIT_ORDER), e["split"],
            CHECKPOINTS.index(e["checkpoint"]) if e["checkpoint"] in CHECKPOINTS else 2, e["k"]))
        write_json(run_dir / EVAL, {"entries": entries})


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


def _grid_doc(study_dir: Path) -> dict[str, Any]:
    """A study's grid.yaml parsed ({} when there is none), once while the file is unchanged."""
    path = Path(study_dir) / GRID
    try:
        st = path.stat()
    except OSError:
        return {}
    return _parse_grid(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _parse_grid(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        doc = yaml.load(Path(path).read_text(), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def read_grid_base(study_dir: Path) -> dict[str, Any]:
    """The study's base values (grid.yaml's ``base``: each varied key's value in the study's own
    config, and its unchanged variant); {} for a grid.yaml written before it recorded them."""
    base = _grid_doc(study_dir).get("base")
    return dict(base) if isinstance(base, dict) else {}


def read_grid(study_dir: Path) -> dict[str, dict[str, Any]]:
    """{run folder: its varied values, in grid order} from a study's grid.yaml; {} when there is none."""
    entries = _grid_doc(study_dir).get("runs")
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
    """Forget a run's results (--force, --restart-changed): checkpoint, metrics, final, status and the
    record of the code that made them; config and env stay."""
    for name in (CHECKPOINT, CHECKPOINT_NEXT, BEST, METRICS, FINAL, STATUS, CODE):
        (Path(run_dir) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / PARTS, ignore_errors=True)


SET_ASIDE = ".damaged-"  # a retried damaged run's old files: <run>/.damaged-<time>/ (readers skip dot folders)


def set_aside(run_dir: Path, run_id: str) -> Path | None:
    """Before a damaged run is retrained (--retry, its lock held): move what it wrote (and a
    config.yaml that does not hash to ``run_id``) into ``.damaged-<time>/``, so nothing is lost and
    the run starts from 0. Returns that folder (None when there was nothing to move)."""
    run_dir = Path(run_dir)
    names = [CHECKPOINT, CHECKPOINT_NEXT, BEST, METRICS, PARTS, FINAL, STATUS]
    if config_problem(run_dir, run_id):
        names.append(CONFIG)
    present = [n for n in names if (run_dir / n).exists()]
    if not present:
        return None
    dest = run_dir / (SET_ASIDE + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f"))
    dest.mkdir()
    for n in present:
        os.replace(run_dir / n, dest / n)
    return dest


def commit_checkpoint(run_dir: Path) -> None:
    """The pending checkpoint of a stack's two-phase write becomes the run's checkpoint."""
    os.replace(Path(run_dir) / CHECKPOINT_NEXT, Path(run_dir) / CHECKPOINT)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def code_record(imports: list[str]) -> dict[str, Any]:
    """What code.json records: the hash of each plugin's source, vaebench's version and commit."""
    from . import __version__

    return {"plugins": plugins.fingerprint(imports), "vaebench": __version__, "git_commit": _git_commit()}


def read_code(run_dir: Path) -> dict[str, Any] | None:
    """A run's code record; None for a folder written before records (or an unreadable one): unknown code."""
    try:
        doc = read_json(Path(run_dir) / CODE)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("plugins"), dict) else None


def changed_code(run_dir: Path, imports: list[str] | None = None) -> list[str]:
    """The plugins of a run (its config's imports, or ``imports``) whose code differs from its record."""
    items = imports if imports is not None else (read_config(run_dir).get("imports") or [])
    return plugins.changed(read_code(run_dir), items)


def changed_code_message(run_dir: Path, changed: list[str], how: str) -> str:
    """The one line that says a run's plugin changed since it was trained, and ``how`` to proceed."""
    return (f"{run_dir}: plugin {changed[0]} changed since this run was trained"
            f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; {how}")


def environment(device: Any, **extra: Any) -> dict[str, Any]:
    """What env.json records: versions, device, threads, commit, argv, and ``extra`` (the engine)."""
    import numpy as np
    import torch

    from . import __version__

    commit = _git_commit()
    device = torch.device(device)
    return {
        "vaebench": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "git_commit": commit, "argv": sys.argv, **extra,
    }


def record_environment(run_dir: Path, env: dict[str, Any], step: int) -> None:
    """Write env.json for a training that starts at ``step``, keeping under ``engines`` which engine
    trained which updates: a resume under another train.engine must not erase the first one's record."""
    old = read_json(Path(run_dir) / ENV) if step > 0 else None
    old = old if isinstance(old, dict) else {}
    history = old.get("engines")
    if not (isinstance(history, list) and all(isinstance(h, dict) for h in history)):
        history = [{"engine": old["engine"], "from_step": 0}] if old.get("engine") else []
    history = [h for h in history if isinstance(h.get("from_step"), int) and h["from_step"] < step]
    if not history or history[-1].get("engine") != env.get("engine"):
        history.append({"engine": env.get("engine"), "from_step": step})
    write_json(Path(run_dir) / ENV, {**env, "engines": history})


def engines(env: dict[str, Any]) -> str | None:
    """The engines that trained a run, in order, e.g. ``fused+torch`` (env.json)."""
    history = env.get("engines")
    if isinstance(history, list) and history and all(isinstance(h, dict) for h in history):
        return "+".join(str(h.get("engine")) for h in history)
    return env.get("engine")


def prepare(run_dir: Path, cfg: Any, env: dict[str, Any] | None = None) -> None:
    """Create the folder (or check it holds this run), write config.yaml (and env.json).

    ``cfg``: a vaebench.config.RunConfig; a stored config is compared by its run id."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / CONFIG
    if cfg_path.is_file():
        check_identity(run_dir, cfg.run_hash())
    atomic_write(cfg_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # execution-only keys may have changed
    if not (run_dir / CODE).is_file() and not (run_dir / CHECKPOINT).is_file():  # at the start, kept on resume;
        write_json(run_dir / CODE, code_record(list(cfg.imports)))  # a run trained before records stays unknown
    if env is not None:
        write_json(run_dir / ENV, env)


def load_model(run_dir: str | Path, device: str = "cpu", checkpoint: str = "last", allow_changed_code: bool = False):
    """Rebuild a run's VAE from its config and checkpoint (eval mode), without the trainer;
    ``checkpoint``: "last" (checkpoint.pt) or "best" (best.pt, kept with train.keep_best).
    Its plugins must have been imported by the caller (``--import``/``--trust``: reading a folder runs
    none of its code unasked), and be the code it was trained with unless ``allow_changed_code``."""
    import torch

    from .components import build_model

    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise VaebenchError(f"unknown checkpoint {checkpoint!r}; use one of {', '.join(CHECKPOINTS)}")
    ckpt = run_dir / (CHECKPOINT if checkpoint == "last" else BEST)
    if checkpoint == "best" and not ckpt.is_file():
        raise VaebenchError(f"{run_dir} has no {BEST} (trained without train.keep_best); train it again with "
                            f"--set train.keep_best=true --force, or use the last checkpoint")
    if not ckpt.is_file():
        st = run_state(run_dir)  # a done run's missing checkpoint is damage, not "not trained yet"
        raise VaebenchError(f"{run_dir}: {st.reason}" if st.state == "damaged" else
                            f"{run_dir} has no checkpoint yet; train it first (vaebench run)")
    cfg = read_config(run_dir)
    imports = [i for i in cfg.get("imports") or [] if isinstance(i, str)]
    need = plugins.missing(imports)
    if need and plugins.is_path(need[0]) and not Path(need[0]).is_file():
        raise VaebenchError(f"{run_dir} needs plugin {need[0]} to build its model, and that file is not found; "
                            f"restore it")
    if need:
        raise VaebenchError(f"{run_dir} needs plugin {need[0]} to build its model; pass --import {need[0]} "
                            f"(or --trust to import every run's recorded plugins), if you trust that code")
    changed = [] if allow_changed_code else changed_code(run_dir, imports)
    if changed:
        raise VaebenchError(changed_code_message(run_dir, changed, "restore it (eval, sample and reconstruct "
                                                               "take --allow-changed-code to use it as it is now)"))
    bad = config_problem(run_dir) or checkpoint_problem(ckpt)
    if bad:  # never a model under a config it was not trained with, nor torch's own message
        raise VaebenchError(f"{run_dir}: {bad}")
    try:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model_state = state["model"]
        model = build_model(cfg["model"], _data_dim(model_state, cfg)).to(device)
        model.load_state_dict(model_state)
    except VaebenchError as e:
        raise VaebenchError(f"{run_dir}: {e}") from None
    except Exception as e:  # readable, but not this run's model
        raise VaebenchError(f"{run_dir}: {ckpt.name} does not hold this run's model ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:120]}); retrain it with vaebench run CONFIG "
                            f"--retry {run_dir.name}") from None
    model.trained_steps = int(state.get("step", 0))
    return model.eval()


def _data_dim(model_state: dict, cfg: dict) -> int:
    """The data dimension: the run's dataset's declared width (vaebench.data.datasets.width), else
    the width of the decoder's last layer (an MLP's; a conv decoder's last bias is its one channel)."""
    from .data.datasets import DATASETS, data_dim

    name = (cfg.get("data") or {}).get("dataset")
    if name in DATASETS:
        dim = data_dim(name, load=False)
        if dim is not None:
            return dim
    last_bias = [k for k in model_state if k.startswith("decoder.") and k.endswith(".bias")][-1]
    return int(model_state[last_bias].shape[0])


# -- metrics: compaction that can be cut at any instant ------------------------------------------

def expected_rows(steps: int, eval_every: int) -> int:
    """Rows of a finished run's metrics: one train row per update, one val row at step 0 and at
    every eval_every-th update."""
    return steps + 1 + steps // eval_every


def metrics_rows(run_dir: Path) -> int | None:
    """Rows in metrics.parquet from its footer (cheap), or None when there is no readable file."""
    try:
        return pq.ParquetFile(Path(run_dir) / METRICS).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


def compact_metrics(run_dir: Path) -> int:
    """Join the parts (and any metrics.parquet already written) into one metrics.parquet, then drop
    the parts; return its rows.

    Safe to cut at any instant and to run again: metrics.parquet is replaced atomically by a file
    holding every row of the old file and of every part (each (step, split) once), and parts are
    removed only after that, so a cut leaves either the parts or the whole file, never fewer rows."""
    run_dir = Path(run_dir)
    parts = part_files(run_dir)
    whole = run_dir / METRICS
    if not parts:
        if whole.is_file():
            shutil.rmtree(run_dir / PARTS, ignore_errors=True)  # a cut after the last part's removal
        return metrics_rows(run_dir) or 0
    files = ([whole] if whole.is_file() else []) + parts
    table = read_tables(files)
    if whole.is_file():  # a compaction cut while removing parts: merge, each row once
        df = table.to_pandas().drop_duplicates(["step", "split"], keep="last")
        df = df.sort_values(["step", "split"], kind="stable")
        table = pa.Table.from_pandas(df, schema=METRICS_SCHEMA, preserve_index=False)
    write_table(whole, table)
    for p in parts:  # every row of a part is in the whole file now
        p.unlink(missing_ok=True)
    shutil.rmtree(run_dir / PARTS, ignore_errors=True)
    return table.num_rows


# -- a run's state, derived one way ---------------------------------------------------------------

def is_locked(run_dir: Path) -> bool:
    """Whether a process is training this run now (it holds run.lock; the lock dies with it)."""
    from filelock import FileLock, Timeout

    path = Path(run_dir) / LOCK
    if not path.exists():
        return False
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # a read-only folder: nobody can be training there
        return False
    lock.release()
    return False


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's checkpoint, or None when it has none (or it is unreadable)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # truncated or corrupt: resuming will say so
        return None


@dataclass(frozen=True)
class RunState:
    """What a run is now: new, running (its lock is held), partial (resumable from ``step``),
    failed (``reason``), damaged (``file`` unreadable or not this run's: ``reason`` names it and
    the fix) or done (config, metrics, final.json and checkpoint readable and complete)."""

    state: str
    step: int = 0
    reason: str | None = None
    file: str | None = None  # damaged: the file at fault

    def __str__(self) -> str:
        return self.state


def retry_hint(run_dir: Path) -> str:
    return f"retrain it with vaebench run CONFIG --retry {Path(run_dir).name} (its old files are kept aside)"


def folder_id(run_dir: Path) -> str | None:
    """The run id a folder is named by (``<varied values>-<id>``, or grid.yaml's entry), or None."""
    run_dir = Path(run_dir)
    tail = run_dir.name.rsplit("-", 1)[-1]
    if len(tail) == 10 and all(c in "0123456789abcdef" for c in tail):
        return tail
    for e in _grid_doc(run_dir.parent).get("runs") or []:
        if isinstance(e, dict) and e.get("folder") == run_dir.name and isinstance(e.get("id"), str):
            return e["id"]
    return None


def _config_hash(run_dir: Path) -> tuple[str | None, str | None]:
    """(the id config.yaml hashes to, or None; the problem, or None), cached while the file is unchanged."""
    path = Path(run_dir) / CONFIG
    try:
        st = path.stat()
    except OSError:  # a folder not prepared yet: a new run
        return None, None
    from .plugins import loaded

    return _hash_config(str(path), st.st_mtime_ns, st.st_size, tuple(loaded()))


@functools.lru_cache(maxsize=4096)
def _hash_config(path: str, mtime_ns: int, size: int, _plugins: tuple) -> tuple[str | None, str | None]:
    from .config import schema
    from .errors import UnknownComponentError

    try:
        cfg = read_config(Path(path).parent)
    except VaebenchError as e:
        return None, f"{CONFIG} is unreadable ({str(e).split(': ', 1)[-1].split(';')[0]})"
    try:
        return schema().model_validate(cfg).run_hash(), None
    except UnknownComponentError:  # a plugin's component that is not imported here: the id can't be checked
        return None, None
    except Exception as e:  # noqa: BLE001 - pydantic's errors, a hand-edited value
        errors = e.errors() if hasattr(e, "errors") else []
        if errors and all(str(x.get("msg", "")).startswith("Value error, unknown ") for x in errors):
            return None, None  # only components not registered here (a plugin not imported): can't tell
        msg = "; ".join(f"{'.'.join(map(str, x.get('loc', ())))}: {x.get('msg')}" for x in errors[:2]) or str(e)
        return None, f"{CONFIG} is not a valid run config ({(msg.splitlines() or [''])[0][:160]})"


def config_problem(run_dir: Path, run_id: str | None = None) -> str | None:
    """Why config.yaml is not this run's (unreadable, invalid, or hashing to another id than
    ``run_id``, by default the folder's), or None."""
    run_id = run_id or folder_id(run_dir)
    got, problem = _config_hash(run_dir)
    if problem:
        return problem
    if got is not None and run_id is not None and got != run_id:
        return (f"{CONFIG} does not hash to the run's id {run_id} (it hashes to {got}: edited by hand?); "
                f"its numbers are not of this config")
    return None


def check_identity(run_dir: Path, run_id: str) -> None:
    """Refuse, before anything is removed or written, a folder whose config.yaml is not run ``run_id``'s."""
    bad = config_problem(run_dir, run_id)
    if bad:
        from .errors import ConfigError

        raise ConfigError(f"{run_dir} holds another run or a damaged one: {bad}; restore it, "
                          f"{retry_hint(run_dir)}, or choose another --out")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint file can't be read (missing, truncated, corrupt), or None; a zip check of
    every member's CRC (torch.save's format), cached while the file is unchanged."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return f"{path.name} is missing"
    return _check_zip(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _check_zip(path: str, mtime_ns: int, size: int) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is None:
            return None
        why = f"member {bad} is corrupt"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}"
    return f"{Path(path).name} is truncated or corrupt ({size:,} bytes; {why})"


def final_problem(run_dir: Path) -> str | None:
    """Why final.json is not a done run's (missing, not JSON, or not {split: {rec, kl, elbo}}), or None."""
    path = Path(run_dir) / FINAL
    if not path.is_file():
        return f"{FINAL} is missing"
    doc = read_json(path)
    if not isinstance(doc, dict):
        return f"{FINAL} is not a JSON object" if doc is not None else f"{FINAL} is not valid JSON"
    for split in ("train", "val"):
        terms = doc.get(split)
        if not (isinstance(terms, dict) and all(isinstance(terms.get(t), (int, float)) and
                                                not isinstance(terms.get(t), bool) for t in TERMS)):
            return f"{FINAL} has no {split} rec, kl and elbo numbers"
    return None


def _status_problem(run_dir: Path) -> str | None:
    path = Path(run_dir) / STATUS
    if not path.exists():
        return None
    doc = read_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("state", "new"), str):
        return None
    return f"{STATUS} is not a JSON object" if doc is not None or path.stat().st_size else f"{STATUS} is empty"


def _damaged(run_dir: Path, step: int, file: str, problem: str) -> RunState:
    return RunState("damaged", step, f"{problem}; {retry_hint(run_dir)}", file)


def run_state(run_dir: str | Path) -> RunState:
    """The one derivation of a run's state that ls, --dry-run, the report and load(final=True) show.

    running only while its lock is held; damaged when config.yaml is unreadable or does not hash to
    the folder's id, or status.json is not a mapping, or (a done run) metrics.parquet, final.json
    or checkpoint.pt is unreadable, or (a partial run) its checkpoint is; otherwise done only when
    metrics.parquet holds the rows its steps give (a short file is partial: the rerun repairs it),
    failed with the reason on disk, or partial at its last checkpointed step."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    state = status.get("state", "new")
    step = status.get("step", 0)
    step = step if isinstance(step, int) and not isinstance(step, bool) else 0
    if is_locked(run_dir):
        return RunState("running", step, status.get("reason"))
    for file, problem in ((CONFIG, config_problem(run_dir)), (STATUS, _status_problem(run_dir))):
        if problem:
            return _damaged(run_dir, step, file, problem)
    if state == "done":
        want = _want_rows(run_dir, status)
        have = metrics_rows(run_dir)
        if have is None and (run_dir / METRICS).is_file():
            return _damaged(run_dir, step, METRICS, f"{METRICS} is unreadable (not a parquet file)")
        if not (want is None or have == want):
            return RunState("partial", checkpoint_step(run_dir) or 0,
                            f"{METRICS} holds {have or 0} of {want} rows; run the same command again to repair it")
        for file, problem in ((FINAL, final_problem(run_dir)), (CHECKPOINT, checkpoint_problem(run_dir / CHECKPOINT))):
            if problem:
                return _damaged(run_dir, step, file, problem)
        return RunState("done", step)
    if state == "failed":
        return RunState("failed", step, status.get("reason"))
    if (run_dir / CHECKPOINT).is_file() and (problem := checkpoint_problem(run_dir / CHECKPOINT)):
        return _damaged(run_dir, 0, CHECKPOINT, problem)
    ckpt = checkpoint_step(run_dir)
    if state == "new" and ckpt is None:
        return RunState("new")
    return RunState("partial", ckpt or 0, status.get("reason") if state == "running" else None)


def _want_rows(run_dir: Path, status: dict[str, Any]) -> int | None:
    try:
        train = read_config(run_dir).get("train") or {}
        return expected_rows(int(status.get("steps") or train["steps"]), int(train["eval_every"]))
    except (VaebenchError, KeyError, TypeError, ValueError):
        return None


def repair(run_dir: Path, run_id: str | None = None) -> str | None:
    """Before a run trains again (its lock held): remove dead writers' temp files, finish a cut
    compaction, and make a done run whose metrics are short train again. Returns what was done.
    Nothing is removed from a folder whose config.yaml is not run ``run_id``'s (check_identity)."""
    run_dir = Path(run_dir)
    clean_temps(run_dir)
    clean_temps(run_dir / PARTS)
    status = read_status(run_dir)
    if status.get("state") != "done" or config_problem(run_dir, run_id):
        return None
    want = _want_rows(run_dir, status)
    if want is None:
        return None
    if metrics_rows(run_dir) is None and (run_dir / METRICS).is_file():
        return None  # unreadable, not short: damaged, retrained only with --retry (run_state)
    have = metrics_rows(run_dir) or 0
    if have != want and part_files(run_dir):
        have = compact_metrics(run_dir)
    if have == want:
        return None
    # rows are lost for good: the run trains again from the start (same config and seed, same numbers)
    for name in (CHECKPOINT, BEST, METRICS, FINAL, STATUS):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / PARTS, ignore_errors=True)
    return f"{METRICS} held {have} of {want} rows; retrained from the start"
