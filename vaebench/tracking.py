"""Exporting a results folder to an experiment tracker (MLflow, TensorBoard), so its runs sit
beside a team's other experiments; the results folder stays the record, the tracker a view of it.

Every run becomes one tracked run: its saved config as parameters (dotted keys), each logged term
of metrics.parquet as a series at its step (``train/elbo``, ``val/kl``, ...), its final and
evaluation numbers as summary metrics under the names of ``vaebench.load(final=True)``
(``val_elbo``, ``test_iw_ll``, ...; ``best_...`` for best.pt's), and the figures the last
``vaebench report`` drew for it. Exporting again updates, never duplicates: MLflow runs are found
by their ``vaebench.run_id`` tag and given only the points they lack (a run whose recorded points
changed is recreated), a TensorBoard run's folder is rewritten whole and swapped in.

Reads run folders through vaebench.runs and vaebench.results only; the trackers are optional
packages, imported here when an export needs them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from . import plugins, runs
from .config import flatten
from .errors import VaebenchError
from .results import _run_label, _study_label, final_numbers, study_order

_NOT_TERMS = ("step", "split")  # metrics.parquet's columns that say where a value is, not a term
# The report's folder of one run's figures, relative to the folder it was built from
# (vaebench.report.build: out / "runs" / label); read here without importing the report.
_REPORT_RUNS = "runs"


@dataclass
class TrackedRun:
    """What an exporter records of one run folder, read once for every tracker."""

    path: Path
    label: str  # as in vaebench.load's run column: the folder below the exported path
    run_id: str  # the vaebench run id (the folder's), or the label for a folder without one
    state: str
    step: int
    params: dict[str, Any]  # dotted config keys; lists as JSON strings (config.flatten)
    series: dict[str, tuple[np.ndarray, np.ndarray]]  # "train/elbo": (steps, values)
    summary: dict[str, float]
    figures: list[Path]
    tags: dict[str, str]
    summary_step: int = 0
    end_time: int | None = None  # ms since the epoch: status.json's last update of a finished run


@dataclass
class ExportSummary:
    """What an export did: each run's label and action (new, updated, unchanged), and where it went."""

    target: str  # the tracking URI or the TensorBoard folder
    tracker: str
    experiment: str | None = None
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (label, action, tracker's id or folder)
    damaged: dict[str, str] = field(default_factory=dict)  # runs left out: label -> the file and the fix

    def count(self, action: str) -> int:
        return sum(a == action for _, a, _ in self.actions)

    def line(self) -> str:
        n = len(self.actions)
        where = f"mlflow at {self.target}, experiment {self.experiment!r}" if self.tracker == "mlflow" \
            else f"tensorboard at {self.target}"
        counts = ", ".join(f"{self.count(a)} {a}" for a in ("new", "updated", "unchanged") if self.count(a))
        skipped = f"; {len(self.damaged)} damaged left out" if self.damaged else ""
        return f"exported {n} run{'s' if n != 1 else ''} to {where} ({counts or 'none'}){skipped}"


def param_text(v: Any) -> str:
    """A config value as a tracker's parameter: text as written, anything else as in YAML/JSON."""
    return v if isinstance(v, str) else json.dumps(v)


def read_runs(path: str | Path) -> tuple[list[TrackedRun], dict[str, str]]:
    """Every run under ``path`` (a run or a study, any depth) in study order, and the damaged ones
    left out ({label: the file and the fix}): a damaged file's values are not the run's."""
    root = Path(path)
    run_dirs, names = study_order(runs.find_runs(root))
    if not run_dirs:
        raise VaebenchError(f"no runs found under {root}")
    out, damaged = [], {}
    for d in run_dirs:
        label = _run_label(d, root)
        st = runs.run_state(d)
        if st.state == "damaged":
            damaged[label] = st.reason or "damaged"
            continue
        out.append(_read_run(d, root, label, st, names.get(d, {})))
    return out, damaged


def _read_run(run_dir: Path, root: Path, label: str, st: runs.RunState, names: dict[str, Any]) -> TrackedRun:
    table = runs.read_metrics_table(run_dir)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    steps = table["step"].to_numpy()
    for split in dict.fromkeys(table["split"].to_pylist()):
        rows = pc.equal(table["split"], split).to_numpy(zero_copy_only=False)
        order = np.argsort(steps[rows], kind="stable")
        for term in (c for c in table.column_names if c not in _NOT_TERMS):
            series[f"{split}/{term}"] = (steps[rows][order].astype(np.int64),
                                         table[term].to_numpy()[rows][order].astype(np.float64))
    summary = {k: float(v) for k, v in final_numbers(run_dir, "last").items()}
    final = runs.read_final(run_dir) or {}
    if isinstance(final.get("best"), dict):  # train.keep_best: the numbers of best.pt, as recorded
        summary |= {f"best_{k}": float(v) for k, v in final_numbers(run_dir, "best").items()}
    status = runs.read_status(run_dir)
    run_id = runs.folder_id(run_dir) or label
    tags = {"vaebench.run_id": run_id, "vaebench.path": str(run_dir.resolve()), "vaebench.state": st.state,
            "vaebench.study": _study_label(run_dir, root),
            "vaebench.code": plugins.code_id(runs.read_code(run_dir))}
    tags |= {f"vaebench.{k}": str(v) for k, v in names.items()}  # a study's variant name
    end = None
    if st.state in ("done", "failed") and isinstance(status.get("updated"), str):
        with contextlib.suppress(ValueError):
            end = int(_dt.datetime.fromisoformat(status["updated"]).timestamp() * 1000)
    return TrackedRun(run_dir, label, run_id, st.state, st.step, flatten(runs.read_config(run_dir)), series,
                      summary, _figures(run_dir), tags, summary_step=st.step, end_time=end)


def _figures(run_dir: Path) -> list[Path]:
    """The PNGs the last ``vaebench report`` drew of this run: in REPORT/runs/<the run's folder
    relative to the folder the report was built from>, nearest first (a report of the run alone
    is beside it, <run>-report/runs/<run>)."""
    run_dir = run_dir.resolve()
    candidates = [run_dir.parent / f"{run_dir.name}-report" / _REPORT_RUNS / run_dir.name]
    candidates += [a / runs.REPORT_FOLDER / _REPORT_RUNS / run_dir.relative_to(a) for a in run_dir.parents]
    for folder in candidates:
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if pngs:
            return pngs
    return []


def _need(module: str, command: str):
    """The tracker's package, or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise VaebenchError(f"export {command} needs {module}: pip install 'vaebench[{command}]'") from None


# -- MLflow ------------------------------------------------------------------

_MLFLOW_BATCH = 1000  # MLflow's limit of metrics in one log_batch request
_PARAM_BATCH = 100  # ... and of params


@contextlib.contextmanager
def _quiet_mlflow():
    """MLflow and its database migrations talk on stderr (INFO lines, warnings); an export's own
    lines are what a user reads. A server that does not answer fails at once instead of retrying
    for minutes (unless the user chose otherwise). All put back afterwards."""
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    before = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    loggers: list[logging.Logger] = []
    levels: list[int] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _need("mlflow", "mlflow")  # first: importing mlflow sets its loggers' levels
            loggers = [logging.getLogger(n) for n in ("mlflow", "alembic", "urllib3")]
            levels = [lg.level for lg in loggers]
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mlflow_message(e: Exception) -> str:
    """MLflow's error as one short line (its messages run to a paragraph and a link), in words
    about what to do for the two a user meets first: a server not there, a URI scheme unknown."""
    text = " ".join(str(e).split())
    if "Max retries exceeded" in text or "Failed to establish a new connection" in text:
        why = "connection refused" if "refused" in text else "no answer"
        return f"can't reach the tracking server ({why}); start it (mlflow server) or check --tracking-uri"
    if "unsupported URI" in text and "Supported URI schemes are:" in text:
        listed = text.split("Supported URI schemes are:", 1)[1].split("]", 1)[0].strip(" [").split(",")
        schemes = [x.strip(" '\"") for x in listed if x.strip(" '\"")]
        return f"not a tracking URI MLflow knows; its schemes are {', '.join(schemes)}"
    text = text.split(" See http")[0].split(" (Caused by")[0]
    return text if len(text) <= 300 else text[:297] + "..."


def export_mlflow(path: str | Path, tracking_uri: str | None = None, experiment: str | None = None,
                  on_run=None) -> ExportSummary:
    """Every run under ``path`` into the MLflow ``experiment`` (default "vaebench") at
    ``tracking_uri`` (default MLflow's own: MLFLOW_TRACKING_URI, else its default store).
    ``on_run(label, action, mlflow_run_id)`` after each run."""
    experiment = experiment or "vaebench"
    with _quiet_mlflow():
        records, damaged = read_runs(path)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            import requests

            network = (requests.RequestException,)
        except ImportError:  # pragma: no cover - mlflow depends on requests
            network = ()
        uri = tracking_uri
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            uri = client.tracking_uri
            found = client.get_experiment_by_name(experiment)
            if found is not None and found.lifecycle_stage != "active":
                raise VaebenchError(f"MLflow experiment {experiment!r} at {uri} is deleted; restore it "
                                    f"(mlflow experiments restore) or choose another --experiment")
            exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
            summary = ExportSummary(str(uri), "mlflow", experiment, damaged=damaged)
            for rec in records:
                action, run_id = _sync_mlflow(client, exp_id, rec)
                summary.actions.append((rec.label, action, run_id))
                if on_run:
                    on_run(rec.label, action, run_id)
        except (MlflowException, *network) as e:
            where = f"MLflow at {uri}" if uri else "MLflow"
            raise VaebenchError(f"{where}: {_mlflow_message(e)}") from None
    return summary


def _mlflow_status(state: str) -> str:
    """A vaebench state as an MLflow run status: done finished, failed failed, stopped part-way killed."""
    return {"done": "FINISHED", "failed": "FAILED", "running": "RUNNING"}.get(state, "KILLED")


def _same(a: float, b: float) -> bool:
    """``a`` (MLflow's point) is ``b`` (the folder's) as MLflow stores it: NaN as NaN, ±inf as ±max float."""
    if math.isinf(b):
        b = math.copysign(sys.float_info.max, b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _points(rec: TrackedRun) -> dict[str, dict[int, float]]:
    """Every metric point the run should have in MLflow: {key: {step: value}}."""
    pts = {key: dict(zip(steps.tolist(), values.tolist())) for key, (steps, values) in rec.series.items()}
    pts |= {key: {rec.summary_step: v} for key, v in rec.summary.items()}
    return pts


def _sync_mlflow(client, exp_id: str, rec: TrackedRun) -> tuple[str, str]:
    """Bring the MLflow run tagged with ``rec``'s run id up to ``rec``: create it, add what it lacks,
    or, where a point it has differs from the run folder's (retrained, re-evaluated), recreate it, so
    each point is there exactly once. Returns (new | updated | unchanged, MLflow run id)."""
    from mlflow.entities import Metric, Param, RunTag

    tag = rec.tags["vaebench.run_id"].replace("'", "\\'")
    existing = client.search_runs([exp_id], f"tags.`vaebench.run_id` = '{tag}'", max_results=50)
    existing = sorted(existing, key=lambda r: r.data.tags.get("vaebench.path") != rec.tags["vaebench.path"])
    want = _points(rec)
    params = {k: param_text(v) for k, v in rec.params.items()}
    action = "new"
    missing = want
    new_params = params
    run = existing[0] if existing else None
    if run is not None:
        run_id = run.info.run_id
        conflict = any(k in params and params[k] != v for k, v in run.data.params.items()) \
            or any(k not in want for k in run.data.metrics)
        missing = {}
        for key, points in want.items():
            if conflict:
                break
            have = client.get_metric_history(run_id, key) if key in run.data.metrics else []
            steps = {m.step for m in have}
            if len(steps) < len(have) or any(m.step not in points or not _same(m.value, points[m.step])
                                             for m in have):
                conflict = True
                break
            lacking = {s: v for s, v in points.items() if s not in steps}
            if lacking:
                missing[key] = lacking
        if conflict:  # MLflow can't remove a point: the run is recreated, whole
            client.delete_run(run_id)
            run, missing, action = None, want, "updated"
        else:
            new_params = {k: v for k, v in params.items() if k not in run.data.params}
            changed_tags = any(run.data.tags.get(k) != v for k, v in rec.tags.items())
            changed = bool(missing or new_params or changed_tags) or run.info.status != _mlflow_status(rec.state) \
                or bool(rec.end_time and run.info.end_time != rec.end_time)
            action = "updated" if changed else "unchanged"
    if run is None:
        run_id = client.create_run(exp_id, tags=rec.tags, run_name=rec.label).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, int(s)) for key, points in missing.items() for s, v in points.items()]
    plist = [Param(k, v) for k, v in new_params.items()]
    tags = [RunTag(k, v) for k, v in rec.tags.items()]
    for i in range(0, len(plist), _PARAM_BATCH):
        client.log_batch(run_id, params=plist[i:i + _PARAM_BATCH])
    client.log_batch(run_id, tags=tags)
    for i in range(0, len(metrics), _MLFLOW_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + _MLFLOW_BATCH])
    if _upload_figures(client, run_id, rec.figures) and action == "unchanged":
        action = "updated"
    status = _mlflow_status(rec.state)
    if run is None or run.info.status != status or (rec.end_time and run.info.end_time != rec.end_time):
        if status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=status, end_time=rec.end_time)
    return action, run_id


def _upload_figures(client, run_id: str, figures: list[Path]) -> bool:
    """The report's PNGs under figures/, each uploaded when the run lacks it or has another size."""
    if not figures:
        return False
    have = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, "figures")}
    sent = False
    for png in figures:
        if have.get(png.name) != png.stat().st_size:
            client.log_artifact(run_id, str(png), "figures")
            sent = True
    return sent


# -- TensorBoard -------------------------------------------------------------

def export_tensorboard(path: str | Path, out: str | Path, on_run=None) -> ExportSummary:
    """Every run under ``path`` into its own folder OUT/<label> of TensorBoard event files; a run
    exported before has its folder written anew beside it and swapped in (no point twice).
    ``on_run(label, action, folder)`` after each run."""
    _need("tensorboard", "tensorboard")
    records, damaged = read_runs(path)
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    if any(runs.is_run_dir(p) for p in (out, *out.resolve().parents)):
        raise VaebenchError(f"tensorboard files can't be written inside a run folder ({out}); choose another --out")
    if out.exists() and not out.is_dir():
        raise VaebenchError(f"--out {out} is a file, not a folder; choose another --out or move the file")
    summary = ExportSummary(str(out), "tensorboard", damaged=damaged)
    for rec in records:
        dest = out / rec.label
        action = "updated" if dest.exists() else "new"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.new-"))
        try:
            _write_events(SummaryWriter, tmp, rec)
            _swap_in(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        summary.actions.append((rec.label, action, str(dest)))
        if on_run:
            on_run(rec.label, action, str(dest))
    return summary


def _hparam(v: Any) -> Any:
    """A config value as TensorBoard's HParams takes it: numbers, flags and text as they are, else text."""
    return v if isinstance(v, (bool, int, float, str)) else param_text(v)


def _write_events(SummaryWriter, folder: Path, rec: TrackedRun) -> None:
    with SummaryWriter(log_dir=str(folder)) as w:
        config = "\n".join(f"    {k}: {param_text(v)}" for k, v in rec.params.items())
        w.add_text("config", config, 0)
        w.add_text("vaebench", "\n".join(f"    {k}: {v}" for k, v in rec.tags.items()), 0)
        for key, (steps, values) in rec.series.items():
            for s, v in zip(steps.tolist(), values.tolist()):
                w.add_scalar(key, v, s)
        for png in rec.figures:
            try:
                from PIL import Image

                with Image.open(png) as im:
                    w.add_image(f"figures/{png.stem}", np.asarray(im.convert("RGB")), rec.step, dataformats="HWC")
            except (ImportError, OSError):  # an unreadable PNG: the run's numbers still go
                continue
        # HParams: the config beside the summary numbers, which it logs as scalars at the last step
        w.add_hparams({k: _hparam(v) for k, v in rec.params.items()}, rec.summary, run_name=".",
                      global_step=rec.summary_step)


def _swap_in(tmp: Path, dest: Path) -> None:
    """``tmp`` becomes ``dest``; an older ``dest`` is moved aside first and removed after."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
        os.replace(dest, old / dest.name)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
