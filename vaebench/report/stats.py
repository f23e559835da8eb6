"""Confidence intervals and paired comparisons over seeds: the one definition the figures and tables share.

Intervals come from scipy.stats: Student t for the mean, a percentile bootstrap as a check that
does not assume normality (with 3 seeds it has little to resample, so the verdict uses the t one).
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9_999
BOOTSTRAP_SEED = 0  # the same intervals every time for the same numbers
MIN_SEEDS = 3  # fewer paired seeds say nothing reliable about the spread


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
    """95% percentile-bootstrap interval of the mean of ``d`` (scipy.stats.bootstrap, fixed seed)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    from scipy import stats  # here, not at import: a report rerun needs only the t quantile

    res = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                          method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(values, reference, higher_is_better: bool = True) -> dict:
    """Differences ``values - reference`` of seed-paired numbers: their mean, 95% t and bootstrap
    intervals, the probability of improvement (share of pairs where the value beats the reference,
    ties counted half) and a verdict: better / worse (the t interval excludes 0), no detectable
    difference, or too few seeds (under MIN_SEEDS pairs)."""
    d = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    out = {"n_seeds": n, "diff": float(d.mean()) if n else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "boot_low": math.nan, "boot_high": math.nan}
    if n:
        wins = (d > 0) if higher_is_better else (d < 0)
        out["p_improve"] = float((wins.sum() + 0.5 * (d == 0).sum()) / n)
    else:
        out["p_improve"] = math.nan
    if n < MIN_SEEDS:
        out["verdict"] = "too few seeds" if n else "no paired seeds"
        return out
    out["ci_low"], out["ci_high"] = t_interval(d)
    out["boot_low"], out["boot_high"] = bootstrap_interval(d)
    if out["ci_low"] > 0 or out["ci_high"] < 0:
        up = out["ci_low"] > 0
        out["verdict"] = "better" if up == higher_is_better else "worse"
    else:
        out["verdict"] = "no detectable difference"
    return out
