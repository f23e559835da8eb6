"""``vaebench report RESULTS``: every figure of every run and study, an index page, a summary table.

The report reads run folders (metrics, checkpoint, config) and the dataset a run's config names;
it never trains and never writes inside a run folder. Each run's figures are redrawn only when
one of the run's files changed since the last report (a manifest of file sizes and times).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import yaml
from pyarrow import ArrowException

from .. import __version__, plugins, runs
from ..errors import VaebenchError
from ..results import axis_heads, axis_label, load
from ..signals import spawning_workers, stop_pool
from . import figures as F
from .compare import compare, compare_text, default_metric
from .tables import table_html
from .studies import StudyView, axis_slice, study_views, summary, summary_markdown

RUN_FIGURES = {
    "terms": "ELBO terms against weight updates",
    "recon_train": "reconstructions of training images",
    "recon_val": "reconstructions of validation images",
    "samples": "samples from z ~ the prior",
    "train_val": "reconstruction log-likelihood, train vs validation",
    "latent": "latent means of the test images, coloured by digit",
    "traversals": "latent traversals: each dimension swept from -3 to 3",
}
RUN_FORMATS = ("png", "svg")  # each run's figures; PDF on request (--formats): a third more drawing time per run
STUDY_FORMATS = F.FORMATS  # a study's few figures, the ones a paper takes, always in PDF too


def check_formats(formats) -> tuple[str, ...]:
    """The run figures' formats, given as a sequence or 'png,svg,pdf'; PNG always (the index shows it)."""
    names = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    wrong = [f for f in names if f not in F.FORMATS]
    if wrong or "png" not in names:
        raise VaebenchError(f"--formats {','.join(names) or '(none)'}: give png and any of svg, pdf, "
                            "comma-separated (e.g. --formats png,svg,pdf)")
    return tuple(dict.fromkeys(names))
MANIFEST = ".manifest.json"
N_IMAGES = 20  # reconstructed images per split: two of each digit
N_SAMPLES = 100
SAMPLE_SEED = 0  # the same z in every report, so samples change only with the model
TRAVERSAL_VALUES = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
_FORMAT_VERSION = 4  # bump to redraw every figure after a change to how they are drawn


@dataclass
class Report:
    out: Path
    index: Path
    summary: pd.DataFrame
    drawn: list[str] = field(default_factory=list)  # runs and studies whose figures were (re)drawn
    reused: list[str] = field(default_factory=list)  # unchanged since the last report
    missing: dict[str, dict[str, str]] = field(default_factory=dict)  # run -> figure -> why it is missing
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase: read, draw, write
    damaged: dict[str, str] = field(default_factory=dict)  # run -> the damaged file and the fix (run_state)


def default_out(root: Path) -> Path:
    """RESULTS/report, or beside a single run folder (the report never writes inside a run)."""
    return root.parent / f"{root.name}-report" if runs.is_run_dir(root) else root / runs.REPORT_FOLDER


def run_path(root: Path, label: str) -> Path:
    """The folder of the run ``label`` (as in ``vaebench.load``'s run column) under ``root``."""
    return root if runs.is_run_dir(root) else root / label


def fingerprint(run_dir: Path) -> str:
    """Changes whenever a file the run's figures are drawn from changes."""
    parts = [__version__, str(_FORMAT_VERSION)]
    files = [runs.CONFIG, runs.STATUS, runs.FINAL, runs.EVAL, runs.METRICS, runs.CHECKPOINT]
    for path in [run_dir / f for f in files] + runs.part_files(run_dir):
        try:
            st = path.stat()
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{path.name}:-")
    items = list((runs.read_code(run_dir) or {}).get("plugins") or {})
    if items:  # a plugin changed, or trusted (--import, --trust) now and not before: the model figures change
        parts.append(f"code:{plugins.fingerprint(items)}:{plugins.missing(items)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _splits(data: dict):
    """A run's splits (its config's data section), loaded once per process for runs that share it."""
    return _cached_splits(json.dumps(data, sort_keys=True))


@lru_cache(maxsize=8)
def _cached_splits(data_json: str):
    from ..data import load_splits

    return load_splits(json.loads(data_json))


def pick_images(labels: np.ndarray, n: int = N_IMAGES) -> np.ndarray:
    """Indices of the first images of each digit in turn (0, 1, ..., 9, 0, 1, ...): every digit shows."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))
    return order[:n]


def _images(run_dir: Path, cfg: dict) -> tuple[dict, tuple[int, int], int]:
    """Inputs and reconstructions for train and validation, samples, image shape, checkpoint step."""
    import torch

    from ..data import BINARIZERS

    model = runs.load_model(run_dir)
    d = cfg["data"]
    splits = _splits(d)
    binarizer = BINARIZERS.get(d["binarize"])()
    out = {}
    with torch.no_grad():
        for split in ("train", "val"):
            grey = splits[split].subset(pick_images(splits[split].labels))
            gen = torch.Generator().manual_seed(SAMPLE_SEED)  # dynamic binarization: the same draw each time
            x = binarizer.sample(binarizer.prepare(grey, "cpu"), gen).float()
            out[split] = (x.numpy(), model.reconstruct(x).numpy())
        out["samples"] = model.sample(N_SAMPLES, torch.Generator().manual_seed(SAMPLE_SEED)).numpy()
        test = splits["test"]
        x = binarizer.sample(binarizer.prepare(test, "cpu"), torch.Generator().manual_seed(SAMPLE_SEED)).float()
        mu = model.encode(x)[0]
        out["latent"] = (mu.numpy(), np.asarray(test.labels))
        out["traversals"] = traversals(model, mu[0]).numpy()
    return out, tuple(splits["train"].shape), int(getattr(model, "trained_steps", 0))


def traversals(model, mu, values=TRAVERSAL_VALUES):
    """p(x|z)'s means with z = ``mu`` except z_u = each of ``values``: (latent, len(values), pixels)."""
    import torch

    values = torch.tensor(values, dtype=mu.dtype)
    lat, n = len(mu), len(values)
    z = mu.repeat(lat * n, 1).view(lat, n, lat)
    idx = torch.arange(lat)
    z[idx, :, idx] = values
    return model.likelihood.mean(model.decode(z.view(lat * n, lat))).view(lat, n, -1)


def draw_run(run_dir: str | Path, fig_dir: str | Path, title: str, note: str = "",
             formats: tuple[str, ...] = RUN_FORMATS) -> dict[str, str]:
    """Draw the seed's figures for one run (titled ``title``, with ``note`` in small print); return
    {figure: why it is missing} for those it can't."""
    import torch

    torch.set_num_threads(1)
    run_dir, fig_dir = Path(run_dir), Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    missing: dict[str, str] = {}
    bad_config = runs.config_problem(run_dir)  # a damaged run draws what its readable files allow
    if bad_config:
        missing = {name: bad_config for name in RUN_FIGURES}
        cfg, m, bad_ckpt = {}, None, bad_config
    else:
        cfg = runs.read_config(run_dir)
        try:
            m = runs.read_metrics(run_dir)
        except VaebenchError:
            m, missing["terms"], missing["train_val"] = None, *[f"{runs.METRICS} is unreadable"] * 2
        ckpt = run_dir / runs.CHECKPOINT
        bad_ckpt = "no checkpoint yet" if not ckpt.is_file() else runs.checkpoint_problem(ckpt)
    window = int(cfg.get("train", {}).get("eval_every", 100))
    def save(fig, name):
        F.save(F.footnote(fig, note) if note else fig, fig_dir / name, formats)

    if m is not None and len(m):
        save(F.plot_terms(m, window, title), "terms")
        save(F.plot_train_val(m, "rec", window, title), "train_val")
    elif m is not None:
        missing["terms"] = missing["train_val"] = "no metrics logged yet"
    images = None
    if bad_ckpt is None:
        try:
            images, shape, step = _images(run_dir, cfg)
        except VaebenchError as e:  # its plugin not trusted, or changed since training: the run is marked so
            for name in ("recon_train", "recon_val", "samples", "latent", "traversals"):
                missing[name] = str(e)
    if images is not None:
        at = f"checkpoint at update {step:,}"
        for split, name in (("train", "training"), ("val", "validation")):
            x, recon = images[split]
            save(F.plot_reconstructions(x, recon, shape, title, subtitle=f"{at}: {name} images"), f"recon_{split}")
        save(F.plot_samples(images["samples"], shape, title, subtitle=at, prior=prior_text(cfg)), "samples")
        save(F.plot_latent(*images["latent"], title, subtitle=at), "latent")
        save(F.plot_traversals(images["traversals"], shape, TRAVERSAL_VALUES, title, subtitle=at), "traversals")
    elif bad_ckpt is not None:
        for name in ("recon_train", "recon_val", "samples", "latent", "traversals"):
            missing[name] = bad_ckpt
    for name in missing:  # a figure from an earlier report that can no longer be drawn is stale
        for fmt in F.FORMATS:
            (fig_dir / f"{name}.{fmt}").unlink(missing_ok=True)
    return missing


def _out_file(out: str | Path) -> tuple[Path, str]:
    path = Path(out)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise VaebenchError(f"can't write {path}: give a .png, .svg or .pdf file name")
    return path.with_suffix(""), fmt


def prior_text(cfg: dict) -> str:
    """How a figure names the run's prior: N(0, I), else "the prior (mog)"."""
    prior = cfg.get("model", {}).get("prior", "standard_normal")
    name = prior.get("name") if isinstance(prior, dict) else prior
    return "N(0, I)" if name in (None, "standard_normal") else f"the prior ({name})"


def _title_of(run_dir: Path, cfg: dict) -> str:
    """study · variant · seed, for a run outside a report (its variant from the study's grid.yaml)."""
    from ..results import study_order

    variant = study_order([run_dir])[1][run_dir].get("variant")
    return " · ".join([run_dir.parent.name or cfg.get("name", "run"), *([str(variant)] if variant else []),
                       f"seed {cfg.get('seed', 0)}"])


def _model_and_data(run: str | Path, allow_changed_code: bool = False, device: str = "cpu"):
    """A run's folder, its model on ``device`` ("auto", "cpu", "cuda"), and its config."""
    from ..devices import resolve_device

    run_dir = Path(run)
    if not runs.is_run_dir(run_dir):
        raise VaebenchError(f"{run_dir} is not a run folder (no {runs.CONFIG}); give one run, e.g. results/baseline/<id>")
    dev = str(resolve_device(device))
    return run_dir, runs.load_model(run_dir, device=dev, allow_changed_code=allow_changed_code), runs.read_config(run_dir)


def draw_samples(run: str | Path, out: str | Path, n: int = 64, seed: int = SAMPLE_SEED,
                 allow_changed_code: bool = False, device: str = "cpu") -> Path:
    """``vaebench sample``: the decoder's means of p(x|z) for ``n`` draws z ~ N(0, I) from a run's
    checkpoint; z is drawn on ``device``'s generator (the same draws on every CPU)."""
    import torch

    run_dir, model, cfg = _model_and_data(run, allow_changed_code, device)
    stem, fmt = _out_file(out)
    d = cfg["data"]
    shape = tuple(_splits(d)["train"].shape)
    dev = next(model.parameters()).device
    images = model.sample(n, torch.Generator(dev).manual_seed(seed)).cpu().numpy()
    cols = max(1, int(np.ceil(np.sqrt(n))))
    sub = f"checkpoint at update {getattr(model, 'trained_steps', 0):,}: {n} samples"
    F.save(F.footnote(F.plot_samples(images, shape, _title_of(run_dir, cfg), cols=cols, subtitle=sub,
                                     prior=prior_text(cfg)),
                      f"run {run_dir.name}"), stem, (fmt,))
    return stem.with_suffix("." + fmt)


def draw_reconstructions(run: str | Path, out: str | Path, split: str = "val", n: int = N_IMAGES,
                         allow_changed_code: bool = False, device: str = "cpu") -> Path:
    """``vaebench reconstruct``: ``n`` images of a run's ``split`` (every digit in turn) beside the
    decoder's means at z = E_q[z], from its checkpoint."""
    import torch

    from ..data import BINARIZERS

    if split not in ("train", "val", "test"):
        raise VaebenchError(f"unknown split {split!r}; use one of train, val, test")
    run_dir, model, cfg = _model_and_data(run, allow_changed_code, device)
    stem, fmt = _out_file(out)
    d = cfg["data"]
    splits = _splits(d)
    binarizer = BINARIZERS.get(d["binarize"])()
    grey = splits[split].subset(pick_images(splits[split].labels, n))
    x = binarizer.sample(binarizer.prepare(grey, "cpu"), torch.Generator().manual_seed(SAMPLE_SEED)).float()
    with torch.no_grad():  # binarized on the CPU: the same images on every device
        recon = model.reconstruct(x.to(next(model.parameters()).device)).cpu().numpy()
    sub = f"checkpoint at update {getattr(model, 'trained_steps', 0):,}: {split} images"
    fig = F.plot_reconstructions(x.numpy(), recon, tuple(splits[split].shape), _title_of(run_dir, cfg), subtitle=sub)
    F.save(F.footnote(fig, f"run {run_dir.name}"), stem, (fmt,))
    return stem.with_suffix("." + fmt)


def _study_curves(view: StudyView, root: Path) -> pd.DataFrame:
    """Validation curves (long form) of the study's runs, with their config columns."""
    frames = []
    for _, r in view.final.iterrows():
        try:
            m = runs.read_metrics(run_path(root, r["run"]))
        except VaebenchError:  # an unreadable metrics file: the run's own page says so
            continue
        m = m[m["split"] == "val"].melt(id_vars=["step", "split"], value_vars=list(runs.TERMS),
                                        var_name="term", value_name="value")
        m = m.assign(run=r["run"])
        for k in (k for a in view.axes for k in a):
            m[k] = pd.Series([r[k]] * len(m), index=m.index, dtype=object)  # a width (32,) is one value
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


CACHE = ".cache"  # the report's folder of tables kept between builds (study_comparison)


def study_comparison(view: StudyView, cache: Path | None = None) -> pd.DataFrame | None:
    """``vaebench.compare`` of one study on its test IW log p(x), else its final validation ELBO.
    With ``cache`` (a folder of the report), the table is kept there as parquet under a hash of the
    study's final numbers and read back while they are unchanged: a rerun then needs no bootstrap
    (nor scipy.stats, a second of imports)."""
    metric = default_metric(view.final)
    if not view.axes or metric not in view.final or view.final[metric].notna().sum() == 0:
        return None
    if cache is None:
        return compare(view.final, metric)
    key = hashlib.sha256(f"{__version__}\n{metric}\n{view.final.to_csv()}".encode()).hexdigest()[:20]
    path = cache / f"compare-{_slug(view.name)}-{key}.parquet"
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, ArrowException):
        pass
    table = compare(view.final, metric)
    for old in cache.glob(f"compare-{_slug(view.name)}-*.parquet"):
        old.unlink(missing_ok=True)
    runs.atomic_write(path, table.to_parquet())
    return table


def draw_study(view: StudyView, root: Path, fig_dir: Path, cache: Path | None = None) -> list[tuple[str, str]]:
    """The paired differences to the reference (a forest plot), then per axis: final validation terms
    per value (seeds and 95% CI), and learning curves with bands."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    curves = _study_curves(view, root)
    drawn = []
    table = study_comparison(view, cache)
    if table is not None and (table["verdict"] != "reference").any():
        metric = table["metric"].iloc[0]
        F.save(F.plot_forest(with_k(table, view.final), title=view.name), fig_dir / "compare", STUDY_FORMATS)
        drawn.append(("compare", f"{F.metric_label(metric)}: difference to the reference paired by seed, with 95% "
                                 "intervals; one panel per axis; zero dashed"))
    for axis in view.axes:
        keep = axis_slice(view.final, axis, view.axes, view.refs)
        final = view.final[keep]
        label = axis_label(axis)
        others = [f"{axis_label(a)} = {view.refs[a]}" for a in view.axes if a != axis]
        title = f"{view.name}: {label}"
        sub = f"other axes at {', '.join(others)}" if others else ""
        stem = _slug(" & ".join(axis_heads(axis)))
        if len(stem) > 100:  # a file name has at most 255 bytes
            stem = stem[:80] + "-" + hashlib.sha1(" & ".join(axis).encode()).hexdigest()[:8]
        done = final[final["state"] == "done"]
        if len(done) and "val_elbo" in done:
            F.save(F.plot_final_by_value(done, axis, title=title, subtitle=sub), fig_dir / f"final-{stem}", STUDY_FORMATS)
            drawn.append((f"final-{stem}", f"final validation terms per value of {label}"))
        c = curves[curves["run"].isin(final["run"])] if len(curves) else curves
        if len(c):
            F.save(F.plot_curves_by_value(c, axis, title=title, subtitle=sub), fig_dir / f"curves-{stem}", STUDY_FORMATS)
            drawn.append((f"curves-{stem}", f"validation learning curves per value of {label} (mean, 95% CI band)"))
    return drawn


def with_k(table: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """The compare table with the k of its numbers: its own ``k`` where it has one, else the k the
    study's runs were evaluated with (``{split}_k`` of load's frame), so a figure can say it."""
    split = str(table["metric"].iloc[0]).partition("_")[0]
    if "k" in table or "k" in table.attrs or f"{split}_k" not in final:
        return table
    ks = sorted({int(k) for k in final[f"{split}_k"].dropna()})
    table = table.copy()
    if ks:
        table.attrs["k"] = ks[0] if len(ks) == 1 else ks
    return table


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def build_report(path: str | Path = "results", out: str | Path | None = None, force: bool = False,
                 jobs: int | None = None, formats=RUN_FORMATS) -> Report:
    """Write the report of every run under ``path`` to ``out`` (default RESULTS/report); see module doc.
    ``formats``: those of each run's figures (PNG and SVG by default; study figures are PNG, SVG and PDF)."""
    formats = check_formats(formats)
    start = time.perf_counter()
    root = Path(path)
    final = load(root, final=True)  # raises one clear line when there are no runs
    out = Path(out) if out is not None else default_out(root)
    if any(runs.is_run_dir(p) for p in (out, *out.resolve().parents)):
        raise VaebenchError(f"the report can't be written inside a run folder ({out}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    manifest = runs.read_json(out / MANIFEST) or {}
    same = manifest.get("version") == _FORMAT_VERSION and tuple(manifest.get("formats", RUN_FORMATS)) == formats
    old = manifest.get("runs", {}) if same else {}
    report = Report(out, out / "index.html", summary(final))
    bad = final["state"] == "damaged"
    report.damaged = dict(zip(final["run"][bad].astype(str), final["reason"][bad]))

    run_dirs = {label: run_path(root, label) for label in final["run"]}
    prints = {label: fingerprint(d) for label, d in run_dirs.items()}
    todo = [label for label in final["run"]
            if force or old.get(label, {}).get("fp") != prints[label]
            or not all((out / "runs" / label / f"{name}.png").is_file() or name in old[label].get("missing", {})
                       for name in RUN_FIGURES)]
    views = {v.name: v for v in study_views(final)}
    titles = run_titles(views)
    new_runs = {label: old[label] for label in final["run"] if label in old and label not in todo}
    report.reused += [label for label in final["run"] if label not in todo]

    study_figs: dict[str, list] = {}
    old_studies = manifest.get("studies", {}) if old else {}
    new_studies, redraw = {}, []
    for name, view in views.items():
        fp = hashlib.sha256("|".join(prints[r] for r in view.final["run"]).encode()).hexdigest()[:16]
        prev = old_studies.get(name, {})
        new_studies[name] = {"fp": fp}
        if view.axes and (force or prev.get("fp") != fp
                          or not all((out / "studies" / _slug(name) / f"{s}.png").is_file() for s, _ in prev.get("figures", []))):
            redraw.append(name)
        else:
            study_figs[name] = [tuple(f) for f in prev.get("figures", [])] if view.axes else []

    report.seconds["read"] = time.perf_counter() - start
    drawn_runs, drawn_studies = _draw(
        [(run_dirs[t], out / "runs" / t, *titles[t], formats) for t in todo],
        [(views[name], root, out / "studies" / _slug(name), out / CACHE) for name in redraw], jobs)
    for label, missing in zip(todo, drawn_runs):
        new_runs[label] = {"fp": prints[label], "missing": missing}
    report.drawn += todo + [f"study {name}" for name in redraw]
    report.missing = {label: v["missing"] for label, v in new_runs.items() if v["missing"]}
    study_figs.update(zip(redraw, drawn_studies))
    study_figs = {name: study_figs[name] for name in views}  # in the studies' order
    for name, figs in study_figs.items():
        new_studies[name]["figures"] = [list(f) for f in figs]
    report.seconds["draw"] = time.perf_counter() - start - report.seconds["read"]

    report.summary.to_csv(out / "summary.csv.tmp", index=False)
    os.replace(out / "summary.csv.tmp", out / "summary.csv")
    runs.atomic_write(out / "summary.md", summary_markdown(report.summary))
    runs.atomic_write(report.index, _index_html(root, final, views, study_figs, new_runs, report.summary, titles,
                                                out / CACHE, formats))
    runs.write_json(out / MANIFEST, {"version": _FORMAT_VERSION, "formats": list(formats), "runs": new_runs,
                                     "studies": new_studies})
    report.seconds["write"] = time.perf_counter() - start - report.seconds["read"] - report.seconds["draw"]
    return report


def run_titles(views: dict[str, StudyView]) -> dict[str, tuple[str, str]]:
    """Each run's figure title for people (study · variant or varied values · seed) and its id in
    small print."""
    out = {}
    for view in views.values():
        for _, r in view.final.iterrows():
            name = view.label(r) if view.axes or "variant" in r else ""
            seed = f"seed {r['seed']}" if "seed" in r and pd.notna(r["seed"]) else ""
            parts = [view.name] + ([name] if name and name != view.name else []) + ([seed] if seed else [])
            out[r["run"]] = (" · ".join(parts), f"run {r['run']}")
    return out


def _draw(run_tasks: list[tuple[Path, Path, str, str, tuple[str, ...]]], study_tasks: list[tuple[StudyView, Path, Path, Path]],
          jobs: int | None) -> tuple[list[dict[str, str]], list[list[tuple[str, str]]]]:
    """Draw runs' and studies' figures, in worker processes when there are enough runs to pay for
    starting them: the studies first (each is the longest task), then the runs one at a time, so
    that no worker sits idle while another still has a queue."""
    workers = min(jobs or os.cpu_count() or 1, len(run_tasks) + len(study_tasks))
    if workers <= 1 or len(run_tasks) < 8:
        return [_draw_safely(*t) for t in run_tasks], [draw_study(*t) for t in study_tasks]
    with _one_thread_each(), ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=plugins.init_worker,
                                                 initargs=(plugins.loaded(), os.getpid())) as pool:
        try:
            with spawning_workers():  # submit spawns the workers
                studies = [pool.submit(draw_study, *t) for t in study_tasks]
                run_figs = [pool.submit(_draw_safely, *t) for t in run_tasks]
            return [f.result() for f in run_figs], [f.result() for f in studies]
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: drop the queued drawings, stop the drawing ones
            stop_pool(pool)
            raise


_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def _one_thread_each():
    """Workers spawned inside start with one BLAS and OpenMP thread: there is one worker per core
    already, and numpy's second thread (in the latent view's PCA and colour mixing) only waits for
    a core the other worker holds (measured: 8% more CPU time, 15% more wall time on a busy 2-core
    machine). Libraries read these variables once, when they load, so setting them around the
    spawn is the only way short of a thread-pool library; this process's own threads are unchanged."""
    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _draw_safely(run_dir: Path, fig_dir: Path, title: str, note: str = "",
                 formats: tuple[str, ...] = RUN_FORMATS) -> dict[str, str]:
    """A run whose files can't be read is reported as such, never stops the report."""
    try:
        return draw_run(run_dir, fig_dir, title, note, formats)
    except Exception as e:  # noqa: BLE001 - one unreadable run must not stop a 100-run report
        return {name: f"could not be drawn: {type(e).__name__}: {e}" for name in RUN_FIGURES}


# -- index.html -----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 16px;line-height:1.4}
h1,h2,h3{font-weight:600} h2{border-bottom:1px solid #ddd;padding-bottom:2px;margin-top:1.6em}
.table{overflow-x:auto;margin:0.5em 0}
table{border-collapse:collapse;font-size:0.85em}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600;white-space:normal;max-width:11em}
td.num{white-space:nowrap;font-variant-numeric:tabular-nums}
td.text{text-align:left;overflow-wrap:break-word;min-width:5em;max-width:22em}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;display:block}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:14px;margin:0.6em 0}
.figs figure{margin:0} .figs figure.wide{grid-column:1/-1}
figcaption{font-size:0.8em;color:#555} pre{background:#f7f7f7;padding:6px;font-size:0.75em;overflow:auto}
nav.toc{background:#fafafa;border:1px solid #e4e4e4;padding:6px 14px;font-size:0.9em}
nav.toc ol{margin:0.3em 0;padding-left:1.4em} nav.toc .runs{font-size:0.9em;color:#555}
.state-failed{color:#b00020;font-weight:600} .state-done{color:#1b7f3a} .state-partial,.state-new,.state-running{color:#a06000} .state-damaged{color:#b00020;font-weight:600}
details{margin:0.6em 0} summary{cursor:pointer} small.id{color:#888;font-weight:400;font-size:0.6em;overflow-wrap:anywhere}
"""

WIDE_FIGURES = ("terms", "compare", "final-", "curves-")  # drawn 7 to 12 inches wide: a row of their own


def _url(path: str) -> str:
    return quote(path, safe="/")


def _anchor(*parts: str) -> str:
    return "-".join(_slug(p) for p in parts)


def _figure_html(rel_stem: str, caption: str, formats: tuple[str, ...] = STUDY_FORMATS) -> str:
    """A figure at a readable size (wide ones span the page), the image a link to itself at full
    size, its vector files beside the caption."""
    png = _url(rel_stem + ".png")
    wide = " class='wide'" if Path(rel_stem).name.startswith(WIDE_FIGURES) else ""
    vectors = " · ".join(f'<a href="{_url(rel_stem + "." + fmt)}">{fmt.upper()}</a>' for fmt in formats if fmt != "png")
    return (f'<figure{wide}><a href="{png}"><img src="{png}" loading="lazy" alt="{html.escape(caption)}"></a>'
            f'<figcaption>{html.escape(caption)}{" · " + vectors if vectors else ""}</figcaption></figure>')


def _minus(text: str) -> str:
    return text.replace("-", "−")


SUMMARY_HEADERS = {"config": "config", "n_seeds": "seeds done", "n_failed": "failed", "n_unfinished": "not finished"}


def summary_headers(table: pd.DataFrame, final: pd.DataFrame) -> dict[str, str]:
    """Labels for the summary's columns: config keys by their schema labels, metrics in words
    with the k of any importance-sampled number."""
    out = dict(SUMMARY_HEADERS)
    for col in table.columns:
        if "." in col:
            out[col] = axis_label(tuple(col.split(" & ")))
        elif col.endswith("_mean"):
            metric = col[:-5]
            split = metric.partition("_")[0]
            ks = sorted({int(k) for k in final.get(f"{split}_k", pd.Series(dtype=float)).dropna()}) \
                if split == "test" else []
            k = f" (k\u00a0=\u00a0{' / '.join(f'{v:,}' for v in ks)})" if ks else ""  # never broken
            out[metric] = F.metric_label(metric) + k
    return out


_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: the same text, 7x faster on 100 configs


def _config_html(root: Path, label: str) -> str:
    run_dir = run_path(root, label)
    try:
        text = yaml.dump(runs.read_config(run_dir), Dumper=_YAML_DUMPER, sort_keys=False)
    except VaebenchError:
        text = "(config.yaml unreadable)"
    return f"<details><summary>config</summary><pre>{html.escape(text)}</pre></details>"


def _index_html(root: Path, final: pd.DataFrame, views: dict[str, StudyView], study_figs: dict[str, list],
                run_info: dict, table: pd.DataFrame, titles: dict[str, tuple[str, str]],
                cache: Path | None = None, formats: tuple[str, ...] = RUN_FORMATS) -> str:
    incomplete = final[final["state"] != "done"]
    missing = bool(len(incomplete) or any(v["missing"] for v in run_info.values()))
    h = ["<!doctype html><html><head><meta charset='utf-8'>",
         "<meta name='viewport' content='width=device-width, initial-scale=1'>",
         f"<title>vaebench report: {html.escape(str(root))}</title><style>{_CSS}</style></head><body>",
         f"<h1>vaebench report: {html.escape(str(root))}</h1>",
         f"<p>{len(final)} runs in {len(views)} {'study' if len(views) == 1 else 'studies'}; "
         f"drawn {html.escape(time.strftime('%Y-%m-%d %H:%M'))} by vaebench {__version__}. "
         "Curves are in nats per image against weight updates; train is blue, validation orange. "
         "The summary table is also in <a href='summary.csv'>summary.csv</a> and "
         "<a href='summary.md'>summary.md</a>; every figure is a PNG (click it for full size) with its vector files: SVG, and PDF for the study "
         f"figures{' and the runs' if 'pdf' in formats else ' (--formats png,svg,pdf for the runs too)'}.</p>"]
    counts = final["state"].value_counts()
    h.append("<p>States: " + ", ".join(f"{counts[s]} {s}" for s in counts.index) + ".</p>")
    h.append(_toc(views, study_figs, titles, missing))
    if missing:
        h.append("<h2 id='missing'>What is missing</h2><ul>")
        for _, r in final.iterrows():
            why = run_info.get(r["run"], {}).get("missing", {})
            if r["state"] == "done" and not why:
                continue
            reason = r.get("reason") if isinstance(r.get("reason"), str) else ""
            by_reason: dict[str, list[str]] = {}
            for fig, because in why.items():  # each reason once, with the figures it costs
                by_reason.setdefault("see above" if because and because in reason else because, []).append(fig)
            figs = "; ".join(f"{', '.join(names)} ({because})" for because, names in by_reason.items())
            h.append(f"<li><a href='#{_anchor('run', r['run'])}'>{html.escape(r['run'])}</a>: "
                     f"<span class='state-{r['state']}'>{html.escape(str(r['state']))}</span> at update "
                     f"{int(r['step']):,}{' — ' + html.escape(reason) if reason else ''}"
                     f"{' — missing figures: ' + html.escape(figs) if figs else ''}</li>")
        h.append("</ul>")
    for name, view in views.items():
        h.append(f"<h2 id='{_anchor('study', name)}'>Study {html.escape(name)}</h2>")
        figs = study_figs.get(name, [])
        cmp = study_comparison(view, cache)
        if cmp is not None:
            metric = cmp["metric"].iloc[0]
            k = F.k_text(with_k(cmp, view.final), metric)
            h.append(f"<p id='{_anchor('compare', name)}'>Each {'variant' if cmp['axis'].eq('variant').all() else 'axis value'}"
                     f" against its reference, on <b>{html.escape(F.metric_label(metric))}</b>"
                     f"{' (' + html.escape(k) + ')' if k else ''}, paired by seed in every cell of the other axes: "
                     "the mean difference, its 95% Student-t interval over seeds (a bootstrap one from 8 seeds up), "
                     "the share of pairs where it is better, and whether the difference is beyond seed noise "
                     "(Holm-adjusted p < 0.05 across the table; fewer than 3 paired seeds are too few to say).</p>")
            h.append("<div class='figs'>" + "".join(_figure_html(f"studies/{_slug(name)}/{stem}", cap)
                                                    for stem, cap in figs if stem == "compare") + "</div>")
            h.append(compare_text(cmp, format="html"))
        part = table[table["study"] == name].drop(columns=["study"])
        h.append(f"<h3 id='{_anchor('summary', name)}'>Summary</h3><p>Per config: the mean over the seeds done "
                 "± the half-width of its 95% confidence interval (Student t).</p>" + _summary_html(part, view.final))
        if view.axes:
            refs = ", ".join(f"{axis_label(a)} = {v}" for a, v in view.refs.items())
            h.append(f"<p id='{_anchor('figures', name)}'>Axes: {html.escape(', '.join(axis_label(a) for a in view.axes))}."
                     f" Each axis is drawn with the others at their reference values ({html.escape(refs)}); points "
                     "are seeds, bars the mean and its 95% confidence interval (Student t).</p>")
        h.append("<div class='figs'>" + "".join(_figure_html(f"studies/{_slug(name)}/{stem}", cap)
                                                for stem, cap in figs if stem != "compare") + "</div>")
        for _, r in view.final.iterrows():
            label = r["run"]
            info = run_info.get(label, {})
            h.append(f"<h3 id='{_anchor('run', label)}'>{html.escape(titles[label][0])} "
                     f"<span class='state-{r['state']}'>[{html.escape(str(r['state']))}, update {int(r['step']):,}]</span>"
                     f" <small class='id'>{html.escape(label)}</small></h3>")
            if pd.notna(r.get("val_elbo")):
                h.append(_minus(
                    f"<p>final validation ELBO {r['val_elbo']:.2f} (rec {r['val_rec']:.2f}, KL {r['val_kl']:.2f}) "
                    f"nats per image; train ELBO {r.get('train_elbo', float('nan')):.2f}"
                    + (f"; test IW log p(x) {r['test_iw_ll']:.2f} ± {r['test_iw_ll_se']:.2f}, test ELBO "
                       f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}"
                       + (f" (k = {int(r['test_k']):,})" if pd.notna(r.get("test_k")) else "")
                       if pd.notna(r.get("test_iw_ll")) else "") + "</p>"))
            h.append(_config_html(root, label))
            figs = [_figure_html(f"runs/{label}/{name}", cap, formats) for name, cap in RUN_FIGURES.items()
                    if name not in info.get("missing", {})]
            h.append("<div class='figs'>" + "".join(figs) + "</div>")
    h.append("</body></html>")
    return "\n".join(h)


def _toc(views: dict[str, StudyView], study_figs: dict[str, list], titles: dict[str, tuple[str, str]],
         missing: bool) -> str:
    """Contents: each study's comparison, summary and figures, and its runs by their titles."""
    items = ["<li><a href='#missing'>What is missing</a></li>"] if missing else []
    for name, view in views.items():
        parts = [f"<a href='#{_anchor('summary', name)}'>summary</a>"]
        if any(stem == "compare" for stem, _ in study_figs.get(name, [])):
            parts.insert(0, f"<a href='#{_anchor('compare', name)}'>comparison</a>")
        if view.axes:
            parts.append(f"<a href='#{_anchor('figures', name)}'>figures per axis</a>")
        run_links = ", ".join(
            f"<a href='#{_anchor('run', label)}'>{html.escape(titles[label][0].removeprefix(name + ' · '))}</a>"
            for label in view.final["run"])
        items.append(f"<li><a href='#{_anchor('study', name)}'>Study {html.escape(name)}</a>: {' · '.join(parts)}"
                     f"<div class='runs'>runs: {run_links}</div></li>")
    return "<nav class='toc'><b>Contents</b><ol>" + "".join(items) + "</ol></nav>"


def _summary_html(table: pd.DataFrame, final: pd.DataFrame) -> str:
    table = table.drop(columns=[c for c in table if "." in c and table[c].isna().all()])  # another study's axes
    # the k is in the metrics' headers; failed / not finished only when some are (the states line counts them)
    shown = table.drop(columns=[c for c in table if c.endswith("_k") or
                                (c in ("n_failed", "n_unfinished") and (table[c].fillna(0) == 0).all())])
    for col in [c for c in shown.columns if c.endswith("_mean")]:
        m = col[:-5]
        shown[m] = [_minus(("-" if pd.isna(a) else f"{a:.2f}") + ("" if pd.isna(b) else f" ± {b:.2f}"))
                    for a, b in zip(shown[col], shown[f"{m}_ci95"])]
        shown = shown.drop(columns=[col, f"{m}_ci95"])
    return table_html(shown, summary_headers(table, final))
