"""The Python API the CLI is a thin layer over; call it from a notebook just the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import plugins, runs
from .config import RunConfig, component_keys, component_kinds, flatten, key_infos, read_yaml
from .errors import ConfigError, VaebenchError
from .grid import Study, StudyResult, expand
from .grid import run_study as _run_study
from .results import _run_label, load, ls, varied_keys  # noqa: F401  (re-exported: the API users call)


def _as_raw(config: str | Path | dict[str, Any] | RunConfig) -> tuple[dict[str, Any], str, Path | None]:
    if isinstance(config, (str, Path)):
        return read_yaml(config), str(config), Path(config).parent
    if isinstance(config, RunConfig):
        return config.to_dict(), "", None
    return dict(config or {}), "", None


def import_plugins(imports: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Import plugins (module names, or .py files relative to the current directory) and the installed
    packages' ``vaebench.components`` entry points, in this process and the report's workers."""
    return plugins.load(plugins.resolve(imports, None, "--import"))


def trust_runs(path: str | Path, trust: bool = False, strict: bool = True) -> None:
    """``trust``: import the plugins that the runs under ``path`` recorded (running their code);
    without it, a run that needs one says so in one line (runs.load_model). ``strict``: a plugin that
    fails to import is its one-line error (else the runs needing it say so, as the report does)."""
    if trust:
        from .results import import_recorded

        import_recorded([runs.read_config(d) for d in runs.find_runs(path)], strict)


def study(config: str | Path | dict[str, Any] | RunConfig,
          overrides: list[str] | dict[str, Any] | None = None, imports: list[str] | tuple[str, ...] = ()) -> Study:
    """The flat list of runs a config or study file describes (with ``--set``-style overrides); its
    plugins (``imports:``, plus ``imports`` here) are imported first and recorded in every run."""
    raw, source, base = _as_raw(config)
    return expand(raw, overrides, source, base, imports)


def run_study(config: str | Path | dict[str, Any] | RunConfig | Study, out: str | Path = "results",
              overrides: list[str] | dict[str, Any] | None = None, device: str = "auto",
              jobs: int | None = None, executor: str = "local", ray_address: str | None = None,
              gpus_per_run: float | None = None, force: bool = False, retry_failed: bool = False,
              dry_run: bool = False, progress: bool | None = None, on_result=None,
              imports: list[str] | tuple[str, ...] = (), restart_changed: bool = False,
              retry: list[str] | tuple[str, ...] = (), retry_damaged: bool = False,
              slurm_partition: str | None = None, slurm_time: int | None = None, slurm_mem: str | None = None,
              slurm_cpus_per_task: int | None = None) -> StudyResult:
    """Run every missing run of a study (any config file is a study of one run); see vaebench.grid.
    A run whose plugin code changed since it started is refused, or with ``restart_changed`` trained over.
    ``retry``: folder names, ids or globs of failed or damaged runs to redo; ``retry_damaged``: all damaged.
    ``executor="slurm"``: one Slurm job per job, asking for ``slurm_partition``, ``slurm_time`` (minutes),
    ``slurm_mem`` (e.g. "4G") and ``slurm_cpus_per_task`` (default: the run's train.threads)."""
    if isinstance(config, Study) and (overrides or imports):
        raise ConfigError("give overrides and imports to vaebench.study, which builds the Study")
    s = config if isinstance(config, Study) else study(config, overrides, imports)
    return _run_study(s, out, device=device, jobs=jobs, executor=executor, ray_address=ray_address,
                      gpus_per_run=gpus_per_run, force=force, retry_failed=retry_failed, dry_run=dry_run,
                      progress=progress, on_result=on_result, restart_changed=restart_changed, retry=retry,
                      retry_damaged=retry_damaged, slurm_partition=slurm_partition, slurm_time=slurm_time,
                      slurm_mem=slurm_mem, slurm_cpus_per_task=slurm_cpus_per_task)


def run(config: str | Path | dict[str, Any] | RunConfig, out: str | Path = "results",
        overrides: list[str] | dict[str, Any] | None = None, device: str = "auto",
        progress: bool | None = None, force: bool = False, imports: list[str] | tuple[str, ...] = (),
        restart_changed: bool = False):
    """Train the one run a config describes (resuming or skipping it if it exists); return its RunResult."""
    from .training import RunResult

    s = study(config, overrides, imports)
    if s.axes:
        raise ConfigError(f"{config if isinstance(config, (str, Path)) else 'this config'} describes a study of "
                          f"{len(s.runs)} runs; use vaebench.run_study (or `vaebench run` on the command line)")
    res = _run_study(s, out, device=device, jobs=1, progress=progress, force=force, restart_changed=restart_changed)
    run_dir = res.run_dirs[0]
    if 0 in res.results:
        return res.results[0]
    status = runs.read_status(run_dir)
    state = {"done": "skipped", "running": "busy"}.get(res.states[0], res.states[0])
    return RunResult(run_dir, state, int(status.get("step", 0)), status.get("reason"), runs.read_final(run_dir))


def summary(path: str | Path = "results", k: int | None = None, reduce: str = "last"):
    """One row per config of every study under ``path``: mean ± 95% CI of the final validation ELBO,
    rec, KL and train-validation gap over seeds, with seeds done / failed / unfinished; ``k`` and
    ``reduce`` as in load. ``summary_text(table, format)`` writes it for people or papers."""
    from .report import summary as _summary

    return _summary(path, k=k, reduce=reduce)


def compare(runs: str | Path | pd.DataFrame = "results", metric: str = "test_iw_ll", reference: str | None = None,
            k: int | None = None, reduce: str = "last", per_cell: bool = False) -> pd.DataFrame:
    """Each axis value (each variant) against the reference, paired within seed and cell: the mean
    difference of ``metric``, its 95% t interval over seeds, Holm-adjusted p, share of pairs better
    and a verdict; numbers of different k are refused. See vaebench.report.compare."""
    from .report.compare import compare as _compare

    return _compare(runs, metric, reference, k=k, reduce=reduce, per_cell=per_cell)


def compare_text(table: pd.DataFrame, format: str = "text") -> str:
    """A compare table as text, markdown, latex, html or csv, its header stating metric, k, reduction, Holm."""
    from .report.compare import compare_text as _text

    return _text(table, format)


def summary_text(table: pd.DataFrame, format: str = "text") -> str:
    """A summary table as text, markdown, latex, html or csv, its header stating the reduction and k."""
    from .report.studies import summary_text as _text

    return _text(table, format)


def sample(run: str | Path, out: str | Path, n: int = 64, imports: list[str] | tuple[str, ...] = (),
           trust: bool = False, allow_changed_code: bool = False, device: str = "cpu") -> Path:
    """Draw ``n`` samples of a trained run (its checkpoint) into the image file ``out``; its plugins
    come from ``imports`` or, with ``trust``, from its record (see evaluate). ``device``: auto, cpu
    or cuda."""
    from .report.build import draw_samples

    import_plugins(imports)
    trust_runs(run, trust)

    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    return draw_samples(run, out, n, allow_changed_code=allow_changed_code, device=device)


def reconstruct(run: str | Path, out: str | Path, split: str = "val", n: int = 20,
                imports: list[str] | tuple[str, ...] = (), trust: bool = False,
                allow_changed_code: bool = False, device: str = "cpu") -> Path:
    """Draw ``n`` images of a run's ``split`` beside their reconstructions into the image file ``out``;
    plugins and ``device`` as in sample."""
    from .report.build import draw_reconstructions

    import_plugins(imports)
    trust_runs(run, trust)

    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    return draw_reconstructions(run, out, split, n, allow_changed_code=allow_changed_code, device=device)


def report(path: str | Path = "results", out: str | Path | None = None, force: bool = False,
           jobs: int | None = None, imports: list[str] | tuple[str, ...] = (), formats=("png", "svg"),
           trust: bool = False):
    """Draw every figure of every run and study under ``path`` into ``out`` (default PATH/report)
    with an index.html; redraws only what changed since the last report. Runs' plugins are imported
    only from ``imports`` or, with ``trust``, from their records; a run whose plugin is not, or whose
    plugin changed since training, has its model figures marked missing with the reason.
    ``formats``: those of each run's figures ("png,svg,pdf" adds PDF; study figures always have it)."""
    from .report import build_report

    import_plugins(imports)
    trust_runs(path, trust, strict=False)
    return build_report(path, out=out, force=force, jobs=jobs, formats=formats)


def evaluate(path: str | Path = "results", k: int = 5000, split: str = "test", device: str = "auto",
             batch: int | None = None, force: bool = False, on_result=None, threads: int | None = None,
             progress: bool | None = False, imports: list[str] | tuple[str, ...] = (),
             checkpoint: str = "last", trust: bool = False, allow_changed_code: bool = False,
             jobs: int | None = None) -> pd.DataFrame:
    """Evaluate every done run under ``path`` (a run or a study) on ``split`` with ``k`` importance
    samples per image, into each run's eval.json beside its other (split, k, checkpoint) entries;
    runs with that entry already are skipped unless ``force``. ``checkpoint``: "last" or "best"
    (best.pt, kept by train.keep_best: true). Returns one row per run: run, state (evaluated /
    skipped / not done / no best.pt / damaged, with its reason), the split's numbers. ``on_result(row)`` is called after each
    run. threads: torch threads (default one); progress: a bar of images done and time left per run
    (None: on a terminal only). A run's plugins are imported only from ``imports`` or, with ``trust``,
    from its record (running their code); a run whose plugin changed since training is refused
    unless ``allow_changed_code``. ``jobs``: runs evaluated at once, in worker processes of one torch
    thread each (default one, in this process); rows and ``on_result`` keep the runs' order."""
    from .evaluation import SPLITS, evaluate_runs, resolve_device

    import_plugins(imports)
    trust_runs(path, trust)
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if checkpoint not in runs.CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {checkpoint!r}; use one of {', '.join(runs.CHECKPOINTS)}")
    resolve_device(device)
    root = Path(path)
    run_dirs = runs.find_runs(root)
    if not run_dirs:
        raise VaebenchError(f"no runs found under {root}")
    if len(run_dirs) == 1 and runs.run_state(run_dirs[0]).state != "done":
        if runs.run_state(run_dirs[0]).state == "damaged":
            raise VaebenchError(f"{run_dirs[0]} is damaged: {runs.run_state(run_dirs[0]).reason}")
        if not (run_dirs[0] / runs.CHECKPOINT).is_file():
            raise VaebenchError(f"{run_dirs[0]} has no checkpoint yet; train it first (vaebench run)")
        raise VaebenchError(f"{run_dirs[0]} is not done ({runs.run_state(run_dirs[0]).state}); "
                            f"finish it first (vaebench run)")
    if len(run_dirs) == 1 and checkpoint == "best":
        runs.load_model(run_dirs[0], checkpoint="best", allow_changed_code=allow_changed_code)  # no best.pt: its one-line error, before anything
    rows, todo = [], []
    for run_dir in run_dirs:
        row: dict[str, Any] = {"run": _run_label(run_dir, root), "split": split, "checkpoint": checkpoint}
        done = runs.find_eval(runs.read_evals(run_dir), split, k, checkpoint)
        st = runs.run_state(run_dir)
        if st.state == "damaged":  # skipped with its reason; the others go on
            row |= {"state": "damaged", "reason": st.reason}
        elif st.state != "done":
            row["state"] = "not done"
        elif checkpoint == "best" and not (run_dir / runs.BEST).is_file():
            row["state"] = f"no {runs.BEST}"
        elif done and not force:
            row |= {**done, "state": "skipped"}
            row.pop("kl_per_dim", None)
        else:
            todo.append(run_dir)
        rows.append(row)
    at = {d: i for i, d in enumerate(run_dirs)}
    results = evaluate_runs(todo, jobs or 1, k=k, split=split, device=device, batch=batch, threads=threads,
                            progress=progress, checkpoint=checkpoint, allow_changed_code=allow_changed_code)
    reported = 0  # rows[:reported] went to on_result, in run order, each as soon as those before it are known
    for run_dir, entry in results:
        row = rows[at[run_dir]]
        if isinstance(entry, VaebenchError):  # e.g. best.pt unreadable: this run is skipped, the others go on
            if len(run_dirs) == 1:
                raise entry
            row |= {"state": "damaged", "reason": str(entry)}
        else:
            row |= {**entry, "state": "evaluated"}
        row.pop("kl_per_dim", None)
        for r in rows[reported:at[run_dir] + 1] if on_result else ():
            on_result(r)
        reported = at[run_dir] + 1
    for r in rows[reported:] if on_result else ():
        on_result(r)
    return pd.DataFrame(rows)


def export_mlflow(path: str | Path = "results", tracking_uri: str | None = None, experiment: str | None = None,
                  on_run=None):
    """Every run under ``path`` (a run or a study) as an MLflow run of ``experiment`` (default
    "vaebench") at ``tracking_uri`` (default: MLflow's own, MLFLOW_TRACKING_URI): config as params,
    logged terms as metric series, final and evaluation numbers as summary metrics, the report's
    figures as artifacts. Exporting again updates those runs (found by their vaebench.run_id tag)
    and duplicates nothing. Returns an ExportSummary; ``on_run(label, action, mlflow_run_id)``
    after each run. Needs ``pip install 'vaebench[mlflow]'``; see vaebench.tracking."""
    from .tracking import export_mlflow as _export

    return _export(path, tracking_uri, experiment, on_run=on_run)


def export_tensorboard(path: str | Path, out: str | Path, on_run=None):
    """Every run under ``path`` as TensorBoard event files in ``out``/<run>: logged terms as scalars
    at their steps, config and summary numbers as HParams, the report's figures as images. A run
    exported before has its folder rewritten and swapped in, so nothing is there twice. Needs
    ``pip install 'vaebench[tensorboard]'``; see vaebench.tracking."""
    from .tracking import export_tensorboard as _export

    return _export(path, out, on_run=on_run)


def components(imports: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Every registered component, plugins included: kind, name, the config keys that choose it
    (the executor: ``vaebench run --executor``), and the module that defines it when not vaebench's."""
    from .grid import EXECUTORS

    import_plugins(imports)
    kinds = {kind: (reg, ", ".join(keys)) for kind, (reg, keys) in component_kinds().items()}
    kinds[EXECUTORS.kind] = (EXECUTORS, "vaebench run --executor")
    rows = []
    for kind, (reg, keys) in kinds.items():
        for name in reg.names():
            module = getattr(reg.get(name), "__module__", "") or ""
            own = module.split(".")[0] in ("vaebench", "torch")
            model = getattr(reg, "config", None)
            fields = model(name).model_fields if callable(model) else {}
            hyper = ", ".join(f"{f}={fields[f].default!r}" for f in fields if f != "name")
            rows.append({"kind": kind, "name": name, "keys": keys, "hyperparameters": hyper,
                         "module": "" if own else module})
    return pd.DataFrame(rows, columns=["kind", "name", "keys", "hyperparameters", "module"])


def config_reference(imports: list[str] | tuple[str, ...] = ()) -> str:
    """The config reference as Markdown (the docs site's page): every key of the schema with its
    default, description and facts, the keys of the plugins in ``imports`` included."""
    from .reference import reference_markdown

    import_plugins(imports)
    return reference_markdown()


def describe_config(config: str | Path | dict[str, Any] | RunConfig,
                    overrides: list[str] | dict[str, Any] | None = None,
                    imports: list[str] | tuple[str, ...] = ()) -> str:
    """The resolved config as YAML, each key with its description (``vaebench config``); of a study,
    the first run, with the values the runs take beside each varied key."""
    s = study(config, overrides, imports)
    dicts = [r.config.to_dict() for r in s.runs]
    source = str(config) if isinstance(config, (str, Path)) else "the config"
    what = (f"a study of {len(s.runs)} runs, the first one shown" if len(s.runs) > 1
            else f"run id {s.runs[0].hash}")
    lines: list[tuple[str, str]] = []
    flats = [flatten(d, tuples=True) for d in dicts]
    present = {k for f in flats for k in f}
    comps = component_keys()
    for info in key_infos():
        *parents, name = info.key.split(".")
        indent = "  " * len(parents)
        note = info.description + ("" if info.changes_numbers else " [not in the run id]")
        below = any(k.startswith(info.key + ".") for k in present)
        if info.section:
            if below:
                lines.append((f"{indent}{name}:", note))
            continue
        if info.key not in present:
            continue
        shown = list(dict.fromkeys(_yaml_value(f.get(info.key)) for f in flats))
        if len(shown) > 1:
            note += f" [varied: {', '.join(shown)}]"
        if info.key in comps and below:  # a component with hyperparameters: a mapping with its name
            lines.append((f"{indent}{name}:", note))
            lines.append((f"{indent}  name: {shown[0]}", f"the {info.registry.kind}"))
            continue
        if info.owner:
            note += f" [{info.owner}]"
        lines.append((f"{indent}{name}: {shown[0]}", note))
    width = max((len(a) for a, _ in lines if len(a) < 40), default=0) + 2  # a long value's note just follows
    body = "\n".join(f"{a:<{width}}# {b}" if len(a) < width else f"{a}  # {b}" for a, b in lines)
    return f"# {source} resolved: {what}\n{body}\n"


def _dotted(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def _yaml_value(v: Any) -> str:
    import yaml

    if isinstance(v, tuple):
        v = list(v)
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
