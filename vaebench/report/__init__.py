"""Figures, tables and the index page of a results folder; reads run folders, never trains.

``build_report`` is ``vaebench report``; the plotting functions take the DataFrames of
``vaebench.load`` so a notebook can redraw any figure with its own filter.
"""

from .build import Report, build_report, default_out, draw_run
from .figures import (
    SPLIT_COLORS,
    plot_curves_by_value,
    plot_final_by_value,
    plot_reconstructions,
    plot_samples,
    plot_terms,
    plot_train_val,
    save,
)
from .stats import mean_ci
from .studies import axes_of, study_views, summary, summary_markdown

__all__ = [
    "Report", "build_report", "default_out", "draw_run", "SPLIT_COLORS", "plot_curves_by_value",
    "plot_final_by_value", "plot_reconstructions", "plot_samples", "plot_terms", "plot_train_val", "save",
    "mean_ci", "axes_of", "study_views", "summary", "summary_markdown",
]
