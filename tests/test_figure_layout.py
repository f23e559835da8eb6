"""Every figure kind of the report, drawn for short and long labels, checked with matplotlib's own
renderer: every visible text lies inside the figure and no two texts overlap (tick labels among
themselves, titles against tick labels, legends, notes), so nothing is cut or unreadable in a paper."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.legend import Legend
from matplotlib.text import Text

from vaebench.report import figures as F

SHORT = ["a", "b"]
LONG = ["baseline", "a", "a_very_long_variant_name_with_many_words", "monte_carlo_kl", "width512",
        "another_rather_long_name", "k10", "log_sigma"]
LONG_TITLE = "variants_with_long_names · a_very_long_variant_name_with_many_words · seed 12"
SUBTITLE = "checkpoint at update 20,000: validation images"


def drawn_texts(fig) -> list[tuple[Text, object]]:
    """The texts a draw of ``fig`` shows and its legends, with their boxes in pixels: tick labels
    only of the ticks drawn (matplotlib keeps labels of ticks outside the view, unseen)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    tick_labels, shown = set(), []
    for ax in fig.axes:
        if not ax.axison:  # image axes: no ticks are drawn
            continue
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels.update({id(tick.label1), id(tick.label2)})
            for tick in axis._update_ticks():  # the ticks a draw shows
                shown += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    texts = [t for t in fig.findobj(Text) if id(t) not in tick_labels] + shown
    out = []
    for legend in fig.findobj(lambda a: a.__class__.__name__ == "Legend"):  # a legend's frame hides what is under it
        out.append((legend, legend.get_window_extent(renderer)))
    for t in texts:
        if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible()):
            out.append((t, t.get_window_extent(renderer)))
    return out


def _name(artist) -> str:
    return repr(artist.get_text()) if isinstance(artist, Text) else "the legend"


def check_layout(fig, name: str) -> None:
    """As F.save draws it: every text plain (no mathtext), so a label must read as written."""
    import matplotlib as mpl

    fig_box = fig.bbox
    F._plain_text(fig)
    with mpl.rc_context(F.PLAIN_TEXT):
        texts = drawn_texts(fig)
    assert texts, name
    for t, _ in texts:
        assert not isinstance(t, Text) or "\\mathdefault" not in t.get_text(), f"{name}: {_name(t)} is mathtext, drawn as written"
    for t, box in texts:
        assert (box.x0 >= fig_box.x0 - 1 and box.y0 >= fig_box.y0 - 1 and box.x1 <= fig_box.x1 + 1
                and box.y1 <= fig_box.y1 + 1), f"{name}: {_name(t)} at {box.bounds} is outside the figure {fig_box.bounds}"
    for (t1, b1), (t2, b2) in itertools.combinations(texts, 2):
        if any(isinstance(t, Legend) and other in t.findobj(Text) for t, other in ((t1, t2), (t2, t1))):
            continue  # a legend's own texts are inside its frame
        inner1 = b1.expanded(1, 1).padded(-1)  # touching edges are not an overlap
        assert not inner1.overlaps(b2.padded(-1)), f"{name}: {_name(t1)} overlaps {_name(t2)}"


def metrics(steps: int = 3000, eval_every: int = 50) -> pd.DataFrame:
    """A run's metrics as runs.read_metrics gives them: every update for train, validation every
    ``eval_every``; the reconstruction starts near -137 nats as an untrained model's does."""
    rng = np.random.default_rng(0)
    s = np.arange(steps + 1)
    rec = -35 - 102 * np.exp(-s / 60) + rng.normal(0, 1.5, len(s))
    kl = 6 - 5 * np.exp(-s / 200) + 20 * np.exp(-s / 10) + rng.normal(0, 0.3, len(s))
    train = pd.DataFrame({"step": s, "split": "train", "rec": rec, "kl": kl, "elbo": rec - kl})
    v = s[::eval_every]
    val = pd.DataFrame({"step": v, "split": "val", "rec": rec[v] - 1, "kl": kl[v], "elbo": rec[v] - 1 - kl[v]})
    return pd.concat([train, val], ignore_index=True)


def final_frame(values: list[str], seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [{"run": f"{v}-{s}", "variant": v, "seed": s, "state": "done",
             "val_elbo": -40 - i + rng.normal(0, 0.3), "val_rec": -35 - i + rng.normal(0, 0.3),
             "val_kl": 5 + 0.1 * i + rng.normal(0, 0.1)} for i, v in enumerate(values) for s in range(seeds)]
    return pd.DataFrame(rows)


def curves_frame(values: list[str]) -> pd.DataFrame:
    m = metrics(1000)
    m = m[m["split"] == "val"].melt(id_vars=["step", "split"], value_vars=["rec", "kl", "elbo"],
                                    var_name="term", value_name="value")
    return pd.concat([m.assign(run=f"{v}-{s}", variant=v, value=m["value"] - i + 0.1 * s)
                      for i, v in enumerate(values) for s in range(2)], ignore_index=True)


def compare_table(values: list[str], axis: str = "variant", k: bool = True, big: bool = True) -> pd.DataFrame:
    """A compare table as ``vaebench.compare`` returns it; with ``big``, one effect of -8 nats
    beside effects of 0.2 nats."""
    rows = []
    for i, v in enumerate(values):
        ref = i == 0
        d = 0.0 if ref else (-8.0 if big and i == 2 else 0.2 * i)
        rows.append({"study": "s", "axis": axis, "value": v, "reference": values[0], "metric": "test_iw_ll",
                     "mean": -40 + d, "n_pairs": 3, "diff": d, "ci_low": np.nan if ref else d - 0.1,
                     "ci_high": np.nan if ref else d + 0.1, "boot_low": np.nan, "boot_high": np.nan,
                     "share_better": np.nan if ref else float(d > 0), "p_adj": np.nan if ref else 0.03,
                     "verdict": "reference" if ref else ("better" if d > 0 else "worse"),
                     **({"k": 5000, "reduce": "last"} if k else {})})
    return pd.DataFrame(rows)


def figures(values: list[str], title: str, subtitle: str):
    """Each kind as the report draws it: a run's figures with its id in small print."""
    for name, fig in _figures(values, title, subtitle):
        yield name, (F.footnote(fig, "run " + "x" * 60) if name in RUN_KINDS else fig)


RUN_KINDS = ("terms", "train_val", "recon", "samples", "latent", "traversals")


def _figures(values: list[str], title: str, subtitle: str):
    shape = (14, 14)
    rng = np.random.default_rng(2)
    imgs = rng.random((20, 196))
    yield "terms", F.plot_terms(metrics(), 50, title, subtitle)
    yield "train_val", F.plot_train_val(metrics(), "rec", 50, title, subtitle)
    yield "recon", F.plot_reconstructions(imgs, imgs, shape, title, subtitle=subtitle)
    yield "samples", F.plot_samples(rng.random((100, 196)), shape, title, subtitle=subtitle)
    yield "samples_cli", F.footnote(F.plot_samples(rng.random((16, 196)), shape, title, cols=4), "run x")
    yield "latent", F.plot_latent(rng.normal(size=(500, 8)), np.arange(500) % 10, title, subtitle)
    yield "traversals", F.plot_traversals(rng.random((8, 7, 196)), shape, (-3, -2, -1, 0, 1, 2, 3), title, subtitle)
    yield "final", F.plot_final_by_value(final_frame(values), "variant", title=title, subtitle=subtitle)
    yield "curves", F.plot_curves_by_value(curves_frame(values), "variant", title=title, subtitle=subtitle)
    unpaired = compare_table(["1", "2"], "latent").tail(1).assign(diff=np.nan, verdict="no paired seeds")
    table = pd.concat([compare_table(values), compare_table(["1", "2", "5", "10"], "K (samples)", big=False), unpaired])
    yield "forest", F.plot_forest(table, title=title)


@pytest.mark.parametrize("values,title,subtitle", [(SHORT, "st", ""), (LONG, LONG_TITLE, SUBTITLE)],
                         ids=["short", "long"])
def test_every_figure_keeps_its_text_inside_and_apart(values, title, subtitle):
    for name, fig in figures(values, title, subtitle):
        check_layout(fig, name)


def test_the_check_sees_a_cut_label_and_an_overlap():
    """The check itself: a label pushed off the canvas and two titles on one spot fail it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.set_xlabel("a label far too long to fit under such a small figure at all")
    with pytest.raises(AssertionError, match="outside the figure"):
        check_layout(fig, "cut")
    fig = Figure(figsize=(3, 2))
    fig.text(0.5, 0.5, "one")
    fig.text(0.5, 0.5, "two")
    with pytest.raises(AssertionError, match="overlaps"):
        check_layout(fig, "overlap")
    fig = Figure(figsize=(3, 2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], label="a curve")
    ax.legend(loc="lower left")
    ax.annotate("a note", (0.02, 0.03), xycoords="axes fraction")
    with pytest.raises(AssertionError, match="overlaps"):
        check_layout(fig, "legend")


def test_the_terms_figure_marks_what_its_y_range_cuts_off():
    fig = F.plot_terms(metrics(), 50)
    notes = [t.get_text() for t in fig.axes[0].texts]
    low = metrics()["rec"].min()  # the untrained model, train or validation
    assert any(n.startswith("▼ ") and "updates" in n and f"(min {low:.0f})" in n for n in notes), notes
    steady = metrics().assign(rec=lambda m: -35.0)  # nothing cut: no mark
    assert not F.plot_terms(steady, 50).axes[0].texts


def test_the_forest_plot_has_a_panel_per_axis_with_its_own_scale_and_reference():
    table = pd.concat([compare_table(LONG[:4]), compare_table(["1", "2", "5", "10"], "K (samples)", big=False)])
    fig = F.plot_forest(table, title="ablations")
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["variants vs baseline", "K (samples) vs 1"]
    (lo0, hi0), (lo1, hi1) = (ax.get_xlim() for ax in fig.axes)
    assert lo0 < -8 and hi1 - lo1 < 1.5  # the 0.2-nat K effects get their own scale
    heading = [t.get_text() for t in fig.texts]
    assert heading[0].replace("\u00a0", " ") == "ablations: test IW log p(x) (k = 5,000)" and "last update" in heading[1]
    assert "k =" not in F.plot_forest(compare_table(LONG[:3], k=False)).texts[0].get_text()


def test_samples_are_named_for_any_likelihood():
    fig = F.plot_samples(np.zeros((4, 196)), (14, 14), cols=2)
    assert "Bernoulli" not in fig.axes[0].get_title() and "decoder means" in fig.axes[0].get_title()
