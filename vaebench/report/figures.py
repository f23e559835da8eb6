"""The report's figures, each a function of a DataFrame (from ``vaebench.load``) or of image arrays.

Every function returns a matplotlib Figure and never touches pyplot's global state, so a notebook
can redraw any figure with its own filter::

    df = vaebench.load("results/ablations")
    plot_curves_by_value(df[df["objective.k"].isin([1, 10])], "objective.k")

Colours are fixed per split (train blue, validation orange, test green) in every figure.
"""

from __future__ import annotations

import json
import re
import textwrap
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from .stats import mean_ci, t975
from .tables import metric_label
from ..results import axis_heads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib and seaborn are imported where a figure is drawn, not here: a report with nothing to
# redraw (and load, compare, the study tables) never needs them, and they are half a second to import.

SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
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


TITLE_PT, SUBTITLE_PT = 10.2, 8.5  # the heading's two sizes (the style's "medium", and smaller)


def text_width(text: str, points: float) -> float:
    """Inches the widest line of ``text`` takes at ``points`` in the report's font: matplotlib's own
    text layout without drawing anything (a third of a millisecond), so a layout can be fitted to
    its words before the figure is drawn once."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=points)
    return max(text_to_path.get_text_width_height_descent(line, prop, ismath=False)[0]
               for line in text.split("\n")) / 72


def wrap_to(text: str, points: float, inches: float, breaks: str = " ") -> list[str]:
    """``text`` in lines no wider than ``inches`` at ``points``, broken after any of ``breaks``
    (a space is dropped at a break; an underscore or comma stays at the end of its line); a single
    word wider than that keeps its own line."""
    if not text:
        return []
    tokens = re.findall(rf"[^{re.escape(breaks)}]+[{re.escape(breaks)}]*|[{re.escape(breaks)}]+", text)
    lines: list[str] = []
    line = ""
    for tok in tokens:
        if line and text_width((line + tok).rstrip(" "), points) > inches:
            lines.append(line.rstrip(" "))
            line = tok.lstrip(" ")
        else:
            line += tok
    return lines + [line.rstrip(" ")] if line.strip() else lines


def _heading(fig: Figure, title: str, subtitle: str) -> float:
    """The figure's title on one line, a subtitle in smaller grey print below it (each wrapped at
    words only where it does not fit the width); returns the inches the heading takes at the top."""
    width, height = fig.get_figwidth(), fig.get_figheight()
    room = width - 0.3
    lines = ([(line, TITLE_PT, "0.1") for line in wrap_to(title, TITLE_PT, room)]
             + [(line, SUBTITLE_PT, "0.35") for line in wrap_to(subtitle, SUBTITLE_PT, room)])
    y = 0.08
    for text, points, color in lines:
        fig.text(0.5, 1 - y / height, text, ha="center", va="top", fontsize=points, color=color)
        y += points * 1.3 / 72
    return y + 0.04 if lines else 0.0


def _heading_height(title: str, subtitle: str, width: float) -> float:
    room = width - 0.3
    n_title, n_sub = len(wrap_to(title, TITLE_PT, room)), len(wrap_to(subtitle, SUBTITLE_PT, room))
    return (0.12 + (n_title * TITLE_PT + n_sub * SUBTITLE_PT) * 1.3 / 72) if n_title + n_sub else 0.0


def _figure(width: float, height: float, ncols: int = 1, title: str = "", subtitle: str = "",
            images: bool = False, layout: bool = False, nrows: int = 1,
            height_ratios: Sequence[float] | None = None, legend_row: bool = False) -> tuple[Figure, list]:
    """A figure with its heading (``title``, ``subtitle``) above ``height`` inches of axes.

    Per-run figures have fixed margins in inches (their labels are the same in every run, and
    constrained layout would double the drawing time of a 100-run report); ``layout`` (the few
    study figures, whose tick labels are the study's own values) lets matplotlib's constrained
    layout measure every label instead. ``images`` drops the axis margins: image axes have no tick
    labels that a title could collide with, so their titles sit at the top edge (titley = 1, where
    matplotlib would measure every tick label to put them anyway). ``legend_row`` keeps a row
    between the heading and the axes' titles for a legend (``_legend_row``), off the curves."""
    head = _heading_height(title, subtitle, width) + (LEGEND_ROW if legend_row else 0.0)
    height += head
    from matplotlib.figure import Figure

    with _style({"axes.titley": 1.0} if images else None):
        fig = Figure(figsize=(width, height), layout="constrained" if layout else None)
        axes = fig.subplots(nrows, ncols, squeeze=False,
                            gridspec_kw={"height_ratios": height_ratios} if height_ratios else None).ravel()
        _heading(fig, title, subtitle)
    top = head + (0.24 if images else 0.32)  # room for the axes' titles
    if layout:
        fig.get_layout_engine().set(rect=(0, 0, 1, 1 - head / height), w_pad=0.06, h_pad=0.06)
    elif images:
        fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, bottom=0.1 / height, top=1 - top / height)
    else:
        fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height,
                            top=1 - (top + 0.05) / height, wspace=0.32)
    return fig, list(axes)


LEGEND_ROW = 0.26  # inches


def _legend_row(fig: Figure, ax, **kwargs) -> None:
    """The legend of ``ax`` in one row above the axes' titles (``_figure(legend_row=True)``), off
    the data."""
    handles, labels = ax.get_legend_handles_labels()
    if _constrained(fig):  # the top of the area the layout fills
        _, bottom, _, height = fig.get_layout_engine().get()["rect"]
        y = bottom + height
    else:
        y = fig.subplotpars.top + 0.34 / fig.get_figheight()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, y), ncol=len(labels), frameon=False,
               fontsize="small", borderaxespad=0, **kwargs)


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
        _mark_clipped(ax, m["step"].to_numpy(), m[term].to_numpy(dtype=float), lo - pad, hi + pad)


def _mark_clipped(ax, steps: np.ndarray, values: np.ndarray, lo: float, hi: float) -> None:
    """Say where the y range cuts data off, at the edge that cuts it: how many updates it leaves
    out and their extreme value (the untrained model's reconstruction at update 0 is about -137
    nats, far below the rest of the curve)."""
    finite = np.isfinite(values)
    for below, arrow, cut in ((True, "▼", finite & (values < lo)), (False, "▲", finite & (values > hi))):
        if not cut.any():
            continue
        n = len(np.unique(steps[cut]))
        first = n == len(np.unique(steps[steps <= steps[cut].max()]))  # every update up to the last one cut
        extreme = values[cut].min() if below else values[cut].max()
        which = f"first {n:,} updates" if first else f"{n:,} updates up to {steps[cut].max():,.0f}"
        ax.annotate(f"{arrow} {which} {'below' if below else 'above'} the axis ({'min' if below else 'max'} "
                    f"{extreme:.0f})", (0.02, 0.03 if below else 0.97),
                    xycoords="axes fraction", ha="left", va="bottom" if below else "top", fontsize="x-small",
                    color="0.25", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def plot_terms(df: pd.DataFrame, smooth_window: int = 100, title: str = "", subtitle: str = "") -> Figure:
    """The seed's figure 1: the ELBO's two terms (reconstruction log-likelihood and KL) against
    weight updates, train every update (light), smoothed, and validation."""
    m = wide_metrics(df)
    fig, axes = _figure(10, 3.6, ncols=2, title=title, subtitle=subtitle, legend_row=True)
    for ax, term in zip(axes, ("rec", "kl")):
        _split_curve(ax, m, term, smooth_window)
        ax.set_title(TERM_LABELS[term])
    _legend_row(fig, axes[0])
    return fig


def plot_train_val(df: pd.DataFrame, term: str = "rec", smooth_window: int = 100, title: str = "",
                   subtitle: str = "") -> Figure:
    """The seed's figure 5: one term on training vs validation images against weight updates."""
    m = wide_metrics(df)
    fig, (ax,) = _figure(6.4, 4, title=title, subtitle=subtitle, legend_row=True)
    _split_curve(ax, m, term, smooth_window)
    ax.set_title(f"{TERM_LABELS[term]}: train vs validation")
    _legend_row(fig, ax)
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
                         title: str = "", pairs_per_row: int = 5, subtitle: str = "") -> Figure:
    """The seed's figures 2 and 3: each input image with the decoder's output (the means of
    p(x|z), whatever the likelihood, at z = E_q[z]) beside it."""
    h, w = shape
    inputs = np.asarray(inputs, dtype=np.float32).reshape(-1, h, w)
    outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, h, w)
    sep = np.full((len(inputs), h, 1), 0.5, dtype=np.float32)
    pairs = np.concatenate([inputs, sep, outputs], axis=2)  # (N, h, 2w + 1)
    grid = mosaic(pairs, (h, 2 * w + 1), cols=pairs_per_row, pad=max(2, h // 5))
    rows = -(-len(inputs) // pairs_per_row)
    fig, (ax,) = _figure(1.3 * pairs_per_row + 0.4, 0.7 * rows + 0.3, title=title, subtitle=subtitle, images=True)
    _show(ax, grid)
    ax.set_title("each pair: input (left), reconstruction (right)", fontsize="small")
    return fig


def plot_samples(images: np.ndarray, shape: tuple[int, int], title: str = "", cols: int = 10,
                 subtitle: str = "", prior: str = "N(0, I)") -> Figure:
    """The seed's figure 4: the decoder's means of p(x|z) for z drawn from the prior (``prior``: how
    the title names it; the mean of whatever likelihood the run has: Bernoulli probabilities, ...)."""
    grid = mosaic(np.asarray(images), shape, cols=cols, pad=1)
    rows = -(-len(images) // cols)
    fig, (ax,) = _figure(max(3.6, 0.6 * cols + 0.4), 0.6 * rows + 0.3, title=title, subtitle=subtitle, images=True)
    _show(ax, grid)
    ax.set_title(f"decoder means of p(x|z) for z ~ {prior}", fontsize="small")
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
    heads = axis_heads(cols)
    per_key = [_formatted(df[c]) for c in heads]
    joined = [vals[0] if len(set(vals)) == 1 else ", ".join(vals) for vals in zip(*per_key)]
    out = pd.Series(joined, index=df.index, dtype=object)
    # a component's own hyperparameters (model.prior.components of mog) are named only where they tell
    # two values of one component apart
    extra = [[] for _ in joined]
    for c in cols:
        if c in heads:
            continue
        texts = pd.Series(_formatted(df[c]), index=df.index)
        present = df[c].notna()
        if texts[present].groupby(out[present]).nunique().gt(1).any():
            for i, (p, t) in enumerate(zip(present, texts)):
                if p:
                    extra[i].append(f"{c.rsplit('.', 1)[-1]}={t}")
    if any(extra):
        out = pd.Series([f"{j} ({', '.join(e)})" if e else j for j, e in zip(joined, extra)], index=df.index,
                        dtype=object)
    return out


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


TICK_PT = 9.35  # the style's tick label size


def plot_final_by_value(final: pd.DataFrame, axis: str | Sequence[str],
                        metrics: Sequence[str] = FINAL_METRICS, title: str = "", subtitle: str = "") -> Figure:
    """Final values per axis value: every seed as a point, the mean with its 95% CI as a bar.

    ``final`` is one row per run, as ``vaebench.load(path, final=True)`` gives; runs without the
    metric (failed or partial) are left out. Values whose labels fit under their place on the x
    axis (wrapped at words and underscores, three lines at most) stand there, one panel per metric
    side by side; longer ones (a study's variant names) go on the y axis, read across, where a
    label of any length has its own line and no rotated label overlaps the next.
    """
    metrics = [m for m in metrics if m in final.columns]
    if not metrics:
        raise ValueError("no final metrics to plot (are any runs done?)")
    d = final.assign(_value=axis_values(final, axis))
    order = value_order(d["_value"])
    panel = 3.3
    slot = (panel - 0.9) / len(order)
    wrapped = ["\n".join(wrap_to(v, TICK_PT, slot - 0.08, " _,")) for v in order]
    across = any(w.count("\n") >= 3 or text_width(w, TICK_PT) > slot - 0.04 for w in wrapped)
    if across:
        wrapped = ["\n".join(wrap_to(v, TICK_PT, 2.2, " _,")) for v in order]
        lines = sum(w.count("\n") + 1 for w in wrapped)
        fig, axes = _figure(panel * len(metrics) + min(2.3, max(map(lambda w: text_width(w, TICK_PT), wrapped))),
                            1.4 + 0.2 * lines + 0.12 * len(order), ncols=len(metrics), title=title,
                            subtitle=subtitle, layout=True, legend_row=True)
    else:
        fig, axes = _figure(panel * len(metrics) + 0.4, 3.6, ncols=len(metrics), title=title, subtitle=subtitle,
                            layout=True, legend_row=True)
    label = axis_label(axis, 34)
    pos = np.arange(len(order))[::-1] if across else np.arange(len(order))
    for ax, metric in zip(axes, metrics):
        for p, value in zip(pos, order):
            vals = d.loc[d["_value"] == value, metric].astype(float).to_numpy()
            vals = vals[np.isfinite(vals)]
            if len(vals) == 0:
                continue
            jitter = p + (np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1))
            first = value == order[0]
            mean, ci = mean_ci(vals)
            err = None if np.isnan(ci) else ci
            if across:
                ax.scatter(vals, jitter, s=14, color="0.45", zorder=3, label="seeds" if first else None)
                ax.errorbar(mean, p, xerr=err, fmt="D", color=SPLIT_COLORS["val"], ms=6, capsize=5, lw=1.6,
                            zorder=4, label="mean ± 95% CI" if first else None)
            else:
                ax.scatter(jitter, vals, s=14, color="0.45", zorder=3, label="seeds" if first else None)
                ax.errorbar(p, mean, yerr=err, fmt="D", color=SPLIT_COLORS["val"], ms=6, capsize=5, lw=1.6,
                            zorder=4, label="mean ± 95% CI" if first else None)
        if across:
            ax.set_yticks(pos, wrapped if ax is axes[0] else [""] * len(order))
            ax.set_ylim(-0.5, len(order) - 0.5)
            ax.set_xlabel(NATS)
            ax.grid(axis="y", visible=False)
        else:
            ax.set_xticks(pos, wrapped)
            ax.set_xlim(-0.5, len(order) - 0.5)
            ax.set_xlabel(label)
            ax.set_ylabel(NATS)
        ax.set_title(f"final {metric_label(metric)}", fontsize="medium")
    if across:
        axes[0].set_ylabel(label)
    _legend_row(fig, axes[0])
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
                         terms: Sequence[str] = ("elbo", "rec", "kl"), title: str = "", subtitle: str = "") -> Figure:
    """Learning curves per axis value: the mean over seeds with a 95% CI band.

    ``df`` is the long form of ``vaebench.load``; validation terms are logged every ``eval_every``
    updates, so the default split gives smooth curves.
    """
    order = value_order(axis_values(df, axis))
    names = ["\n".join(wrap_to(v, 8.5, 1.9, " _,")) for v in order]
    fig, axes = _figure(3.4 * len(terms) + 0.4 + max(1.0, max(text_width(n, 8.5) for n in names) + 0.5), 3.6,
                        ncols=len(terms), title=title, subtitle=subtitle, layout=True)
    palette = value_palette(len(order)) if len(order) > 1 else [SPLIT_COLORS[split]]
    for ax, term in zip(axes, terms):
        bands = curve_bands(df, axis, split, term)
        for color, value, name in zip(palette, order, names):
            b = bands[bands["value"] == value]
            if b.empty:
                continue
            b = b[b["step"] > 0]
            ax.plot(b["step"], b["mean"], color=color, lw=1.5, label=name)
            ci = b["ci"].fillna(0)
            ax.fill_between(b["step"], b["mean"] - ci, b["mean"] + ci, color=color, alpha=0.2, lw=0)
        ax.set_title(metric_label(f"{split}_{term}"), fontsize="medium")
        ax.set_ylabel(NATS)
        _show_every_curve(ax, bands)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title=axis_label(axis, 24), loc="outside right center", fontsize="small",
               title_fontsize="small", frameon=False)  # beside the panels, whatever the labels' length
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
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(f"{UPDATES} (log scale)")
    b = bands[bands["step"] > 0]
    ci = b["ci"].fillna(0)
    lo, hi = (b["mean"] - ci).min(), (b["mean"] + ci).max()
    if np.isfinite(lo) and np.isfinite(hi):
        pad = 0.04 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(b["step"].min() * 0.9, b["step"].max() * 1.1)


PNG_COMPRESSION = 3  # zlib level: as fast as level 1 on these flat-coloured figures, files ~9% over level 6


def _constrained(fig: Figure) -> bool:
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    return isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)


FORMATS = ("png", "svg", "pdf")  # PNG to look at, SVG and PDF (vector) to put in a paper


def save(fig: Figure, stem, formats: Sequence[str] = FORMATS, dpi: int = 110) -> list[str]:
    """Write ``stem.png``, ``stem.svg`` and ``stem.pdf`` (or ``formats``); return the names. The
    layout is worked out by the first format and kept for the others."""
    import io
    from pathlib import Path

    import matplotlib as mpl

    from ..runs import atomic_write

    _plain_text(fig)
    names = []
    for fmt in formats:
        buf = io.BytesIO()
        with mpl.rc_context(PLAIN_TEXT):  # texts made while drawing (new ticks) are plain too
            fig.savefig(buf, format=fmt, dpi=dpi, **({"pil_kwargs": {"compress_level": PNG_COMPRESSION}}
                                                     if fmt == "png" else {}))
        path = Path(f"{stem}.{fmt}")
        atomic_write(path, buf.getvalue())
        names.append(path.name)
        _keep_title_positions(fig)
        if _constrained(fig):
            fig.set_layout_engine("none")  # the axes stay where the first format's layout put them
    return names


# Labels come from data (variant names, config values): drawn as they are spelled, never parsed as
# mathtext or TeX, so a variant named $\frac$ neither fails a figure nor turns into a formula.
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def _plain_log_ticks(axis) -> None:
    """A log axis labelled 100, 1,000, 10,000: matplotlib's default labels are mathtext ($10^{3}$),
    which plain text (PLAIN_TEXT) would print as written."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _plain_text(fig: Figure) -> None:
    """Every text already in ``fig`` (titles, ticks, legends, annotations) drawn literally."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        t.set_parse_math(False)
        t.set_usetex(False)


def _keep_title_positions(fig: Figure) -> None:
    """After the first format is drawn, titles stay where it placed them: matplotlib would otherwise
    measure every tick label again, for each format, to find the same place."""
    for ax in fig.axes:
        if getattr(ax, "_autotitlepos", None):  # matplotlib's own flag (set_title(y=...) clears it too)
            ax._autotitlepos = False


VERDICT_COLORS = {"better": "#1b7f3a", "worse": "#b00020", "no detectable difference": "0.35"}


def _one(table: pd.DataFrame, column: str):
    """The one value a compare table has in ``column`` (or in its attrs), else None."""
    if column in table and table[column].notna().any():
        vals = table[column].dropna().unique()
        return vals[0] if len(vals) == 1 else list(vals)
    return table.attrs.get(column)


def k_text(table: pd.DataFrame, metric: str) -> str:
    """'k = 5,000' from the table's k column or attrs (a number, or {split: k} as load's attrs)."""
    k = _one(table, "k")
    if isinstance(k, dict):
        k = k.get(metric.partition("_")[0])
    if k is None or (isinstance(k, float) and np.isnan(k)):
        return ""
    if isinstance(k, (list, tuple, np.ndarray)):
        return "k = " + " / ".join(f"{int(v):,}" for v in sorted(k)) + " (mixed)"
    return f"k = {int(k):,}"


REDUCE_TEXT = {"last": "values at the last update", "best": "values at the best validation ELBO"}


def forest_heading(table: pd.DataFrame, title: str = "") -> tuple[str, str]:
    """The forest plot's title (the study, the metric, its k) and subtitle (the reduction, the
    pairing, the intervals and their correction), from the compare table's columns and attrs."""
    metric = str(table["metric"].iloc[0])
    what = metric_label(metric)
    k = k_text(table, metric) if "iw_ll" in metric or metric.startswith("test_") else ""
    what += f" ({k})" if k else ""
    what = what.replace(" ", "\u00a0")  # wrapped, if at all, before the metric's name, never inside it
    head = f"{title}: {what}" if title else what
    reduce = _one(table, "reduce")
    parts = [REDUCE_TEXT.get(str(reduce), f"{reduce} values")] if reduce else []
    parts.append("difference to the reference, paired by seed"
                 + (" within each cell of the other axes" if "n_cells" in table and (table["n_cells"].fillna(1) > 1).any()
                    else ""))
    parts.append("95% intervals" + (" (thick: Student t, thin: bootstrap)"
                                    if "boot_low" in table and table["boot_low"].notna().any() else " (Student t)"))
    if table.attrs.get("correction"):
        parts.append(f"verdicts {table.attrs['correction']}-corrected")
    return head, "; ".join(parts)


def plot_forest(table: pd.DataFrame, title: str = "") -> Figure:
    """Difference to the reference per axis value (``vaebench.compare``'s table): one panel per
    axis, each with its own x scale (a 0.2-nat effect of K is not a dot beside an 8-nat effect of
    width) and named after its reference; the mean difference, its 95% Student-t interval (thick)
    and bootstrap interval where the table has one (thin), zero dashed, colour for the verdict.
    Reference rows are left out (their difference is 0 by definition); values with too few pairs
    show the mean difference only. The title names the metric and its k, the subtitle the reduction."""
    t = table[table["verdict"] != "reference"].reset_index(drop=True)
    if t.empty:
        raise ValueError("nothing to compare: every row is a reference")
    head, sub = forest_heading(table, title)
    groups = list(dict.fromkeys(zip(t["axis"], t["reference"])))
    labels = {i: "\n".join(wrap_to(str(v), TICK_PT, 2.4, " _,")) for i, v in t["value"].items()}
    rows = [sum(labels[i].count("\n") + 1 for i in t.index[(t["axis"] == a) & (t["reference"] == r)])
            for a, r in groups]
    fig, axes = _figure(7.2, sum(0.3 * n + 0.75 for n in rows) + 0.35, nrows=len(groups), title=head, subtitle=sub,
                        layout=True, height_ratios=[0.3 * n + 0.75 for n in rows])
    pairs = "n_pairs" if "n_pairs" in t else "n_seeds"
    share = "share_better" if "share_better" in t else "p_improve"
    for ax, (axis, ref) in zip(axes, groups):
        part = t[(t["axis"] == axis) & (t["reference"] == ref)]
        y = np.arange(len(part))[::-1]
        lows, highs = [], []
        for yi, (i, r) in zip(y, part.iterrows()):
            color = VERDICT_COLORS.get(r["verdict"], "0.55")
            if str(r["verdict"]).startswith("not comparable"):  # another quantity: named, never drawn to scale
                ax.annotate("not comparable", (1, yi), xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize="x-small", color=color)
                continue
            interval = pd.notna(r["ci_low"])
            if interval:
                ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=color, lw=3.2, solid_capstyle="butt", zorder=3)
                lows.append(r["ci_low"])
                highs.append(r["ci_high"])
            if pd.notna(r.get("boot_low", np.nan)):
                ax.plot([r["boot_low"], r["boot_high"]], [yi - 0.22] * 2, color=color, lw=1.1, zorder=3)
                lows.append(r["boot_low"])
                highs.append(r["boot_high"])
            ax.plot([r["diff"]], [yi], "o", color=color, ms=6, zorder=4, mfc=color if interval else "white")
            lows.append(r["diff"])
            highs.append(r["diff"])
            n = r.get(pairs)
            if not interval or pd.isna(r.get(share, np.nan)):
                note = str(r["verdict"])
            else:
                note = f"better in {round(r[share] * n):.0f} of {n:.0f}" if pd.notna(n) else f"{r[share]:.0%} better"
                if pd.notna(r.get("p_adj", np.nan)):
                    note += f", p = {r['p_adj']:.2g}"
            ax.annotate(note, (1, yi), xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize="x-small", color=color)
        ax.axvline(0, color="0.2", lw=1, ls="--", zorder=2)
        lo, hi = np.nanmin(lows + [0.0]), np.nanmax(highs + [0.0])  # a value without pairs has no difference
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_yticks(y, [labels[i] for i in part.index])
        ax.set_ylim(-0.6, len(part) - 0.4)
        ax.grid(axis="y", visible=False)
        ax.set_title(f"{'variants' if axis == 'variant' else axis} vs {ref}", fontsize="medium", loc="left")
        ax.set_xlabel(f"difference ({NATS})", fontsize="small")
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


def plot_latent(mu: np.ndarray, labels: np.ndarray, title: str = "", subtitle: str = "") -> Figure:
    """The seed's latent view: E_q[z|x] of the test images, coloured by digit (the two leading
    principal directions when the latent has more than two dimensions)."""
    xy, kind = leading_directions(mu)
    fig, (ax,) = _figure(5.4, 4.6, title=title, subtitle=subtitle)
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


def plot_traversals(images: np.ndarray, shape: tuple[int, int], values: Sequence[float], title: str = "",
                    subtitle: str = "") -> Figure:
    """Latent traversals: row u is p(x|z)'s means as z_u sweeps ``values`` with the other dimensions
    at a test image's E_q[z|x]; ``images`` is (latent, len(values), pixels)."""
    n_dims, n_steps = images.shape[:2]
    grid = mosaic(images.reshape(n_dims * n_steps, -1), shape, cols=n_steps, pad=1)
    fig, (ax,) = _figure(max(4.8, 0.45 * n_steps + 0.9), 0.45 * n_dims + 0.6, title=title, subtitle=subtitle,
                         images=True)
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
    engine = fig.get_layout_engine()
    if _constrained(fig):
        left, _, width, top = engine.get()["rect"]
        engine.set(rect=(left, 0.16 / h, width, top - 0.16 / h))
    elif any(ax.axison and ax.get_xlabel() for ax in fig.axes):  # a row of its own below the x labels
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.14 / h)
    else:
        fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.16 / h))  # image figures: room below the images
    fig.text(0.05 / fig.get_figwidth(), 0.03 / h, text, ha="left", va="bottom", fontsize=6, color="0.45")
    return fig
