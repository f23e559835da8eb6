"""Tables for people and papers: one renderer for compare's and summary's tables in every format.

A table is a frame of display cells (strings, headers as labels), a header line saying what the
numbers are (metric, k, reduction, correction) and footnotes; ``csv`` is for machines and writes
the numeric frame instead, every number in its own column.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd

from ..errors import VaebenchError

FORMATS = ("text", "markdown", "latex", "csv", "html")
TERM_SHORT = {"iw_ll": "IW log p(x)", "iw_ll_se": "IW log p(x) s.e.", "elbo": "ELBO", "elbo_se": "ELBO s.e.",
              "rec": "reconstruction log-likelihood", "kl": "KL", "eval_elbo": "ELBO (evaluation)", "active_units": "active units"}
SPLIT_SHORT = {"train": "train", "val": "validation", "test": "test"}


def metric_label(metric: str) -> str:
    """A metric column in words, as every figure and table names it: ``test_iw_ll`` -> "test IW
    log p(x)", ``val_kl`` -> "validation KL"; "gap" is the train minus validation ELBO; any other
    column keeps its name."""
    if metric == "gap":
        return "train − validation ELBO"
    split, _, term = metric.partition("_")
    if split in SPLIT_SHORT and term in TERM_SHORT:
        return f"{SPLIT_SHORT[split]} {TERM_SHORT[term]}"
    return metric


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise VaebenchError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def number(v, fmt: str = "{:.2f}") -> str:
    """A number for a table cell; a missing one is "-". The minus is ASCII, so LaTeX and CSV agree."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else fmt.format(v)


def with_interval(mean, low, high, fmt: str = "{:.2f}") -> str:
    """ "-0.21 [-0.35, -0.07]": a number with its interval in one cell (the interval left out when NaN)."""
    if pd.isna(mean):
        return "-"
    text = fmt.format(mean)
    return text if pd.isna(low) or pd.isna(high) else f"{text} [{fmt.format(low)}, {fmt.format(high)}]"


def render(cells: pd.DataFrame, fmt: str, header: str = "", notes: list[str] | None = None,
           numbers: pd.DataFrame | None = None) -> str:
    """``cells`` (strings, headers as labels) as text, markdown, latex (booktabs, escaped) or html,
    with ``header`` above and ``notes`` below; csv writes ``numbers`` (default: ``cells``)."""
    check_format(fmt)
    notes = notes or []
    if fmt == "csv":
        return (cells if numbers is None else numbers).to_csv(index=False)
    if fmt == "text":
        body = cells.to_string(index=False) if len(cells) else "(no rows)"
        return "\n".join([*([header] if header else []), body, *notes]) + "\n"
    if fmt == "markdown":
        md = markdown_escape
        lines = ["| " + " | ".join(md(c) for c in cells.columns) + " |",
                 "|" + "|".join("---" for _ in cells.columns) + "|"]
        lines += ["| " + " | ".join(md(v) for v in row) + " |" for row in cells.itertuples(index=False)]
        return "\n".join([*([md(header), ""] if header else []), *lines,
                          *(["", *map(md, notes)] if notes else [])]) + "\n"
    if fmt == "html":
        table = table_html(cells)
        top = f"<p>{html.escape(header)}</p>\n" if header else ""
        bottom = "".join(f"\n<p><small>{html.escape(n)}</small></p>" for n in notes)
        return top + table + bottom + "\n"
    spec = "".join("r" if _numeric(cells[c]) else "l" for c in cells.columns)
    lines = ["\\begin{table}[ht]", "\\centering"]
    if header:
        lines.append(f"\\caption{{{latex_escape(header)}}}")
    lines += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
              " & ".join(latex_escape(c) for c in cells.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + " \\\\" for row in cells.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"\\par\\smallskip{{\\footnotesize {latex_escape(n)}}}" for n in notes]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


# What Markdown (CommonMark, GitHub's tables and math) would read as markup: emphasis, code, table
# pipes, strikethrough, math, a link's "](" and raw HTML or an entity. "p < 0.05" and "[95% CI]" stay.
_MARKDOWN = re.compile(r"[\\`*_|~$]|\](?=[(\[])|&(?=#?\w+;)|<(?=[A-Za-z/!?])")


def markdown_escape(value) -> str:
    """Text shown as spelled in Markdown: a variant named ``<b>x</b>`` or ``$\\frac$`` is neither
    HTML nor a formula. A number with its interval ("-1.20 [-2.31, -0.09]") is left as is."""
    text = str(value)
    if number_text(text):
        return text
    return _MARKDOWN.sub(lambda m: {"&": "&amp;", "<": "&lt;"}.get(m[0], "\\" + m[0]), text)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "<": r"$<$", ">": r"$>$", "|": r"\textbar{}"}


def latex_escape(value) -> str:
    """Text safe in a LaTeX table cell: the special characters escaped, a minus as math."""
    text = "".join(_LATEX.get(ch, ch) for ch in str(value))
    return text.replace("±", r"$\pm$").replace("−", "-")


def _numeric(column: pd.Series) -> bool:
    """A column of numbers (with intervals or dashes) is right-aligned."""
    def looks(v: str) -> bool:
        head = str(v).split(" ")[0].lstrip("+-")
        return head == "" or head.replace(".", "", 1).replace(",", "").isdigit()

    return len(column) > 0 and all(looks(v) for v in column)


_NUMBER = re.compile(r"[\s\d.,:+\-−±\[\]()%×x=k/]*\d[\s\d.,:+\-−±\[\]()%×x=k/]*|[-−]")


def number_text(text: str) -> bool:
    """A cell that reads as a number ("−37.43 ± 0.65", "256x128", "-"), not a name ("k10")."""
    return bool(text) and bool(_NUMBER.fullmatch(text)) and not text[0].isalpha()


def table_html(table: pd.DataFrame, headers: dict[str, str] | None = None) -> str:
    """An HTML table that fits a page: headers are labels and wrap, numbers ('−37.43 ± 0.65') stay
    on one line, names wrap anywhere (a long variant name must not widen the table)."""
    headers = headers or {}
    h = ["<div class='table'><table><thead><tr>"]
    h += [f"<th>{html.escape(headers.get(c, str(c)))}</th>" for c in table.columns]
    h.append("</tr></thead><tbody>")
    for row in table.itertuples(index=False):
        h.append("<tr>")
        for v in row:
            text = "-" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            number = isinstance(v, (int, float, np.number)) or number_text(text)
            kind = "num" if number else "text"  # "k10" is a name, "256x128" and "−37.43 ± 0.65" numbers
            cell = html.escape(text) if kind == "num" else html.escape(text).replace("_", "_<wbr>")  # names break at _
            h.append(f"<td class='{kind}'>{cell}</td>")
        h.append("</tr>")
    h.append("</tbody></table></div>")
    return "".join(h)
