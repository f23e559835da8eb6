"""The report's figures, each a function of a DataFrame (from ``vaebench.load``) or of image arrays.

Every function returns a matplotlib Figure and never touches pyplot's global state, so a notebook
can redraw any figure with its own filter::

    df = vaebench.load("results/ablations")
    plot_curves_by_value(df[df["objective.k"].isin([1, 10])], "objective.k")

Colours are fixed per split (train blue, validation orange, test green) in every figure.
"""

from __future__ import annotations

import json
import textwrap
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from .stats import mean_ci, t975

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib and seaborn are imported where a figure is drawn, not here: a report with nothing to
# redraw (and load, compare, the study tables) never needs them, and they are half a second to import.

SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test"}
TERM_LABELS = {
    "rec": "reconstruction log-likelihood E_q[log p(x|z)]",
    "kl": "KL(q(z|x) || p(z))",
    "elbo": "ELBO",
}
NATS = "nats per image"
UPDATES = "weight updates"


@contextmanager
def _style(rc: dict | None = None):
    import matplotlib as mpl
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), mpl.rc_context(rc or {}):
        yield


def _figure(width: float, height: float, ncols: int = 1, title: str = "", images: bool = False,
            xlabel_lines: int = 1) -> tuple[Figure, list]:
    """A figure with fixed margins in inches (constrained layout would double the drawing time of
    a 100-run report), its title wrapped to the width; ``images`` drops the axis margins;
    ``xlabel_lines`` makes room below the axes for taller tick labels and x labels.

    Image axes have no tick labels that a title could collide with, so their titles sit at the
    top edge (titley = 1, where matplotlib would measure every tick label to put them anyway)."""
    lines = textwrap.wrap(title, width=int(width * 11)) if title else []
    extra_bottom = 0.2 * (xlabel_lines - 1)
    height += 0.22 * len(lines) + extra_bottom
    from matplotlib.figure import Figure

    with _style({"axes.titley": 1.0} if images else None):
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    if lines:
        fig.suptitle("\n".join(lines), y=1 - 0.08 / height, va="top", fontsize="medium")
    top = 0.32 + 0.22 * len(lines)
    if images:
        fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, bottom=0.1 / height, top=1 - top / height)
    else:
        fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=(0.55 + extra_bottom) / height,
                            top=1 - (top + 0.05) / height, wspace=0.32)
    return fig, list(axes)


def wide_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Long form (run, step, split, term, value) -> one row per (step, split) with rec/kl/elbo columns.
    A frame that is already wide (``vaebench.runs.read_metrics``) is returned as is."""
    if "term" not in df.columns:
        return df
    runs_in = df["run"].nunique() if "run" in df.columns else 1
    if runs_in > 1:
        raise ValueError(f"this figure shows one run; filter the DataFrame to one run (it has {runs_in})")
    wide = df.pivot_table(index=["step", "split"], columns="term", values="value", observed=True).reset_index()
    wide.columns.name = None
    return wide


def smooth(values: pd.Series, window: int) -> pd.Series:
    """Centred moving average over ``window`` updates: what a noisy per-update curve is doing,
    without the lag of a trailing average (so it lines up with the validation points)."""
    return values.rolling(max(1, int(window)), min_periods=1, center=True).mean()


def _split_curve(ax, m: pd.DataFrame, term: str, window: int) -> None:
    train = m[m["split"] == "train"].sort_values("step")
    val = m[m["split"] == "val"].sort_values("step")
    if len(train):
        _raw(ax, train["step"].to_numpy(), train[term].to_numpy(), SPLIT_COLORS["train"], "train (every update)")
        smoothed = smooth(train[term], window)
        every = max(1, len(train) // (2 * RAW_BINS))  # a moving average has nothing finer to show
        ax.plot(train["step"].iloc[::every], smoothed.iloc[::every], color=SPLIT_COLORS["train"], lw=1.6,
                label=f"train (mean of {window} updates)")
    if len(val):
        ax.plot(val["step"], val[term], color=SPLIT_COLORS["val"], lw=1.6, marker="o", ms=2.5,
                label="validation")
    ax.set_xlabel(UPDATES)
    ax.set_ylabel(NATS)
    _clip_start(ax, pd.concat([train, val]), term)


RAW_BINS = 1_000  # a figure is ~600 pixels wide: more points than this only cost drawing time


def _raw(ax, steps: np.ndarray, values: np.ndarray, color: str, label: str) -> None:
    """A noisy per-update curve, drawn lightly. Long curves are drawn as their min-max envelope over
    RAW_BINS bins, which is what the full line looks like at screen resolution, at a fraction of
    the cost (a 100-run report stays well under a minute)."""
    if len(steps) <= 2 * RAW_BINS:
        ax.plot(steps, values, color=color, alpha=0.25, lw=0.6, label=label)
        return
    edges = np.linspace(0, len(steps), RAW_BINS + 1).astype(int)
    lo = np.minimum.reduceat(values, edges[:-1])
    hi = np.maximum.reduceat(values, edges[:-1])
    mid = steps[(edges[:-1] + edges[1:] - 1) // 2]
    ax.fill_between(mid, lo, hi, color=color, alpha=0.25, lw=0, label=label)


def _clip_start(ax, m: pd.DataFrame, term: str) -> None:
    """Keep the first few hundred updates (where the terms move by hundreds of nats) from flattening
    the rest of the curve: the y range covers the values after the first 5% of training."""
    if m.empty:
        return
    late = m[m["step"] >= 0.05 * m["step"].max()][term]
    late = late[np.isfinite(late)]
    if len(late) > 1:
        lo, hi = np.percentile(late, [0.5, 99.5])
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)


def plot_terms(df: pd.DataFrame, smooth_window: int = 100, title: str = "") -> Figure:
    """The seed's figure 1: the ELBO's two terms (reconstruction log-likelihood and KL) against
    weight updates, train every update (light), smoothed, and validation."""
    m = wide_metrics(df)
    fig, axes = _figure(10, 3.6, ncols=2, title=title)
    for ax, term in zip(axes, ("rec", "kl")):
        _split_curve(ax, m, term, smooth_window)
        ax.set_title(TERM_LABELS[term])
    axes[0].legend(loc="lower right", fontsize="small")
    return fig


def plot_train_val(df: pd.DataFrame, term: str = "rec", smooth_window: int = 100, title: str = "") -> Figure:
    """The seed's figure 5: one term on training vs validation images against weight updates."""
    m = wide_metrics(df)
    fig, (ax,) = _figure(6.4, 4, title=title)
    _split_curve(ax, m, term, smooth_window)
    ax.set_title(f"{TERM_LABELS[term]}: train vs validation")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def mosaic(images: np.ndarray, shape: tuple[int, int], cols: int, pad: int = 1, value: float = 0.5) -> np.ndarray:
    """Tile N images of ``shape`` (given flat or not) into one array, ``pad`` pixels of grey between them."""
    h, w = shape
    images = np.asarray(images, dtype=np.float32).reshape(-1, h, w)
    rows = -(-len(images) // cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), value, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return out


def _show(ax, grid: np.ndarray) -> None:
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()


def plot_reconstructions(inputs: np.ndarray, outputs: np.ndarray, shape: tuple[int, int],
                         title: str = "", pairs_per_row: int = 5) -> Figure:
    """The seed's figures 2 and 3: each input image with the decoder's output (Bernoulli means at
    z = E_q[z]) beside it."""
    h, w = shape
    inputs = np.asarray(inputs, dtype=np.float32).reshape(-1, h, w)
    outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, h, w)
    sep = np.full((len(inputs), h, 1), 0.5, dtype=np.float32)
    pairs = np.concatenate([inputs, sep, outputs], axis=2)  # (N, h, 2w + 1)
    grid = mosaic(pairs, (h, 2 * w + 1), cols=pairs_per_row, pad=max(2, h // 5))
    rows = -(-len(inputs) // pairs_per_row)
    fig, (ax,) = _figure(1.3 * pairs_per_row + 0.4, 0.7 * rows + 0.3, title=title, images=True)
    _show(ax, grid)
    ax.set_title("each pair: input (left), reconstruction (right)", fontsize="small")
    return fig


def plot_samples(images: np.ndarray, shape: tuple[int, int], title: str = "", cols: int = 10) -> Figure:
    """The seed's figure 4: Bernoulli means of p(x|z) for z ~ N(0, I)."""
    grid = mosaic(np.asarray(images), shape, cols=cols, pad=1)
    rows = -(-len(images) // cols)
    fig, (ax,) = _figure(0.6 * cols + 0.4, 0.6 * rows + 0.3, title=title, images=True)
    _show(ax, grid)
    ax.set_title("Bernoulli means of p(x|z) for z ~ N(0, I)", fontsize="small")
    return fig


# -- comparisons across an ablation axis --------------------------------------------------------

def axis_label(axis: str | Sequence[str], width: int = 0) -> str:
    """The axis's human label (from the config schema, vaebench.results.axis_label); wrapped to
    ``width`` characters (for a panel) when given."""
    from ..results import axis_label as label

    text = label(axis if isinstance(axis, str) else tuple(axis))
    return textwrap.fill(text, width) if width else text


def axis_values(df: pd.DataFrame, axis: str | Sequence[str]) -> pd.Series:
    """One label per row for the axis (several keys that vary together are joined)."""
    cols = [axis] if isinstance(axis, str) else list(axis)
    per_key = [_formatted(df[c]) for c in cols]
    joined = [vals[0] if len(set(vals)) == 1 else ", ".join(vals) for vals in zip(*per_key)]
    return pd.Series(joined, index=df.index, dtype=object)


def _formatted(column: pd.Series) -> list[str]:
    """format_value of each entry, computed once per distinct value (a study's curves repeat a
    run's config values on each of its thousands of rows)."""
    seen: dict = {}
    out = []
    for v in column.astype(object):
        try:
            text = seen.get((type(v), v))
            if text is None:
                text = seen[(type(v), v)] = format_value(v)
        except TypeError:  # unhashable, e.g. a list
            text = format_value(v)
        out.append(text)
    return out


def format_value(v) -> str:
    """A config value as a tick label (vaebench.results.format_value): widths (32,) as 32."""
    from ..results import format_value as fmt

    return fmt(v)


def value_order(labels: Iterable[str]) -> list[str]:
    """Numbers (and lists of numbers such as widths) in numeric order, anything else alphabetically."""
    def key(s: str):
        first = s.split(", ")[0]
        try:
            v = json.loads(first)
        except ValueError:
            return (1, (), s)
        nums = v if isinstance(v, list) else [v]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in nums):
            return (0, tuple(nums), s)
        return (1, (), s)

    return sorted(set(labels), key=key)


FINAL_METRICS = ("val_elbo", "val_rec", "val_kl")


def plot_final_by_value(final: pd.DataFrame, axis: str | Sequence[str],
                        metrics: Sequence[str] = FINAL_METRICS, title: str = "") -> Figure:
    """Final values per axis value: every seed as a point, the mean with its 95% CI as a bar.

    ``final`` is one row per run, as ``vaebench.load(path, final=True)`` gives; runs without the
    metric (failed or partial) are left out.
    """
    metrics = [m for m in metrics if m in final.columns]
    if not metrics:
        raise ValueError("no final metrics to plot (are any runs done?)")
    d = final.assign(_value=axis_values(final, axis))
    order = value_order(d["_value"])
    rotate = max(map(len, order)) > 6
    label = axis_label(axis, 34)
    tick_lines = 1 + (min(max(map(len, order)), 30) // 6 if rotate else 0)  # 30-degree labels: ~1 line per 6 chars
    fig, axes = _figure(3.3 * len(metrics) + 0.4, 3.6, ncols=len(metrics), title=title,
                        xlabel_lines=label.count("\n") + tick_lines)
    x = np.arange(len(order))
    for ax, metric in zip(axes, metrics):
        for i, value in enumerate(order):
            vals = d.loc[d["_value"] == value, metric].astype(float).to_numpy()
            vals = vals[np.isfinite(vals)]
            if len(vals) == 0:
                continue
            jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.scatter(i + jitter, vals, s=14, color="0.45", zorder=3, label="seeds" if i == 0 else None)
            mean, ci = mean_ci(vals)
            ax.errorbar(i, mean, yerr=None if np.isnan(ci) else ci, fmt="D", color=SPLIT_COLORS["val"], ms=6,
                        capsize=5, lw=1.6, zorder=4, label="mean ± 95% CI" if i == 0 else None)
        ax.set_xticks(x, order, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xlabel(label)
        split, _, term = metric.partition("_")
        ax.set_title(f"final {SPLIT_LABELS.get(split, split)} {TERM_LABELS.get(term, term).split(' E_q')[0]}",
                     fontsize="medium")
        ax.set_ylabel(NATS)
    axes[0].legend(fontsize="small")
    return fig


def curve_bands(df: pd.DataFrame, axis: str | Sequence[str], split: str = "val", term: str = "elbo") -> pd.DataFrame:
    """Per axis value and step: the mean over runs (seeds), the 95% CI half-width, and the run count."""
    d = df[(df["split"] == split) & (df["term"] == term)]
    v = d["value"].astype(float)
    d = d.assign(_value=axis_values(d, axis), _finite=v.where(np.isfinite(v)))
    g = d.groupby(["_value", "step"], observed=True, sort=True)
    out = g["_finite"].agg(["mean", "std", "count"]).join(g["run"].nunique().rename("runs")).reset_index()
    t = out["count"].map(lambda n: t975(int(n) - 1))  # mean_ci's interval, one group at a time in a loop before
    ci = t * out["std"] / np.sqrt(out["count"].where(out["count"] > 1))
    return pd.DataFrame({"value": out["_value"].tolist(), "step": out["step"], "mean": out["mean"],
                         "ci": ci.astype(float), "runs": out["runs"]})


def plot_curves_by_value(df: pd.DataFrame, axis: str | Sequence[str], split: str = "val",
                         terms: Sequence[str] = ("elbo", "rec", "kl"), title: str = "") -> Figure:
    """Learning curves per axis value: the mean over seeds with a 95% CI band.

    ``df`` is the long form of ``vaebench.load``; validation terms are logged every ``eval_every``
    updates, so the default split gives smooth curves.
    """
    fig, axes = _figure(3.4 * len(terms) + 0.4, 3.6, ncols=len(terms), title=title)
    order = value_order(axis_values(df, axis))
    palette = value_palette(len(order)) if len(order) > 1 else [SPLIT_COLORS[split]]
    for ax, term in zip(axes, terms):
        bands = curve_bands(df, axis, split, term)
        for color, value in zip(palette, order):
            b = bands[bands["value"] == value]
            if b.empty:
                continue
            b = b[b["step"] > 0]
            ax.plot(b["step"], b["mean"], color=color, lw=1.5, label=value)
            ci = b["ci"].fillna(0)
            ax.fill_between(b["step"], b["mean"] - ci, b["mean"] + ci, color=color, alpha=0.2, lw=0)
        ax.set_title(f"{SPLIT_LABELS.get(split, split)} {TERM_LABELS[term].split(' E_q')[0]}", fontsize="medium")
        ax.set_ylabel(NATS)
        _show_every_curve(ax, bands)
    axes[0].legend(title=axis_label(axis, 30), loc="lower right", fontsize="small", title_fontsize="small")
    return fig


def value_palette(n: int) -> list:
    """Colours for ``n`` axis values in order: up to three from viridis (ordered, distinct), more
    from a qualitative palette whose neighbours are easy to tell apart (seaborn's colorblind)."""
    import seaborn as sns

    if n <= 3:
        ends = sns.color_palette("viridis", 3)
        return ends if n == 3 else [ends[0], ends[2]][:n]
    return sns.color_palette("colorblind", n) if n <= 10 else sns.color_palette("husl", n)


def _show_every_curve(ax, bands: pd.DataFrame) -> None:
    """y-limits that hold every curve from its first point, weight updates on a log scale so the
    first few hundred updates, where the terms move by tens of nats, take as much room as the rest
    (the untrained model at update 0 has no place on a log axis; it is the same for every value)."""
    ax.set_xscale("log")
    ax.set_xlabel(f"{UPDATES} (log scale)")
    b = bands[bands["step"] > 0]
    ci = b["ci"].fillna(0)
    lo, hi = (b["mean"] - ci).min(), (b["mean"] + ci).max()
    if np.isfinite(lo) and np.isfinite(hi):
        pad = 0.04 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(b["step"].min() * 0.9, b["step"].max() * 1.1)


PNG_COMPRESSION = 3  # zlib level: as fast as level 1 on these flat-coloured figures, files ~9% over level 6


def save(fig: Figure, stem, formats: Sequence[str] = ("png", "svg"), dpi: int = 110) -> list[str]:
    """Write ``stem.png`` and ``stem.svg`` (PNG to look at, SVG to put in a paper); return the names."""
    import io
    from pathlib import Path

    from ..runs import atomic_write

    names = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, **({"pil_kwargs": {"compress_level": PNG_COMPRESSION}}
                                                 if fmt == "png" else {}))
        path = Path(f"{stem}.{fmt}")
        atomic_write(path, buf.getvalue())
        names.append(path.name)
        _keep_title_positions(fig)
    return names


def _keep_title_positions(fig: Figure) -> None:
    """After the first format is drawn, titles stay where it placed them: matplotlib would otherwise
    measure every tick label again, for each format, to find the same place."""
    for ax in fig.axes:
        if getattr(ax, "_autotitlepos", None):  # matplotlib's own flag (set_title(y=...) clears it too)
            ax._autotitlepos = False


VERDICT_COLORS = {"better": "#1b7f3a", "worse": "#b00020", "no detectable difference": "0.35",
                  "too few seeds": "0.6", "no paired seeds": "0.6"}


def plot_forest(table: pd.DataFrame, title: str = "") -> Figure:
    """Difference to the reference per axis value, paired by seed (``vaebench.compare``'s table):
    the mean difference, its 95% Student-t interval (thick) and bootstrap interval (thin), zero
    marked; colour says the verdict. Reference rows are left out (their difference is 0 by
    definition); values with too few seeds show the mean difference only."""
    t = table[table["verdict"] != "reference"].reset_index(drop=True)
    if t.empty:
        raise ValueError("nothing to compare: every row is a reference")
    metric = str(t["metric"].iloc[0])
    labels = [v if a == "variant" else f"{a} = {v}" for a, v in zip(t["axis"], t["value"])]
    width = max(map(len, labels))
    fig, (ax,) = _figure(6.4 + 0.06 * width, 0.32 * len(t) + 1.2, title=title)
    fig.subplots_adjust(left=(0.3 + 0.075 * width) / fig.get_figwidth())
    y = np.arange(len(t))[::-1]
    for yi, (_, r) in zip(y, t.iterrows()):
        color = VERDICT_COLORS.get(r["verdict"], "0.35")
        if pd.notna(r["ci_low"]):
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=color, lw=3.2, solid_capstyle="butt", zorder=3)
            ax.plot([r["boot_low"], r["boot_high"]], [yi - 0.22] * 2, color=color, lw=1.1, zorder=3)
        ax.plot([r["diff"]], [yi], "o", color=color, ms=6, zorder=4,
                mfc=color if pd.notna(r["ci_low"]) else "white")
        note = r["verdict"] if r["verdict"] in ("too few seeds", "no paired seeds") else f"share better {r['share_better']:.2f}"
        ax.annotate(note, (1, yi), xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize="x-small", color=color)
    ax.axvline(0, color="0.2", lw=1, ls="--", zorder=2)
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, len(t) - 0.3)
    ax.grid(axis="y", visible=False)
    split, _, term = metric.partition("_")
    what = {"iw_ll": "IW log p(x)"}.get(term, TERM_LABELS.get(term, term).split(" E_q")[0])
    ax.set_xlabel(f"{SPLIT_LABELS.get(split, split)} {what} minus the reference's, paired by seed ({NATS})")
    fig.subplots_adjust(right=1 - 1.0 / fig.get_figwidth())
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.35", lw=3.2, label="95% CI (Student t)"),
               Line2D([], [], color="0.35", lw=1.1, label="95% CI (bootstrap)")]
    ax.legend(handles=handles, fontsize="x-small", loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False,
              borderaxespad=0.1)
    return fig


@lru_cache(maxsize=1)
def digit_colors() -> list:
    """Ten digits, ten colours that neighbours tell apart (seaborn's tab10)."""
    import seaborn as sns

    return sns.color_palette("tab10", 10)


def leading_directions(mu: np.ndarray) -> tuple[np.ndarray, str]:
    """2-D coordinates of latent means: the means themselves when the latent has two dimensions
    (one: padded with zeros), else the two leading principal directions; and the axis names."""
    mu = np.asarray(mu, dtype=np.float64)
    if mu.shape[1] <= 2:
        xy = mu if mu.shape[1] == 2 else np.column_stack([mu[:, 0], np.zeros(len(mu))])
        return xy, "z"
    centred = mu - mu.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / (s**2).sum()
    return centred @ vt[:2].T, f"PC ({share[0]:.0%}, {share[1]:.0%} of the variance)"


def _digit_density(xy: np.ndarray, labels: np.ndarray, bins: int = 150) -> tuple[np.ndarray, tuple]:
    """The points as one RGB image: each bin coloured by the mix of digits in it, paler where
    there are fewer points. One image draws in milliseconds in PNG and SVG alike, where a scatter
    of 10,000 markers costs a second per format (every per-run figure counts in a 100-run report)."""
    lo, hi = np.percentile(xy, [0.2, 99.8], axis=0)
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    ij = np.clip(((xy - lo) / (hi - lo) * bins).astype(int), 0, bins - 1)
    flat = ij[:, 1] * bins + ij[:, 0]
    counts = np.stack([np.bincount(flat[labels == d], minlength=bins * bins) for d in range(10)], axis=1)
    total = counts.sum(1, keepdims=True)
    mix = counts @ np.asarray(digit_colors()) / np.maximum(total, 1)
    alpha = np.minimum(1.0, 0.35 + 0.65 * total / max(1.0, np.percentile(total[total > 0], 90)))
    alpha[total == 0] = 0.0
    rgb = 1 - alpha * (1 - mix)  # over white
    return rgb.reshape(bins, bins, 3), (lo[0], hi[0], lo[1], hi[1])


def plot_latent(mu: np.ndarray, labels: np.ndarray, title: str = "") -> Figure:
    """The seed's latent view: E_q[z|x] of the test images, coloured by digit (the two leading
    principal directions when the latent has more than two dimensions)."""
    xy, kind = leading_directions(mu)
    fig, (ax,) = _figure(5.4, 4.6, title=title)
    fig.subplots_adjust(right=1 - 0.9 / fig.get_figwidth())
    labels = np.asarray(labels) % 10
    img, extent = _digit_density(xy, labels)
    ax.imshow(img, origin="lower", interpolation="nearest", aspect="auto", extent=extent)
    for d in range(10):
        ax.plot([], [], "s", ms=6, color=digit_colors()[d], label=str(d))
    ax.legend(title="digit", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title_fontsize="small",
              frameon=False, handletextpad=0.1)
    if kind == "z":
        ax.set_xlabel("z₁")
        ax.set_ylabel("z₂")
        ax.set_title(f"E_q[z|x] of {len(xy):,} test images", fontsize="small")
    else:
        ax.set_xlabel("first principal direction")
        ax.set_ylabel("second principal direction")
        ax.set_title(f"E_q[z|x] of {len(xy):,} test images, {mu.shape[1]} dims: {kind}", fontsize="small")
    return fig


def plot_traversals(images: np.ndarray, shape: tuple[int, int], values: Sequence[float], title: str = "") -> Figure:
    """Latent traversals: row u is p(x|z)'s means as z_u sweeps ``values`` with the other dimensions
    at a test image's E_q[z|x]; ``images`` is (latent, len(values), pixels)."""
    n_dims, n_steps = images.shape[:2]
    grid = mosaic(images.reshape(n_dims * n_steps, -1), shape, cols=n_steps, pad=1)
    fig, (ax,) = _figure(max(4.8, 0.45 * n_steps + 0.9), 0.45 * n_dims + 0.6, title=title, images=True)
    fig.subplots_adjust(left=0.55 / fig.get_figwidth(), bottom=0.35 / fig.get_figheight())
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.grid(False)
    h, w = shape
    ax.set_xticks([(w + 1) * i + (w - 1) / 2 for i in range(n_steps)], [f"{v:g}" for v in values], fontsize="x-small")
    ax.set_yticks([(h + 1) * i + (h - 1) / 2 for i in range(n_dims)], [f"z{u + 1}" for u in range(n_dims)],
                  fontsize="x-small")
    ax.tick_params(length=0, pad=1)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("row u: z_u from -3 to 3, the others at a test image's E_q[z|x]", fontsize="small")
    return fig


def footnote(fig: Figure, text: str) -> Figure:
    """Small print in the bottom-left corner (a run's id under a title that names it for people)."""
    h = fig.get_figheight()
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.16 / h))  # image figures: room below the images
    fig.text(0.05 / fig.get_figwidth(), 0.03 / h, text, ha="left", va="bottom", fontsize=6, color="0.45")
    return fig
