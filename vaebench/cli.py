"""Command line: a thin layer over the Python API in vaebench.api."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import VaebenchError, describe_os_error
from .runs import SPLIT_ORDER
from .signals import Terminated, raise_on_sigterm


class _Group(click.Group):
    """Turns a user's mistake into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VaebenchError as e:
            for line in str(e).splitlines() or [""]:  # a config's errors: at most three lines
                click.echo(f"vaebench: error: {line}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:  # `vaebench ls | head`: the reader has what it wanted; say nothing
            _quiet_stdout()
            ctx.exit(EXIT_PIPE)
        except OSError as e:  # the user's environment: a full disk, a read-only folder, a path that is a file
            if e.errno is None:
                raise
            click.echo(f"vaebench: error: {describe_os_error(e)}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (vaebench.signals): runs saved their status
            from .signals import exit_code

            how = " by SIGTERM" if isinstance(e, Terminated) else ""
            click.echo(f"vaebench: interrupted{how}; run the same command again to resume", err=True)
            ctx.exit(exit_code(e))


DEVICES = ("auto", "cpu", "cuda")
# Every command's --split: "test" is the whole test set, "val"/"train" a run's own splits; the
# help lists them as the data flows: train, val, test.
SPLITS = SPLIT_ORDER[::-1]

# What a shell reports for a process ended by a closed pipe (128 + SIGPIPE), as `yes | head` does.
EXIT_PIPE = 141
# An unexpected exception, i.e. a bug in vaebench (sysexits' EX_SOFTWARE).
EXIT_BUG = 70


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail a second time."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _imports(f):
    return click.option("--import", "imports", multiple=True, metavar="MODULE_OR_FILE",
                        help="A plugin to import first (your own components): a module name or a .py file, "
                             "relative to the current directory. Repeatable; a config lists its own under "
                             "imports:, relative to the config file.")(f)


def _trust(f):
    """--trust and --import for commands that read a results folder: they run none of its code unasked."""
    f = click.option("--trust", is_flag=True,
                     help="Import the plugins the runs recorded (their imports:), running that code: only "
                          "for results folders you trust; --import names them one by one instead.")(f)
    return _imports(f)


def _device(f):
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help="Where the model runs: auto (a CUDA GPU when there is one), cpu or cuda.")(f)


def _split(default: str, help: str):
    """--split, the same choice of the same three names on every command."""
    return click.option("--split", type=click.Choice(SPLITS), default=default, show_default=True, help=help)


def _changed(f):
    return click.option("--allow-changed-code", is_flag=True,
                        help="Use a run's plugins as they are now even where they changed since it was trained "
                             "(the numbers are then not those of the trained model's code).")(f)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vaebench")
def cli() -> None:
    """Ablation studies of VAEs on binarized MNIST."""


@cli.command()
@click.argument("config", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set a config value in every run, e.g. --set train.steps=500; KEY=a,b,c adds an axis "
                   "(a comma inside [..] does not split). Repeatable.")
@click.option("--out", default="results", show_default=True, type=click.Path(),
              help="Results folder; each run writes OUT/<name>/<varied values>-<id>/.")
@_device
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Runs at once (default: one per core; one torch thread each unless train.threads).")
@click.option("--executor", default="local", show_default=True,
              help="local (a process pool), ray (tasks on a Ray instance; pip install 'vaebench[ray]') or "
                   "slurm (one Slurm job per run or stack, through submitit; pip install 'vaebench[slurm]').")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="An existing Ray cluster, e.g. ray://head:10001 or auto (default: start a local one).")
@click.option("--gpus-per-run", type=click.FloatRange(min=0), default=None,
              help="GPUs a Ray task asks for (default 1 with --device cuda, else 0); 0.125 packs 8 runs per GPU. "
                   "A Slurm job asks for it rounded up to whole GPUs.")
@click.option("--slurm-partition", default=None, metavar="NAME",
              help="With --executor slurm: the partition (default: the cluster's default partition).")
@click.option("--slurm-time", type=click.IntRange(min=1), default=None, metavar="MINUTES",
              help="With --executor slurm: each job's time limit; near it a job saves its runs and requeues "
                   "itself (default: the partition's limit).")
@click.option("--slurm-mem", default=None, metavar="SIZE",
              help="With --executor slurm: each job's memory, e.g. 4G (default: the cluster's default).")
@click.option("--slurm-cpus-per-task", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --executor slurm: CPUs per job (default: the run's train.threads).")
@click.option("--force", is_flag=True, help="Redo every run, even those that are done.")
@click.option("--retry-failed", is_flag=True, help="Rerun runs that failed (they are skipped otherwise).")
@click.option("--restart-changed", is_flag=True,
              help="Train over the runs whose plugin code changed since they started (refused otherwise).")
@click.option("--retry", "retry", multiple=True, metavar="RUN_OR_GLOB",
              help="Redo the failed or damaged runs named (a folder name, an id, or a glob); a damaged one "
                   "starts over, its old files kept in RUN/.damaged-<time>/. Repeatable.")
@click.option("--retry-damaged", is_flag=True, help="Redo every damaged run (as --retry does).")
@click.option("--dry-run", is_flag=True,
              help="Print the runs and their state (done/partial/failed/damaged/new); run nothing.")
@_imports
def run(config: str, overrides: tuple[str, ...], out: str, device: str, jobs: int | None, executor: str,
        ray_address: str | None, gpus_per_run: float | None, slurm_partition: str | None,
        slurm_time: int | None, slurm_mem: str | None, slurm_cpus_per_task: int | None, force: bool,
        retry_failed: bool, restart_changed: bool, retry: tuple[str, ...], retry_damaged: bool, dry_run: bool,
        imports: tuple[str, ...]) -> None:
    """Train the runs CONFIG describes (one run, or a study); rerunning does only what is missing.

    \b
    Exit status:
      0    every run of the study is done (--dry-run: the listing was printed)
      1    some runs are not done: failed, damaged, cut, or being trained by another process
      2    a mistake in the config, an override or the environment (a full disk,
           a read-only folder, a path that is a file, a plugin changed since its
           runs started: --restart-changed); one line says which
      70   an internal error (a bug in vaebench): a traceback; please report it
      130  interrupted (Ctrl-C); run the same command again to resume
      143  stopped by SIGTERM (a scheduler, kill); as 130: runs saved, a rerun resumes"""
    from tqdm.auto import tqdm

    from .api import run_study, study

    _folder("--out", out)
    s = study(config, list(overrides), imports)
    for note in s.notes:
        click.echo(f"vaebench: note: {note}", err=True)
    res = run_study(s, out=out, device=device, jobs=jobs, executor=executor, ray_address=ray_address,
                    gpus_per_run=gpus_per_run, force=force, retry_failed=retry_failed, dry_run=dry_run,
                    restart_changed=restart_changed, retry=retry, retry_damaged=retry_damaged,
                    slurm_partition=slurm_partition, slurm_time=slurm_time, slurm_mem=slurm_mem,
                    slurm_cpus_per_task=slurm_cpus_per_task, on_result=lambda root, r: (tqdm.write(_line(r)), sys.stdout.flush()))
    table = res.table()
    if dry_run:
        counts = table["state"].value_counts()
        click.echo(_table(table.drop(columns=["reason", "val_elbo"])))
        click.echo(f"{len(table)} runs in {res.root}: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in
                                                               ("done", "partial", "running", "failed", "damaged", "new")))
        _say_damaged(table)
        return
    if not res.results:
        click.echo(f"nothing to do: all {len(table)} runs in {res.root} are done"
                   + (" or failed (--retry-failed reruns those)" if (table["state"] == "failed").any() else "")
                   + (" or damaged (--retry-damaged redoes those)" if (table["state"] == "damaged").any() else "")
                   + (" or running elsewhere" if (table["state"] == "running").any() else ""))
    if len(table) > 1:
        click.echo(_table(table if table["reason"].astype(bool).any() else table.drop(columns=["reason"])))
    not_done = res.not_done
    if not_done:
        states = table["state"].iloc[not_done].value_counts()
        what = ", ".join(f"{n} {s}" for s, n in states.items())
        hint = "; --retry-failed reruns failed ones" if "failed" in states else ""
        hint += "; --retry-damaged (or --retry RUN) redoes damaged ones" if "damaged" in states else ""
        hint += "; run the same command again to finish partial ones" if "partial" in states else ""
        click.echo(f"vaebench: {len(not_done)} of {len(table)} runs are not done ({what}); see each run's "
                   f"status.json{hint}", err=True)
        sys.exit(1)


def _say_damaged(damaged) -> int:
    """One line on stderr per damaged run (its folder, the file and the fix); returns how many.
    ``damaged``: {run: reason}, or a table with state and reason columns."""
    if not isinstance(damaged, dict):
        bad = damaged[damaged["state"] == "damaged"]
        damaged = dict(zip(bad["run"], bad["reason"]))
    for run, why in damaged.items():
        click.echo(f"vaebench: damaged: {run}: {why}", err=True)
    return len(damaged)


def _folder(option: str, path: str | None) -> None:
    """One line, not click's three, when a folder option names a file."""
    from pathlib import Path

    if path is not None and Path(path).is_symlink() and not Path(path).exists():
        raise VaebenchError(f"{option} {path} is a broken symbolic link (to {Path(path).readlink()}); "
                            f"create its target, remove the link, or choose another {option}")
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise VaebenchError(f"{option} {path} is a file, not a folder; choose another {option} or move the file")


def _line(result) -> str:
    from . import runs

    val = (result.final or {}).get("val")
    tail = f"  final val ELBO {val['elbo']:.2f} (rec {val['rec']:.2f}, KL {val['kl']:.2f})" if val else ""
    entries = runs.read_evals(result.path) if result.state in ("done", "skipped") else []
    test = runs.find_eval(entries, "test", _run_k(result.path))
    if test and "iw_ll" in test:
        tail += (f"  test IW log p(x) (k={test['k']:,}) {test['iw_ll']:.2f} ± {test['iw_ll_se']:.2f}, "
                 f"test ELBO {test['elbo']:.2f} ± {test['elbo_se']:.2f}")
    best = runs.find_eval(entries, "test", _run_k(result.path), "best")
    if best and "iw_ll" in best:
        tail += f"  best (step {best.get('step', '?')}): test IW log p(x) {best['iw_ll']:.2f} ± {best['iw_ll_se']:.2f}"
    why = f"  {result.reason}" if result.state in ("failed", "busy") and result.reason else ""
    return f"{result.state:8s} {result.path}  step {result.step}{tail}{why}"


def _run_k(run_dir) -> int | None:
    """The k of the run's own end-of-run evaluation (eval.k), so its line shows that entry."""
    from . import runs

    try:
        return int(runs.read_config(run_dir)["eval"]["k"])
    except (VaebenchError, KeyError, TypeError, ValueError):
        return None


LS_FORMATS = ("text", "csv", "json", "markdown")


@cli.command(name="ls")
@click.argument("results", default="results", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(LS_FORMATS), default="text", show_default=True,
              help="text and markdown: values as written, metrics to 2 decimals; csv and json: every value "
                   "in full (json: one object per run).")
@click.option("--sort", "sort", multiple=True, metavar="COLUMN",
              help="Sort by this column (-COLUMN: descending; e.g. --sort=-val_elbo); repeatable, "
                   "the first leads. Default: study order.")
@_trust
def ls_command(results: str, fmt: str, sort: tuple[str, ...], trust: bool, imports: tuple[str, ...]) -> None:
    """List the runs under RESULTS: varied values, state, code (a hash of the plugins' code: runs of
    different code differ), steps, final validation ELBO.

    \b
    Exit status: 0 listed; 1 listed, but some runs are damaged (one line each on stderr names the
    run, the file and the fix); 2 a mistake (no such folder)."""
    from .api import import_plugins, ls

    import_plugins(imports)
    table = ls(results, trust=trust, sort=sort)
    if fmt == "csv":
        click.echo(table.to_csv(index=False), nl=False)
    elif fmt == "json":
        import json

        # pandas writes every value in full (NaN as null); json.dumps leaves a path's "/" as it is
        click.echo(json.dumps(json.loads(table.to_json(orient="records", double_precision=15)), indent=1))
    elif fmt == "markdown":
        from .report.tables import render

        click.echo(render(_formatted(table), "markdown"), nl=False)
    else:
        click.echo(_table(table))
    if _say_damaged(table.attrs["damaged"]):
        sys.exit(1)


@cli.command(name="report")
@click.argument("results", default="results", type=click.Path())
@click.option("--out", default=None, type=click.Path(),
              help="Report folder (default: RESULTS/report, or beside RESULTS when it is one run folder).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Processes drawing figures (default: one per core).")
@click.option("--force", is_flag=True, help="Redraw every figure, even those whose run did not change.")
@click.option("--formats", default="png,svg", show_default=True,
              help="Each run's figure files: png and any of svg, pdf (study figures are always png, svg, pdf).")
@_trust
def report_command(results: str, out: str | None, jobs: int | None, force: bool, formats: str,
                   trust: bool, imports: tuple[str, ...]) -> None:
    """Draw every run's figures, every study's comparisons and a summary table, with an index.html.

    \b
    Exit status: 0 drawn; 1 drawn, but some runs are damaged (one line each names the run, the file
    and the fix; the index lists them and draws what their readable files allow); 2 a mistake."""
    from .api import report

    _folder("--out", out)
    rep = report(results, out=out, force=force, jobs=jobs, imports=imports, formats=formats, trust=trust)
    click.echo(_table(rep.summary.drop(columns=[c for c in rep.summary if c.endswith("_ci95")])))
    missing = f"; {len(rep.missing)} runs have figures missing (see the index)" if rep.missing else ""
    click.echo(f"drew {len(rep.drawn)}, reused {len(rep.reused)} unchanged{missing}")
    click.echo(f"report: {rep.index}")
    if _say_damaged(rep.damaged):
        sys.exit(1)


@cli.command(name="sample")
@click.argument("run", metavar="RUN", type=click.Path(file_okay=False))
@click.option("-n", "n", type=click.IntRange(min=1), default=64, show_default=True, help="Samples to draw.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file (.png, .svg or .pdf).")
@_device
@_changed
@_trust
def sample_command(run: str, n: int, out: str, device: str, allow_changed_code: bool, trust: bool,
                   imports: tuple[str, ...]) -> None:
    """The decoder's means of p(x|z) for z ~ N(0, I) from RUN's checkpoint (for any likelihood), as one
    image grid."""
    from .api import sample

    click.echo(f"wrote {sample(run, out, n, imports, trust, allow_changed_code, device=device)}")


@cli.command(name="reconstruct")
@click.argument("run", metavar="RUN", type=click.Path(file_okay=False))
@_split("val", "The images: test (the test set), val or train (the run's own splits).")
@click.option("-n", "n", type=click.IntRange(min=1), default=20, show_default=True, help="Images (every digit in turn).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file (.png, .svg or .pdf).")
@_device
@_changed
@_trust
def reconstruct_command(run: str, split: str, n: int, out: str, device: str, allow_changed_code: bool, trust: bool,
                        imports: tuple[str, ...]) -> None:
    """Images of RUN's split beside the decoder's means at z = E_q[z], from its checkpoint."""
    from .api import reconstruct

    click.echo(f"wrote {reconstruct(run, out, split, n, imports, trust, allow_changed_code, device=device)}")


def _table_options(f):
    """--k, --reduce and --format: which numbers a table holds and how it is written."""
    f = click.option("--format", "fmt", type=click.Choice(["text", "markdown", "latex", "csv", "html"]),
                     default="text", show_default=True,
                     help="text for a terminal, markdown, latex (booktabs) or html for a paper or page, csv "
                          "for numbers each in its own column.")(f)
    f = click.option("--reduce", type=click.Choice(["last", "best"]), default="last", show_default=True,
                     help="Each run's last values, or those at its best validation ELBO (train.keep_best).")(f)
    return click.option("--k", "k", type=click.IntRange(min=1), default=None,
                        help="The importance samples of the evaluation numbers [default: the largest k every "
                             "run has].")(f)


@cli.command(name="compare")
@click.argument("path", metavar="RESULTS", default="results", type=click.Path(file_okay=False))
@click.option("--metric", default=None,
              help="A column of vaebench.load(final=True) [default: test_iw_ll where runs have it, else val_elbo].")
@click.option("--reference", default=None, help="The value or variant to compare with [default: the baseline "
                                                 "variant, else the study's own value, else the first listed].")
@click.option("--per-cell", is_flag=True, help="Add a row per cell of the other axes (crossed grids).")
@_table_options
def compare_command(path: str, metric: str | None, reference: str | None, per_cell: bool, k: int | None,
                    reduce: str, fmt: str) -> None:
    """Each axis value (each variant) against the reference, paired by seed within each cell of the
    other axes: mean difference, its 95% Student-t interval over seeds, the share of pairs better, and
    a verdict at Holm-adjusted p < 0.05 across the table. Exit status 1: some runs are damaged (one
    line each) and left out."""
    from .api import compare, compare_text
    from .report.compare import default_metric
    from .report.studies import load_final

    final = load_final(path, k, reduce)
    table = compare(final, metric or default_metric(final), reference, k=k, reduce=reduce, per_cell=per_cell)
    click.echo(compare_text(table, fmt), nl=False)
    if _say_damaged(final):  # its seeds are not among the pairs: say so, not silently fewer
        sys.exit(1)


@cli.command(name="summary")
@click.argument("path", metavar="RESULTS", default="results", type=click.Path(file_okay=False))
@_table_options
def summary_command(path: str, k: int | None, reduce: str, fmt: str) -> None:
    """One row per config: seeds done, failed, unfinished, and the mean [95% CI] of the final
    validation terms, the train-validation gap and the test numbers (the report's summary table)."""
    from .api import summary, summary_text

    click.echo(summary_text(summary(path, k=k, reduce=reduce), fmt), nl=False)


@cli.command(name="eval")
@click.argument("path", metavar="RUN_OR_STUDY", type=click.Path())
@click.option("--k", "k", type=int, default=5000, show_default=True, help="Importance samples per image.")
@_split("test", "test (all 10,000 test images), val or train (the run's own splits).")
@_device
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Runs evaluated at once, each in its own process with one torch thread (default 1).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Images per batch (default: by k).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads (default 1: a second one buys little and loses much on a shared machine).")
@click.option("--checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="The model evaluated: the last checkpoint, or best.pt (the best validation ELBO, "
                   "kept with train.keep_best: true).")
@click.option("--force", is_flag=True, help="Evaluate again runs that already have this split, k and checkpoint.")
@_changed
@_trust
def eval_command(path: str, k: int, split: str, device: str, jobs: int | None, batch: int | None, threads: int | None,
                 checkpoint: str, force: bool, allow_changed_code: bool, trust: bool, imports: tuple[str, ...]) -> None:
    """Importance-weighted log p(x), ELBO, active units and KL per dimension of every done run under
    RUN_OR_STUDY, into each run's eval.json (vaebench ls shows them).

    \b
    Exit status: 0 every run evaluated or skipped as done before; 1 some runs were skipped as
    damaged (one line each names the run, the file and the fix); 2 a mistake."""
    from .api import evaluate

    def line(row) -> None:
        if row["state"] == "damaged":
            click.echo(f"vaebench: damaged: {row['run']}: {row['reason']}", err=True)
        elif "iw_ll" not in row:
            click.echo(f"{row['state']:9s} {row['run']}")
        else:
            best = f" (best.pt, step {row.get('step', '?')})" if checkpoint == "best" else ""
            click.echo(f"{row['state']:9s} {row['run']}{best}  {split} IW log p(x) (k={row['k']:,}) {row['iw_ll']:.2f} "
                       f"± {row['iw_ll_se']:.2f}, ELBO {row['elbo']:.2f} ± {row['elbo_se']:.2f}, "
                       f"{row['active_units']} active units, {row['seconds']:.1f}s")

    rows = evaluate(path, k=k, split=split, device=device, batch=batch, force=force, on_result=line,
                    threads=threads, progress=None, imports=imports, checkpoint=checkpoint, trust=trust,
                    allow_changed_code=allow_changed_code, jobs=jobs)
    if (rows["state"] == "damaged").any():
        click.echo(f"vaebench: {int((rows['state'] == 'damaged').sum())} of {len(rows)} runs were skipped as "
                   f"damaged (named above)", err=True)
        sys.exit(1)


@cli.group(name="export", cls=_Group)
def export_group() -> None:
    """Copy a results folder's runs into an experiment tracker (MLflow, TensorBoard); again: update."""


def _export_line(label: str, action: str, where: str) -> None:
    click.echo(f"{action:9s} {label}  -> {where}")


def _export_done(summary) -> None:
    click.echo(summary.line())
    if _say_damaged(summary.damaged):
        sys.exit(1)


@export_group.command(name="mlflow",
                      short_help="Every run as an MLflow run (again: updated, not duplicated).")
@click.argument("results", default="results", type=click.Path())
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow's store, e.g. sqlite:///mlflow.db or http://host:5000 [default: MLFLOW_TRACKING_URI, "
                   "else MLflow's default].")
@click.option("--experiment", default=None, metavar="NAME", help="The MLflow experiment [default: vaebench].")
def export_mlflow_command(results: str, tracking_uri: str | None, experiment: str | None) -> None:
    """Every run under RESULTS as an MLflow run: config as params, logged terms as metric series,
    final and evaluation numbers as summary metrics, the report's figures as artifacts. Again:
    each run is updated (found by its vaebench.run_id tag), nothing duplicated.

    \b
    Exit status: 0 exported; 1 exported, but damaged runs were left out (one line each); 2 a mistake."""
    from .api import export_mlflow

    _export_done(export_mlflow(results, tracking_uri, experiment,
                               on_run=lambda label, action, run_id: _export_line(label, action, f"run {run_id}")))


@export_group.command(name="tensorboard",
                      short_help="Every run as TensorBoard event files (again: rewritten, not duplicated).")
@click.argument("results", default="results", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Folder of event files, one subfolder per run "
                                                              "(tensorboard --logdir OUT).")
def export_tensorboard_command(results: str, out: str) -> None:
    """Every run under RESULTS as TensorBoard event files in OUT/<run>: logged terms as scalars,
    config and summary numbers as HParams, the report's figures as images. Again: each run's folder
    is rewritten and swapped in, nothing duplicated.

    \b
    Exit status: 0 exported; 1 exported, but damaged runs were left out (one line each); 2 a mistake."""
    from .api import export_tensorboard

    _folder("--out", out)
    _export_done(export_tensorboard(results, out, on_run=_export_line))


@cli.command(name="config")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set a config value, as with vaebench run. Repeatable.")
@click.option("--components", is_flag=True,
              help="List the registered names of every kind of component (plugins included) instead.")
@click.option("--reference", is_flag=True,
              help="Print the config reference instead (Markdown: every key, its default, description and "
                   "facts; --import adds a plugin's keys).")
@_imports
def config_command(config: str | None, overrides: tuple[str, ...], components: bool, reference: bool,
                   imports: tuple[str, ...]) -> None:
    """Print CONFIG resolved (every default filled in), each key with its description."""
    from .api import components as list_components
    from .api import config_reference, describe_config, study

    if reference:
        if config:
            study(config, list(overrides), imports)  # its plugins' keys too
        click.echo(config_reference(imports), nl=False)
        return
    if components:
        if config:
            study(config, list(overrides), imports)  # its plugins' components too
        df = list_components(imports)
        for kind, rows in df.groupby("kind", sort=False):
            names = [n + (f" ({m})" if m else "") + (f" {{{h}}}" if h else "")
                     for n, m, h in zip(rows["name"], rows["module"], rows["hyperparameters"])]
            click.echo(f"{kind} [{rows['keys'].iloc[0]}]: {', '.join(names)}")
        return
    if not config:
        raise click.UsageError("give a CONFIG to resolve, or --components")
    click.echo(describe_config(config, list(overrides), imports), nl=False)


def _table(df) -> str:
    """Config values as written, metrics (float columns named like val_elbo) to 2 decimals."""
    return _formatted(df).to_string(index=False)


def _formatted(df):
    """``df`` as strings: config values as written, metrics (float columns named like val_elbo) to 2 decimals."""
    import pandas as pd

    from .results import format_value

    df = df.copy()
    for col in df.columns:
        if "_" in col and "." not in col and df[col].dtype.kind == "f":
            df[col] = df[col].map(lambda v: "-" if v != v else f"{v:.2f}")
        else:
            df[col] = df[col].astype(object).map(  # None, NaN, and pd.NA of a nullable column such as test_k
                lambda v: "-" if v is None or v is pd.NA or (isinstance(v, float) and v != v) else format_value(v))
    return df


def main() -> None:
    # The imports (torch, pandas, pydantic's schemas) are done and live for the whole command: keep
    # the cyclic garbage collector from walking them again (a full pass costs ~0.1 s here).
    import gc

    gc.freeze()
    raise_on_sigterm()  # a scheduler's SIGTERM is a Ctrl-C: every run saves its status, exit 143
    try:
        cli(prog_name="vaebench")
    except BrokenPipeError:  # raised outside a command (help text, click's own output)
        _quiet_stdout()
        sys.exit(EXIT_PIPE)
    except Exception:  # a bug: its traceback, and a code of its own (1 means "some runs are not done")
        import traceback

        traceback.print_exc()
        click.echo("vaebench: internal error (a bug): please report it, with the traceback above", err=True)
        sys.exit(EXIT_BUG)


if __name__ == "__main__":
    main()
