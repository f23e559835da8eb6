"""Confidence intervals and paired comparisons over seeds: the one definition the figures and tables share.

Intervals: Student t for the mean; a BCa bootstrap (scipy.stats.bootstrap) as a check that does
not assume normality, only from MIN_BOOTSTRAP replicates up (3 seeds have 10 distinct resamples,
and their percentile interval comes out narrower than the t one). Verdicts come from the paired t
test's p-values, Holm-adjusted across the rows of one table.
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9_999
BOOTSTRAP_SEED = 0  # the same intervals every time for the same numbers
MIN_SEEDS = 3  # fewer paired seeds say nothing reliable about the spread
MIN_BOOTSTRAP = 8  # fewer replicates have too few distinct resamples for a bootstrap interval
ALPHA = 1 - CONFIDENCE  # a verdict needs a Holm-adjusted p below this


def t975(df: int) -> float:
    """t_{0.975, df}, the two-sided 95% Student-t quantile."""
    from scipy.special import stdtrit  # what scipy.stats.t.ppf computes, without importing scipy.stats

    return float(stdtrit(df, 0.5 + CONFIDENCE / 2)) if df >= 1 else math.nan


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of the 95% CI of the mean) over the finite values; the half-width is NaN
    with fewer than two values (one seed says nothing about the spread)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(t975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def t_interval(d) -> tuple[float, float]:
    """95% Student-t interval of the mean of ``d`` (NaN, NaN with fewer than two values)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    mean, half = mean_ci(d)
    return mean - half, mean + half


def bootstrap_interval(d) -> tuple[float, float]:
    """95% BCa bootstrap interval of the mean of ``d`` (scipy.stats.bootstrap, fixed seed); NaN
    with fewer than MIN_BOOTSTRAP values."""
    d = np.asarray(d, dtype=float)
    if len(d) < MIN_BOOTSTRAP:
        return math.nan, math.nan
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    from scipy import stats  # here, not at import: a report rerun needs only the t quantile

    res = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                          method="BCa", random_state=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_test_p(d) -> float:
    """Two-sided p-value of the one-sample t test of mean(d) = 0 (what scipy.stats.ttest_1samp
    gives); 0 or 1 when every value is the same (no spread: the mean is exact)."""
    from scipy.special import stdtr

    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d[0] == 0 else 0.0
    t = d.mean() / (sd / math.sqrt(len(d)))
    return float(2 * stdtr(len(d) - 1, -abs(t)))


def holm(p) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN ones are not in the family): the
    i-th smallest of m is multiplied by m - i + 1, made monotone, capped at 1. It controls the
    chance of any false verdict in the family at ALPHA without assuming independence."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def paired_difference(replicates, pairs=None, higher_is_better: bool = True) -> dict:
    """The difference of a value to its reference from its independent replicates (one per seed:
    the mean of that seed's paired differences): their mean, 95% t and BCa bootstrap intervals, the
    paired t test's p, the share of ``pairs`` (every paired difference; the replicates when None)
    where the value beats the reference (ties half), and ``verdict`` "too few seeds" (under MIN_SEEDS
    replicates) or "no paired seeds", else None (the table's Holm step decides it)."""
    d = np.asarray(replicates, dtype=float)
    d = d[np.isfinite(d)]
    every = d if pairs is None else np.asarray(pairs, dtype=float)
    n = len(d)
    out = {"n_seeds": n, "diff": float(d.mean()) if n else math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "boot_low": math.nan, "boot_high": math.nan, "p": math.nan, "verdict": None}
    wins = (every > 0) if higher_is_better else (every < 0)
    out["share_better"] = float((wins.sum() + 0.5 * (every == 0).sum()) / len(every)) if len(every) else math.nan
    if n < MIN_SEEDS:
        out["verdict"] = "too few seeds" if n else "no paired seeds"
        return out
    out["ci_low"], out["ci_high"] = t_interval(d)
    out["boot_low"], out["boot_high"] = bootstrap_interval(d)
    out["p"] = t_test_p(d)
    return out


def verdict(diff: float, p_adj: float, higher_is_better: bool = True) -> str:
    """better / worse when the Holm-adjusted p is below ALPHA, else no detectable difference."""
    if not p_adj < ALPHA:
        return "no detectable difference"
    return "better" if (diff > 0) == higher_is_better else "worse"
