"""Statistics for evaluation and the report: binomial and Student-t intervals, run status.

Three things: a Wilson interval for one evaluation (``correct`` of ``n`` held-out questions), a
Student-t interval for a mean over seeds (the study's headline numbers are means over 10 seeds),
and the documented status rule that turns an accuracy curve into ``stable``/``partial``/``collapsed``.
The distributions come from scipy (``scipy.stats``); this module adds the input checks, the
edge cases (``n == 0``, a single seed) and the status rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Optional

import ml_collections
import scipy.stats

__all__ = [
    "wilson_interval",
    "mean_ci",
    "t_quantile",
    "default_status_thresholds",
    "classify_status",
    "STATUSES",
]

STATUSES = ("stable", "partial", "collapsed")

# Comparisons in classify_status are made with this slack so that an accuracy lying exactly on a
# threshold (accuracies are ratios of small integers, e.g. 27/100 vs 0.9 * 30/100) lands on the
# documented side of it instead of on whichever side float rounding picks.
_EDGE_EPS = 1e-9


# ----------------------------------------------------------------------------- binomial


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n``.

    Used for single evaluations (baselines, per-eval CIs): unlike the normal approximation it
    stays inside [0, 1] and is sensible at 0 % and 100 %, which is exactly where collapsed runs
    and strong teachers live.  ``n == 0`` carries no information and returns ``(0.0, 1.0)``.
    """
    if isinstance(correct, bool) or isinstance(n, bool):
        raise ValueError(f"wilson_interval needs integer counts, got correct={correct!r}, n={n!r}.")
    if int(correct) != correct or int(n) != n:
        raise ValueError(f"wilson_interval needs integer counts, got correct={correct!r}, n={n!r}.")
    correct, n = int(correct), int(n)
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"wilson_interval needs 0 <= correct <= n, got correct={correct}, n={n}.")
    if not z > 0:
        raise ValueError(f"wilson_interval needs z > 0, got z={z!r}.")
    if n == 0:
        return 0.0, 1.0
    level = 2.0 * scipy.stats.norm.cdf(z) - 1.0  # scipy takes the level; z round-trips exactly
    ci = scipy.stats.binomtest(correct, n).proportion_ci(confidence_level=level, method="wilson")
    low = 0.0 if correct == 0 else max(0.0, float(ci.low))
    high = 1.0 if correct == n else min(1.0, float(ci.high))
    return low, high


# ----------------------------------------------------------------------------- Student t


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (e.g. ``t_quantile(0.975, 2) == 4.3027...``), any df > 0."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got p={p!r}.")
    if not df > 0:
        raise ValueError(f"t_quantile needs df > 0, got df={df!r}.")
    return float(scipy.stats.t.ppf(p, df))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval ``(mean, low, high)`` of ``values``.

    This is the across-seed interval of the report: the seeds are the replicates, the per-seed
    accuracy is one observation (its own binomial noise is part of the between-seed spread).
    One value gives ``(v, nan, nan)`` (no spread to estimate); no values give three NaNs.
    Non-finite values are rejected: a NaN accuracy is a bug upstream, not a data point.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_ci needs 0 < confidence < 1, got {confidence!r}.")
    xs = [float(v) for v in values]
    for v in xs:
        if not math.isfinite(v):
            raise ValueError(f"mean_ci got a non-finite value {v!r}; filter missing values first.")
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan
    var = math.fsum((v - mean) ** 2 for v in xs) / (n - 1)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * math.sqrt(var / n)
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------- run status


def default_status_thresholds() -> ml_collections.ConfigDict:
    """The thresholds of :func:`classify_status` (fractions of the run's own step-0 accuracy)."""
    c = ml_collections.ConfigDict()
    # `collapsed` when final < collapse_frac * start: three quarters of what the student could
    # already do is gone.
    c.collapse_frac = 0.25
    # ... or when final <= collapse_abs although start >= collapse_abs_min_start: "0 %" in the
    # study's sense (a student that started at 8 %+ and now answers ~nothing).  The min-start guard
    # keeps a student that never could solve anything from being called collapsed by this rule.
    c.collapse_abs = 0.02
    c.collapse_abs_min_start = 0.08
    # `stable` when final >= stable_frac * start: within 10 % (relative) of the start, or better.
    c.stable_frac = 0.9
    return c


def classify_status(
    final_acc: float, start_acc: float, thresholds: Optional[ml_collections.ConfigDict] = None
) -> str:
    """Status of a run from its final held-out accuracy and its step-0 (untrained student) accuracy.

    The study called methods "collapsed" by eye; this makes the call a documented rule.  With
    ``f = final_acc``, ``s = start_acc`` (both in [0, 1]) and the thresholds ``t``
    (defaults from :func:`default_status_thresholds`):

    * ``collapsed`` if ``f < t.collapse_frac * s``, or if ``s >= t.collapse_abs_min_start`` and
      ``f <= t.collapse_abs``;
    * otherwise ``stable`` if ``f >= t.stable_frac * s``;
    * otherwise ``partial``.

    Values exactly on a threshold fall on the side written above (comparisons allow 1e-9 slack for
    float rounding).  A student that starts at 0 can only be ``stable``.  Called by the trainer for
    every evaluation (start = that run's step-0 accuracy) and by the report as a fallback.
    """
    t = default_status_thresholds() if thresholds is None else thresholds
    for name, v in (("final_acc", final_acc), ("start_acc", start_acc)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"classify_status needs a finite number for {name}, got {v!r}.")
        if not -_EDGE_EPS <= v <= 1.0 + _EDGE_EPS:
            raise ValueError(f"classify_status needs {name} in [0, 1] (a fraction, not %), got {v!r}.")
    f, s = float(final_acc), float(start_acc)
    if f < t.collapse_frac * s - _EDGE_EPS:
        return "collapsed"
    if s >= t.collapse_abs_min_start - _EDGE_EPS and f <= t.collapse_abs + _EDGE_EPS:
        return "collapsed"
    if f >= t.stable_frac * s - _EDGE_EPS:
        return "stable"
    return "partial"
