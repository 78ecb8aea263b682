"""cliffdistill.stats against values computed by hand (formulas and t tables written out below)."""

import math

import numpy as np
import pytest

from cliffdistill import stats


# ----------------------------------------------------------------------------- Wilson


def test_wilson_half_of_ten():
    # z = 1.96, z^2 = 3.8416, 1 + z^2/n = 1.38416; p = 0.5:
    # center = (0.5 + 0.19208) / 1.38416 = 0.5
    # half = 1.96 / 1.38416 * sqrt(0.025 + 0.009604) = 1.4160213 * 0.1860215 = 0.2634104
    low, high = stats.wilson_interval(5, 10)
    assert low == pytest.approx(0.2365896, abs=1e-6)
    assert high == pytest.approx(0.7634104, abs=1e-6)


def test_wilson_eight_of_ten():
    # center = (0.8 + 0.19208) / 1.38416 = 0.7167379
    # half = 1.4160213 * sqrt(0.016 + 0.009604) = 1.4160213 * 0.1600125 = 0.2265811
    low, high = stats.wilson_interval(8, 10)
    assert low == pytest.approx(0.4901568, abs=1e-6)
    assert high == pytest.approx(0.9433190, abs=1e-6)


def test_wilson_extremes_stay_in_unit_interval():
    # 0/10: center = 0.19208 / 1.38416 = 0.1387701 = half -> [0, 0.2775402]
    assert stats.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775402, abs=1e-6))
    low, high = stats.wilson_interval(10, 10)
    assert low == pytest.approx(1 - 0.2775402, abs=1e-6) and high == 1.0
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_z_and_validation():
    # z = 1: 1 + 1/4 = 1.25; center = (0.5 + 0.125)/1.25 = 0.5; half = 0.8 * sqrt(1/16 + 1/64) = 0.2236068
    low, high = stats.wilson_interval(2, 4, z=1.0)
    assert (low, high) == (pytest.approx(0.2763932), pytest.approx(0.7236068))
    for bad in [(-1, 10), (11, 10), (1.5, 10), (True, 10)]:
        with pytest.raises(ValueError):
            stats.wilson_interval(*bad)


# ----------------------------------------------------------------------------- Student t


@pytest.mark.parametrize(
    "p, df, expected",
    [  # standard t-table values
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 9, 2.262),
        (0.975, 29, 2.045),
        (0.975, 10**6, 1.960),
        (0.95, 10, 1.812),
        (0.995, 5, 4.032),
        (0.025, 2, -4.303),
    ],
)
def test_t_quantile_matches_table(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_closed_forms():
    # df = 1 is Cauchy: Q(p) = tan(pi (p - 1/2)); df = 2: Q(p) = (2p - 1) / sqrt(2 p (1 - p)).
    for p in (0.01, 0.3, 0.5, 0.8, 0.999):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), abs=1e-9)
        assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)),
                                                       abs=1e-9)


def test_mean_ci_three_values():
    # mean 0.6, s = 0.1, se = 0.1/sqrt(3) = 0.0577350, t_{0.975,2} = 4.302653 -> half = 0.2484138
    mean, low, high = stats.mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert low == pytest.approx(0.6 - 0.2484138, abs=1e-6)
    assert high == pytest.approx(0.6 + 0.2484138, abs=1e-6)


def test_mean_ci_two_values_and_other_confidence():
    # mean 0.3, s = 0.1414214, se = 0.1, t_{0.975,1} = 12.706205 -> [-0.9706205, 1.5706205]
    assert stats.mean_ci([0.2, 0.4]) == (
        pytest.approx(0.3),
        pytest.approx(-0.9706205, abs=1e-6),
        pytest.approx(1.5706205, abs=1e-6),
    )
    # 90 %: t_{0.95,9} = 1.833113; values 0..9: mean 4.5, s = 3.0276504, se = 0.9574271 -> half 1.7550718
    mean, low, high = stats.mean_ci(range(10), confidence=0.90)
    assert (mean, low, high) == (
        4.5,
        pytest.approx(4.5 - 1.7550718, abs=1e-5),
        pytest.approx(4.5 + 1.7550718, abs=1e-5),
    )


def test_mean_ci_degenerate_inputs():
    mean, low, high = stats.mean_ci([0.42])
    assert mean == 0.42 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in stats.mean_ci([]))
    assert stats.mean_ci([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    with pytest.raises(ValueError, match="non-finite"):
        stats.mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError):
        stats.mean_ci([0.1, 0.2], confidence=95)


# ----------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    "final, start, expected",
    [
        # start 0.5: collapse below 0.125, stable from 0.45
        (0.124, 0.5, "collapsed"),
        (0.125, 0.5, "partial"),  # exactly collapse_frac * start is not "< ..."
        (0.449, 0.5, "partial"),
        (0.45, 0.5, "stable"),  # exactly stable_frac * start is stable
        (0.8, 0.5, "stable"),
        # ratios of small integers that float rounding puts on the wrong side without the slack
        (0.27, 0.3, "stable"),  # 0.9 * 0.3 = 0.27000000000000002
        (0.075, 0.3, "partial"),  # 0.25 * 0.3 = 0.075
        # absolute rule: needs start >= 0.08 and final <= 0.02
        (0.02, 0.08, "collapsed"),
        (0.021, 0.08, "near_zero"),  # not collapsed, below the 0.05 floor
        (0.02, 0.079, "near_zero"),  # start below the guard; 0.02 >= 0.25*0.079, < floor
        (0.0, 0.079, "collapsed"),  # 0 < 0.25 * 0.079 (relative rule)
        (0.0, 0.0, "near_zero"),  # a student at 0 cannot collapse, nor is 0% "stable"
        (0.008, 0.006, "near_zero"),  # 0.6% -> 0.8%: the relative rule alone said "stable"
        (0.05, 0.0, "stable"),  # exactly the floor is not below it
        (0.049, 0.01, "near_zero"),
        (0.06, 0.08, "partial"),  # above the floor: the relative rule decides
        (0.02, 0.9, "collapsed"),
    ],
)
def test_classify_status_edges(final, start, expected):
    assert stats.classify_status(final, start) == expected


def test_classify_status_custom_thresholds_and_validation():
    t = stats.default_status_thresholds()
    assert (t.collapse_frac, t.collapse_abs, t.collapse_abs_min_start, t.stable_frac,
            t.floor) == (0.25, 0.02, 0.08, 0.9, 0.05)
    t.stable_frac = 1.0
    assert stats.classify_status(0.45, 0.5, t) == "partial"
    assert stats.classify_status(0.5, 0.5, t) == "stable"
    for bad in [(float("nan"), 0.5), (58.6, 60.0), (0.5, None), (True, 0.5)]:
        with pytest.raises(ValueError):
            stats.classify_status(*bad)


# ----------------------------------------------------------------------------- whole curves


def test_transient_collapse_on_a_constructed_curve():
    # the context teacher_seeded run of the old report: 49% -> 8% at step 10 -> recovered
    assert stats.classify_curve([0.49, 0.08, 0.45, 0.48]) == "transient_collapse"
    assert stats.classify_curve([0.49, 0.45, 0.48]) == "stable"
    assert stats.classify_curve([0.49, 0.08, 0.01]) == "collapsed"  # collapsed at the end wins
    assert stats.classify_curve([0.49, 0.30, 0.40]) == "partial"
    assert stats.classify_curve([0.49]) == "stable"  # only step 0
    with pytest.raises(ValueError, match="at least one"):
        stats.classify_curve([])


# ----------------------------------------------------------------------------- seeds x questions


def _exact_two_way_bootstrap(m):
    """Exact distribution of the two-way bootstrap mean, by enumerating every resample."""
    import itertools

    s, q = m.shape
    out = []
    for rows in itertools.product(range(s), repeat=s):
        for cols in itertools.product(range(q), repeat=q):
            out.append(m[np.ix_(rows, cols)].mean())
    return np.array(out)  # equally likely outcomes


def test_bootstrap_matches_the_exact_resampling_distribution():
    m = np.array([[1, 0, 1], [0, 0, 1]], dtype=float)
    exact = _exact_two_way_bootstrap(m)
    draws = stats.bootstrap_means(m, n_boot=200_000, seed=1)
    assert abs(draws.mean() - exact.mean()) < 3e-3
    assert abs(draws.std() - exact.std()) < 3e-3
    for q in (0.025, 0.5, 0.975):
        assert abs(np.quantile(draws, q) - np.quantile(exact, q)) <= 1 / 6 + 1e-9  # grid of 1/6


def test_bootstrap_ci_of_one_seed_is_the_binomial_normal_interval():
    rng = np.random.default_rng(0)
    x = (rng.random((1, 2000)) < 0.3).astype(float)
    mean, lo, hi = stats.bootstrap_ci(x, n_boot=20_000)
    half = 1.96 * np.sqrt(mean * (1 - mean) / x.shape[1])
    assert abs((hi - lo) / 2 - half) < 0.1 * half


def test_bootstrap_ci_widens_with_seed_noise():
    rng = np.random.default_rng(0)
    q = 512
    same = np.repeat((rng.random((1, q)) < 0.5).astype(float), 5, axis=0)  # seeds agree
    differ = (rng.random((5, q)) < rng.uniform(0.2, 0.8, size=(5, 1))).astype(float)
    w_same = np.subtract(*stats.bootstrap_ci(same)[2:0:-1])
    w_differ = np.subtract(*stats.bootstrap_ci(differ)[2:0:-1])
    assert w_differ > 2 * w_same


def test_paired_bootstrap_cancels_shared_question_difficulty():
    rng = np.random.default_rng(0)
    easy = rng.random(400) < 0.5  # shared per-question difficulty
    a = np.tile(easy, (3, 1)).astype(float)
    b = a.copy()
    flip = rng.choice(400, size=12, replace=False)
    b[:, flip] = 0.0
    a[:, flip] = 1.0  # a is better on 12 questions, equal elsewhere
    paired = stats.paired_bootstrap(a, b, n_boot=5000)
    assert paired["diff"] == pytest.approx(a.mean() - b.mean())
    assert paired["low"] > 0 and paired["p"] < 0.01
    null = stats.paired_bootstrap(a, a, n_boot=5000)
    assert null["diff"] == 0.0 and null["p"] == 1.0
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_bootstrap(a, b[:2])


def test_holm_against_hand_computed_values():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02 0.03 0.06 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(stats.holm([0.02]), [0.02])
    with pytest.raises(ValueError):
        stats.holm([1.2])


# ----------------------------------------------------------------------------- seed-level inference


def _seed_dominant_world(rng, seeds, questions=512, mu=0.5, seed_sd=0.1):
    """[S, Q] 0/1 results whose between-seed spread dominates: p[s, q] = mu + u_s + v_q,
    u_s ~ N(0, seed_sd) (the training seed), v_q ~ U(-0.3, 0.3) (question difficulty, a fresh
    eval set per simulated study). The estimand is mu: the mean over seeds and questions."""
    u = rng.normal(0.0, seed_sd, size=(seeds, 1))
    v = rng.uniform(-0.3, 0.3, size=(1, questions))
    p = np.clip(mu + u + v, 0.0, 1.0)
    return (rng.random(p.shape) < p).astype(float)


@pytest.mark.parametrize("seeds", [3, 5])
def test_seed_interval_covers_with_few_seeds_where_the_two_way_bootstrap_does_not(seeds):
    """500 simulated studies: the seed-level interval covers mu in >= 90% of them with 3 and 5
    seeds; the two-way percentile bootstrap, which the report used before, covers far less."""
    rng = np.random.default_rng(0)
    sims, hit_t, hit_boot = 500, 0, 0
    for i in range(sims):
        m = _seed_dominant_world(rng, seeds)
        r = stats.seed_interval(m)
        hit_t += r["low"] <= 0.5 <= r["high"]
        if i < 150:  # the bootstrap is slower; 150 studies show its gap
            _, lo, hi = stats.bootstrap_ci(m, n_boot=1000, seed=i)
            hit_boot += lo <= 0.5 <= hi
    cov_t, cov_boot = hit_t / sims, hit_boot / 150
    print(f"\nCOVERAGE seeds={seeds}: seed_interval {cov_t:.3f}, two-way bootstrap {cov_boot:.3f}")
    assert cov_t >= 0.9
    assert cov_boot < cov_t - 0.05


def test_seed_interval_against_hand_computed_values():
    m = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]], float)
    r = stats.seed_interval(m)
    per_seed, per_q = m.mean(1), m.mean(0)
    se = np.sqrt(per_seed.var(ddof=1) / 3 + per_q.var(ddof=1) / 4)
    assert r["mean"] == pytest.approx(m.mean()) and r["se"] == pytest.approx(se)
    assert r["high"] - r["mean"] == pytest.approx(4.302652729911275 * se)  # t(0.975, 2)
    import scipy.stats

    assert r["p"] == pytest.approx(2 * scipy.stats.t.sf(m.mean() / se, 2))
    one = stats.seed_interval(m[:1])  # one seed: nothing at the seed level
    assert one["n"] == 1 and np.isnan(one["low"]) and np.isnan(one["p"])
    same = stats.seed_interval(np.zeros((3, 4)))
    assert (same["low"], same["high"], same["p"]) == (0.0, 0.0, 1.0)
    assert stats.seed_interval(np.full((3, 4), 0.25))["p"] == 0.0
    with pytest.raises(ValueError, match="matrix"):
        stats.seed_interval(np.zeros(3))
