"""Statistics for evaluation and the report: binomial and Student-t intervals, run status.

A Wilson interval for one evaluation (``correct`` of ``n`` held-out questions), a Student-t
interval for a mean over seeds, the documented status rule that turns an accuracy curve into
``stable``/``partial``/``collapsed``/``transient_collapse``, the report's seed-level inference
(`seed_interval`: a t-interval and t-test over seeds, widened by the question-sampling variance)
with Holm correction, and the two-way (seed x question) bootstrap kept for what it measures.
The distributions come from scipy (``scipy.stats``); this module adds the input checks, the
edge cases (``n == 0``, a single seed) and the status rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import ml_collections
import numpy as np
import scipy.stats

__all__ = [
    "wilson_interval",
    "mean_ci",
    "t_quantile",
    "default_status_thresholds",
    "classify_status",
    "classify_curve",
    "bootstrap_ci",
    "paired_bootstrap",
    "seed_interval",
    "holm",
    "NEAR_ZERO",
    "STATUSES",
    "finite",
    "pct",
]

NEAR_ZERO = "near_zero"
STATUSES = ("stable", "partial", "collapsed", NEAR_ZERO, "transient_collapse")

# Comparisons in classify_status are made with this slack so that an accuracy lying exactly on a
# threshold (accuracies are ratios of small integers, e.g. 27/100 vs 0.9 * 30/100) lands on the
# documented side of it instead of on whichever side float rounding picks.
_EDGE_EPS = 1e-9


# ----------------------------------------------------------------------------- formatting


def finite(x: Any) -> bool:
    """A real number that is not NaN/inf (None, bools and strings are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct(x: Any, digits: int = 1, *, missing: str = "n/a", unit: str = "") -> str:
    """A fraction as a percentage, ``0.586 -> "58.6"`` (+ `unit`); `missing` where it is not a
    finite number. The one percent formatter of the tables, logs and reports."""
    return f"{100.0 * x:.{digits}f}{unit}" if finite(x) else missing


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
    # `near_zero` when final < floor and the run did not collapse: it ends with (almost) no skill
    # and never had much to lose -- e.g. 0.6% -> 0.8%, which the relative rule alone would call
    # "stable". Near 0% neither survival nor collapse can be read off the run's own step 0; the
    # claims read such a run as not surviving (docs/METRICS.md).
    c.floor = 0.05
    return c


def default_claim_thresholds() -> ml_collections.ConfigDict:
    """The report's verdict thresholds (`config.eval.claims`; docs/METRICS.md)."""
    c = ml_collections.ConfigDict()
    c.alpha = 0.05  # family-wise error rate of the pairwise method comparisons (Holm)
    c.majority = 0.5  # a group "is" collapsed/stable when more than this share of its seeds is
    # the cliff-pattern verdicts re-derived with the status rule's `collapse_frac` (0.25) moved to
    # each of these: a verdict that flips within them sits on its threshold
    c.collapse_frac_low = 0.2
    c.collapse_frac_high = 0.3
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
    * otherwise ``near_zero`` if ``f < t.floor`` (an absolute floor: a run ending near 0% is
      never ``stable``, however low its start);
    * otherwise ``stable`` if ``f >= t.stable_frac * s``;
    * otherwise ``partial``.

    Values exactly on a threshold fall on the side written above (comparisons allow 1e-9 slack for
    float rounding).  A student that starts at 0 is ``near_zero`` or ``stable``.  Called by the trainer for
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
    if f < t.floor - _EDGE_EPS:
        return NEAR_ZERO
    if f >= t.stable_frac * s - _EDGE_EPS:
        return "stable"
    return "partial"


# ----------------------------------------------------------------------------- whole curves

TRANSIENT = "transient_collapse"


def classify_curve(accuracies: Sequence[float], thresholds: Optional[ml_collections.ConfigDict] = None
                   ) -> str:
    """Status of a run from its whole accuracy curve (step 0 first, the final eval last).

    The final status is :func:`classify_status` of the last point against the first; a run that is
    not ``collapsed`` at the end but was ``collapsed`` at some intermediate evaluation is
    ``transient_collapse`` -- a final-only status would call a run that fell from 49 % to 8 % and
    recovered ``stable``.
    """
    accs = [float(a) for a in accuracies]
    if not accs:
        raise ValueError("classify_curve needs at least one accuracy (the step-0 evaluation).")
    start, final = accs[0], accs[-1]
    status = classify_status(final, start, thresholds)
    if status != "collapsed" and any(classify_status(a, start, thresholds) == "collapsed"
                                     for a in accs[1:-1]):
        return TRANSIENT
    return status


# ----------------------------------------------------------------------------- seeds x questions
#
# Every run of a setup is scored on the same held-out questions, so an accuracy has two sources of
# noise: the training run (seed) and the finite question sample. Treating the per-seed accuracy as
# one observation (mean_ci) ignores the second and cannot pair two methods on the same questions.
# These functions take the 0/1 correctness matrix [S seeds, Q questions] of a method and resample
# seeds and questions independently (a two-way bootstrap). Two methods are paired by using the same
# resampled seed and question indices for both, so shared question difficulty cancels.


def _resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] multiplicities of a bootstrap resample of n items (each row sums to n)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _check_matrix(x: Any, name: str) -> np.ndarray:
    m = np.asarray(x, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{name} must be a [seeds, questions] matrix, got shape {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} has non-finite entries.")
    return m


def bootstrap_means(x: Any, n_boot: int = 10_000, seed: int = 0) -> np.ndarray:
    """[n_boot] means of a [S, Q] matrix over two-way (seed x question) bootstrap resamples."""
    m = _check_matrix(x, "x")
    rng = np.random.default_rng(seed)
    s, q = m.shape
    ws, wq = _resample_weights(s, n_boot, rng), _resample_weights(q, n_boot, rng)
    return np.einsum("bs,sq,bq->b", ws, m, wq) / (s * q)


def bootstrap_ci(x: Any, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
                 ) -> tuple[float, float, float]:
    """(mean, low, high): percentile interval of the two-way bootstrap of a [S, Q] matrix."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci needs 0 < confidence < 1, got {confidence!r}.")
    m = _check_matrix(x, "x")
    means = bootstrap_means(m, n_boot, seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(m.mean()), float(lo), float(hi)


def paired_bootstrap(a: Any, b: Any, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
                     ) -> dict[str, float]:
    """Paired two-way bootstrap of mean(a) - mean(b) for two [S, Q] matrices on the same questions.

    Returns the observed difference, its percentile interval and a two-sided p-value for "no
    difference": twice the smaller tail mass of the resampled differences at 0, with the +1
    correction that keeps p > 0 for a finite number of resamples.
    """
    ma, mb = _check_matrix(a, "a"), _check_matrix(b, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"paired_bootstrap needs matrices of one shape (same seeds, same questions), "
                         f"got {ma.shape} and {mb.shape}.")
    d = bootstrap_means(ma - mb, n_boot, seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
    tail = min(np.sum(d <= 0.0), np.sum(d >= 0.0))
    p = min(1.0, 2.0 * (tail + 1) / (n_boot + 1))
    return {"diff": float(ma.mean() - mb.mean()), "low": float(lo), "high": float(hi), "p": p}


def seed_interval(x: Any, confidence: float = 0.95) -> dict[str, float]:
    """Seed-level inference on a [S, Q] matrix (seeds x questions: scores, or paired differences
    such as final - step 0 or method a - method b on the same questions and seed index).

    The replicate is the training seed: the per-seed means m_s give the between-seed variance
    s^2 / S, and the seed-averaged per-question values give the question-sampling variance
    v_q / Q of a finite eval set; SE = sqrt(s^2 / S + v_q / Q), with Student's t on S - 1
    degrees of freedom for the interval and a two-sided test of "mean 0". Why not the two-way
    percentile bootstrap: with few seeds and seed variance dominant it under-covers (3 seeds:
    ~0.75 for a nominal 0.95; tests/test_stats.py simulates it), and its p-value has a floor of
    2 / (n_boot + 1). One seed has no seed-level interval: low, high and p are NaN (a
    comparison on it can only be descriptive). Returns mean, low, high, p, se, n (seeds).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"seed_interval needs 0 < confidence < 1, got {confidence!r}.")
    m = _check_matrix(x, "x")
    S, Q = m.shape
    mean = float(m.mean())
    if S < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "p": math.nan, "se": math.nan,
                "n": S}
    per_seed, per_question = m.mean(axis=1), m.mean(axis=0)
    var_q = float(per_question.var(ddof=1)) / Q if Q > 1 else 0.0
    se = math.sqrt(float(per_seed.var(ddof=1)) / S + var_q)
    df = S - 1
    if se == 0.0:  # every seed and question agree: no noise to test against
        p = 1.0 if mean == 0.0 else 0.0
        return {"mean": mean, "low": mean, "high": mean, "p": p, "se": 0.0, "n": S}
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    p = float(2.0 * scipy.stats.t.sf(abs(mean) / se, df))
    return {"mean": mean, "low": mean - half, "high": mean + half, "p": p, "se": se, "n": S}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given): reject H_i at level a iff adj_i <= a.

    Sorted ascending, p_(k) is multiplied by (m - k + 1) (k from 1), made monotone with a running
    maximum and capped at 1; this controls the family-wise error rate without independence.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError(f"holm needs a 1-D sequence of p-values in [0, 1], got {pvalues!r}.")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (m - np.arange(m))
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out
