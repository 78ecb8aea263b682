"""Verdicts on the study's claims from `aggregate()`'s output (rules in `study_claims`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import ml_collections
import numpy as np

from cliffdistill.engine.defects import TRAINING_DEFECTS, defect_applies
from cliffdistill import stats
from cliffdistill.engine import methods
from cliffdistill.study import testbed
from cliffdistill.report.aggregate import CORRECT, SEED_LEVEL, question_matrix
from cliffdistill.report.markdown import pp
from cliffdistill.stats import finite, pct


# Derived from the schedules, so a new or changed method lands in the right claim by itself.
# Extension methods are left out: the claims are about the study's rows.
_SUMMARIES = {m: methods.plan_summary(m) for m in methods.STUDY_METHODS}
OFF_POLICY_METHODS = tuple(m for m, u in _SUMMARIES.items() if u.off)
ON_POLICY_METHODS = tuple(  # pure on-policy: no off-policy part, no teacher seeding
    m for m, u in _SUMMARIES.items() if u.on and not u.off and not u.seed)
# "not testable": the setup fails the testbed's headroom checks (cliffdistill.study.testbed.gate_claims)
VERDICTS = ("supported", "contradicted", "inconclusive", "no data", testbed.NOT_TESTABLE)
# Outcomes of the cliff-pattern rule (`cliff_pattern`), one per (setup, implementation variant).
REPRODUCES, DESTROYS, NO_CLIFF = "reproduces the study's cliff", "destroys every method", "no cliff"
PATTERNS = (REPRODUCES, DESTROYS, NO_CLIFF, "inconclusive", "no data", testbed.NOT_TESTABLE)
Thresholds = ml_collections.ConfigDict  # stats.default_claim_thresholds(): alpha, majority


def _t(t: Optional[Thresholds]) -> Thresholds:
    return t if t is not None else stats.default_claim_thresholds()


def _groups_of(agg: Mapping, setup: str, variant: str) -> dict[str, Mapping]:
    """The variant's finished groups by method. For a defect variant, a study method that none of
    its defects touches (`setup.defect_applies`) and that did not run under it takes the correct
    implementation's group: its run would be identical (tests/test_defects.py), so the factorial
    skips it."""
    def finished(v: str) -> dict[str, Mapping]:  # study methods only: extensions run in the
        # same sweep neither enter nor change a claim (e.g. Holm's family)
        return {g["method"]: g for g in agg["groups"] if g["method"] in methods.STUDY_METHODS
                and g["setup"] == setup and g["variant"] == v and g["n_done"] > 0}

    groups = finished(variant)
    if variant == CORRECT:
        return groups
    defects = variant.split("+")
    if not set(defects) <= set(TRAINING_DEFECTS):
        return groups
    for m, g in finished(CORRECT).items():
        if m not in groups and m in methods.STUDY_METHODS and not any(
                defect_applies(d, m, setup) for d in defects):
            groups[m] = {**g, "variant": variant, "reused_from": CORRECT}
    return groups


def _fmt_group(g: Mapping) -> str:
    """``hybrid 58.3 [3/0/0/0]``: final accuracy (%) and the seeds per status (`stats.STATUSES`
    order; the legend is printed once, under the verdict table)."""
    counts = g["status_counts"]
    return f"{g['method']} {pct(g['final_mean'])} [{'/'.join(str(counts.get(s, 0)) for s in stats.STATUSES)}]"


#: What "collapses" means in a claim: the seed ended collapsed vs its step 0, or ended near zero
#: (`stats.NEAR_ZERO`: below the absolute floor, where a fall from step 0 cannot be measured).
COLLAPSE_LIKE = ("collapsed", stats.NEAR_ZERO)


def _majority(g: Mapping, status: str | tuple[str, ...], t: Optional[Thresholds] = None) -> bool:
    """More than `majority` of the group's finished seeds ended with `status` (or one of them)."""
    wanted = (status,) if isinstance(status, str) else status
    n = sum(g["status_counts"].get(s, 0) for s in wanted)
    return n > _t(t).majority * g["n_done"]


def _claim_off_policy_collapse(groups: Mapping[str, Mapping], t: Optional[Thresholds] = None
                               ) -> tuple[str, str]:
    off = [groups[m] for m in OFF_POLICY_METHODS if m in groups]
    if not off:
        return "no data", ""
    evidence = "; ".join(_fmt_group(g) for g in off)
    if all(_majority(g, COLLAPSE_LIKE, t) for g in off):
        return "supported", evidence
    if any(_majority(g, "stable", t) for g in off):
        return "contradicted", evidence
    return "inconclusive", evidence


def gain_ci(g: Mapping) -> tuple[Optional[float], Optional[float], Optional[float], str]:
    """(gain over step 0, 95% low, high, how) at the seed level: `stats.seed_interval` of the
    per-question differences final - the same run's step 0 when per-question results exist, else
    the t-interval of the per-seed gains. One seed: no interval (the claim is then undecided)."""
    final, start = _matrix(g, "final_per_question"), _matrix(g, "start_per_question")
    if final is not None and start is not None and final.shape == start.shape:
        r = stats.seed_interval(final - start)
        return r["mean"], r["low"], r["high"], SEED_LEVEL
    if not g["delta_per_seed"]:
        return None, None, None, ""
    mean, low, high = stats.mean_ci(g["delta_per_seed"])
    return mean, low, high, "t over seeds"


def _claim_on_policy_works(groups: Mapping[str, Mapping], t: Optional[Thresholds] = None
                           ) -> tuple[str, str]:
    on = [groups[m] for m in ON_POLICY_METHODS if m in groups]
    if not on:
        return "no data", ""
    parts, verdicts = [], []
    for g in on:
        mean, low, high, how = gain_ci(g)
        parts.append(f"{g['method']}: {pct(g['start_mean'])} -> {pct(g['final_mean'])} "
                     f"(gain {pp(mean)}, 95% CI {pp(low)} to {pp(high)}, {how}; "
                     f"{g['n_done']} seed(s))")
        if mean is None:
            verdicts.append("no data")
        elif finite(low) and low > 0:
            verdicts.append("supported")
        elif finite(high) and high < 0 or _majority(g, COLLAPSE_LIKE, t):
            verdicts.append("contradicted")
        else:
            verdicts.append("inconclusive")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
    return verdict, "; ".join(parts)


def _matrix(g: Mapping, field: str = "final_per_question") -> Optional[np.ndarray]:
    """[seeds, questions] 0/1 matrix of a group's evals, or None when a run did not record it."""
    return question_matrix(g.get(field) or [])


def pairwise(groups: Mapping[str, Mapping]) -> dict[tuple[str, str], dict]:
    """Seed-level paired test (`stats.seed_interval` of a - b) of every pair of methods, Holm-
    adjusted over the family of every pair with a p-value.

    Methods are paired on the same questions and on seed index (seed i of one with seed i of the
    other; the first min(S_a, S_b) seeds). Keys (a, b) with a before b in the study's order;
    values: diff = mean(a) - mean(b), its 95% interval, p, the Holm-adjusted p and the family
    size `m`. A pair with one seed has no p (NaN): it is descriptive, outside the Holm family.
    """
    mats = {m: _matrix(g) for m, g in groups.items()}
    names = [m for m in methods.METHODS if mats.get(m) is not None]
    out: dict[tuple[str, str], dict] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            k = min(mats[a].shape[0], mats[b].shape[0])
            if mats[a].shape[1] == mats[b].shape[1]:
                r = stats.seed_interval(mats[a][:k] - mats[b][:k])
                out[(a, b)] = {"diff": r["mean"], "low": r["low"], "high": r["high"], "p": r["p"],
                               "n": r["n"]}
    family = [r for r in out.values() if finite(r["p"])]
    for r, p_adj in zip(family, stats.holm([r["p"] for r in family]) if family else []):
        r["p_holm"], r["m"] = float(p_adj), len(family)
    for r in out.values():
        r.setdefault("p_holm", math.nan)
        r.setdefault("m", len(family))
    return out


def _beats(pairs: Mapping[tuple[str, str], dict], a: str, b: str, alpha: float) -> bool:
    """a is significantly better than b after Holm correction at family-wise level `alpha`."""
    if (a, b) in pairs:
        r = pairs[(a, b)]
        return r["p_holm"] <= alpha and r["diff"] > 0
    r = pairs.get((b, a))
    return r is not None and r["p_holm"] <= alpha and r["diff"] < 0


def best_method(groups: Mapping[str, Mapping], pairs: Mapping[tuple[str, str], dict],
                t: Optional[Thresholds] = None) -> Optional[str]:
    """The method that beats every other one after Holm correction, or None (no significant
    winner). Never the post-hoc highest mean alone."""
    names = {m for pair in pairs for m in pair}
    for m in sorted(names):
        if all(_beats(pairs, m, other, _t(t).alpha) for other in names - {m}):
            return m
    return None


def claim_seeding_best(groups: Mapping[str, Mapping], t: Optional[Thresholds] = None
                       ) -> tuple[str, str]:
    if "teacher_seeded" not in groups or len(groups) < 2:
        return "no data", ""
    pairs = pairwise(groups)
    if not any("teacher_seeded" in pair for pair in pairs):
        return "no data", "no per-question results recorded"
    ranked = sorted(groups.values(), key=lambda g: -(g["final_mean"] or 0.0))
    evidence = ", ".join(f"{g['method']} {pct(g['final_mean'])}" for g in ranked[:4])
    m = next(iter(pairs.values()))["m"]
    if m == 0:
        return "inconclusive", evidence + "; descriptive only: one seed per method, no test"
    evidence += f"; paired seed-level t-tests, Holm over the {m} method pairs"
    winner = best_method(groups, pairs, t)
    beaten_by = [m for m in groups
                 if m != "teacher_seeded" and _beats(pairs, m, "teacher_seeded", _t(t).alpha)]
    if winner == "teacher_seeded":
        return "supported", evidence + "; teacher_seeded beats every other method (Holm)"
    if beaten_by:
        return "contradicted", evidence + f"; significantly better than teacher_seeded (Holm): " \
            + ", ".join(beaten_by)
    return "inconclusive", evidence + (f"; best method: {winner}" if winner else
                                       "; no significant winner")


def _collapses(g: Mapping, reference: Optional[Mapping], t: Optional[Thresholds] = None,
               status_t: Optional[ml_collections.ConfigDict] = None) -> bool:
    """A group collapses under a variant: most of its seeds end collapsed (vs their own step 0),
    or, for a defect variant, its mean is collapsed relative to the same method implemented
    correctly (`reference`). The second test is what makes "collapse" meaningful when the
    step-0 student is already near 0% (nothing can fall below it: 0.0% would read "stable"):
    ending at 0% where the correct implementation reaches 90% is the study's collapse, and
    falling from 65% to 4% is not surviving because the step-0 student had 11%."""
    if _majority(g, COLLAPSE_LIKE, t):
        return True
    if reference is None or not finite(g.get("final_mean")) or not finite(reference.get("final_mean")):
        return False
    return stats.classify_status(g["final_mean"], reference["final_mean"], status_t) == "collapsed"


def cliff_pattern(groups: Mapping[str, Mapping], reference: Optional[Mapping[str, Mapping]] = None,
                  t: Optional[Thresholds] = None,
                  status_t: Optional[ml_collections.ConfigDict] = None) -> tuple[str, str]:
    """The study's picture in one rule: every method with an off-policy part collapses AND every
    pure on-policy method survives (`_collapses`: most seeds collapsed vs step 0, or, under a
    defect variant, the mean collapsed relative to the correct implementation's, `reference`).

    reproduces the study's cliff: off-policy parts all collapse, pure on-policy all survive;
    destroys every method: everything collapses, pure on-policy included; no cliff: some method
    with an off-policy part does not collapse; inconclusive: some but not all pure on-policy
    methods survive; no data: a side of the comparison has no finished runs. `status_t`: the
    status thresholds of the comparison with the correct implementation (default
    `stats.default_status_thresholds`).
    """
    off = [groups[m] for m in OFF_POLICY_METHODS if m in groups]
    on = [groups[m] for m in ON_POLICY_METHODS if m in groups]
    if not off or not on:
        return "no data", ""
    evidence = "; ".join(_fmt_group(g) for g in off + on)
    if reference:
        evidence += "; when implemented correctly: " + ", ".join(
            f"{g['method']} {pct(reference[g['method']]['final_mean'])}" for g in off + on
            if g["method"] in reference)
    ref = reference or {}
    if not all(_collapses(g, ref.get(g["method"]), t, status_t) for g in off):
        return NO_CLIFF, evidence
    survived = [not _collapses(g, ref.get(g["method"]), t, status_t) for g in on]
    if all(survived):
        return REPRODUCES, evidence
    return (DESTROYS if not any(survived) else "inconclusive"), evidence


def status_thresholds_at(collapse_frac: float) -> ml_collections.ConfigDict:
    """The default status thresholds with another `collapse_frac` (the sensitivity analysis)."""
    st = stats.default_status_thresholds()
    st.collapse_frac = float(collapse_frac)
    return st


def groups_at(groups: Mapping[str, Mapping], status_t: ml_collections.ConfigDict
              ) -> Optional[dict[str, Mapping]]:
    """The groups with each seed's final status re-derived under `status_t` from its final and
    step-0 accuracies (`stats.classify_status`), or None when some seed lacks them."""
    out = {}
    for m, g in groups.items():
        finals, starts = g.get("final_per_seed") or [], g.get("start_per_seed") or []
        if len(finals) != g["n_done"] or len(starts) != len(finals) or not all(
                finite(x) for x in finals + starts):
            return None
        counts = {s: 0 for s in stats.STATUSES}
        for f, s0 in zip(finals, starts):
            counts[stats.classify_status(f, s0, status_t)] += 1
        out[m] = {**g, "status_counts": counts}
    return out


def collapse_margin(groups: Mapping[str, Mapping], reference: Optional[Mapping[str, Mapping]]
                    ) -> str:
    """How far the decision nearest to the relative collapse threshold is from it: of the groups
    the cliff pattern reads, the one whose mean final is closest to `collapse_frac` x its basis
    (the correct implementation's mean under a defect variant, else its own step 0), in pp."""
    frac = stats.default_status_thresholds().collapse_frac
    best = None
    for m in OFF_POLICY_METHODS + ON_POLICY_METHODS:
        g = groups.get(m)
        if g is None:
            continue
        basis = (reference or {}).get(m, {}).get("final_mean") if reference else g.get("start_mean")
        if not finite(g.get("final_mean")) or not finite(basis):
            continue
        margin = g["final_mean"] - frac * basis
        if best is None or abs(margin) < abs(best[1]):
            best = (m, margin, g["final_mean"], basis)
    if best is None:
        return ""
    m, margin, final, basis = best
    of = "its correct run" if reference else "its step 0"
    return (f"closest to the collapse threshold: {m} {pct(final)} vs {pct(frac * basis)} "
            f"({frac:g} x {pct(basis)}, {of}), {pp(margin)}")


def missing_affected(groups: Mapping[str, Mapping], setup: str, variant: str) -> list[str]:
    """Study methods a defect variant's defects touch on `setup` that did not run under it."""
    defects = variant.split("+")
    if variant == CORRECT or not set(defects) <= set(TRAINING_DEFECTS):
        return []
    return [m for m in methods.STUDY_METHODS if m not in groups
            and any(defect_applies(d, m, setup) for d in defects)]


def _claim_defects_cause_cliff(patterns: Mapping[str, str]) -> tuple[str, str]:
    """supported: some defect variant reproduces the cliff pattern and the correct implementation
    does not; contradicted: the correct implementation reproduces it itself; otherwise
    inconclusive (e.g. the tested variants destroy every method: another combination might
    still produce the selective cliff)."""
    if CORRECT not in patterns or len(patterns) < 2:
        return "no data", ""
    evidence = "; ".join(f"{v}: {p}" for v, p in patterns.items())
    reproducing = [v for v, p in patterns.items() if v != CORRECT and p == REPRODUCES]
    if patterns[CORRECT] == REPRODUCES:
        return "contradicted", evidence
    if reproducing:
        return "supported", evidence
    return "inconclusive", evidence


RULES = {
    "off_policy_collapses": "supported if every method with an off-policy part ends collapsed (or "
                            "near zero) in most seeds; contradicted if any ends stable in most "
                            "seeds",
    "on_policy_works": "supported if the 95% CI of the gain over step 0 (seed level: t over "
                       "seeds on the per-seed paired gains, widened by question-sampling "
                       "variance; needs >= 2 seeds) is above 0; contradicted if below 0 or most "
                       "seeds collapse (or end near zero)",
    "seeding_best": "paired seed-level t-test between every pair of methods (seed i with seed "
                    "i, same questions), Holm-corrected at `eval.claims.alpha` over every pair: "
                    "supported if teacher_seeded beats every other method, contradicted if "
                    "another method beats it, else no significant winner (one seed: descriptive)",
    "cliff_pattern": "reproduces the study's cliff iff every method with an off-policy part "
                     "collapses AND every pure on-policy method survives; a group collapses when "
                     "most seeds end collapsed vs their step 0 or near zero, or, under a defect "
                     "variant, its "
                     "mean is collapsed vs the same method implemented correctly; destroys "
                     "every method if pure on-policy collapses too; each row shows the decision "
                     "nearest to the collapse threshold (collapse_frac 0.25) and the pattern at "
                     "`eval.claims.collapse_frac_low` / `_high` (0.2 / 0.3), and names the "
                     "methods a defect touches that did not run under it",
    "defects_cause_cliff": "supported if some defect variant reproduces the cliff pattern and the "
                           "correct implementation does not; contradicted if the correct "
                           "implementation reproduces it; else inconclusive",
}


def _patterns_at(by_variant: Mapping[str, Mapping[str, Mapping]], collapse_frac: float,
                 t: Thresholds) -> Optional[dict[str, str]]:
    """Every variant's cliff pattern with the status rule's `collapse_frac` moved to
    `collapse_frac` (seed statuses and the comparison with the correct implementation), or None
    when some seed's accuracies are not recorded."""
    st = status_thresholds_at(collapse_frac)
    regrouped = {v: groups_at(gs, st) for v, gs in by_variant.items()}
    if any(gs is None for gs in regrouped.values()):
        return None
    correct = regrouped.get(CORRECT, {})
    return {v: cliff_pattern(gs, None if v == CORRECT else correct, t, st)[0]
            for v, gs in regrouped.items()}


def _sensitivity_note(verdicts: Mapping[float, Optional[str]]) -> str:
    """``at collapse_frac 0.2 / 0.3: no cliff / no cliff``, or "" without the numbers."""
    if not verdicts or any(v is None for v in verdicts.values()):
        return ""
    fracs = sorted(verdicts)
    return (f"at collapse_frac {' / '.join(f'{f:g}' for f in fracs)}: "
            + " / ".join(verdicts[f] for f in fracs))


def study_claims(agg: Mapping) -> list[dict]:
    """A verdict per (claim, setup[, variant]) from the aggregated numbers, with the rule that
    decided it and the evidence behind it (rules: `RULES`; status = the majority of a group's
    seeds, see `stats.classify_curve`). Every implementation variant gets a cliff-pattern row."""
    out = []
    t = ml_collections.ConfigDict(agg.get("claim_thresholds") or stats.default_claim_thresholds())
    for setup in agg["setups"]:
        variants = sorted({g["variant"] for g in agg["groups"] if g["setup"] == setup},
                          key=lambda v: (v != CORRECT, v.count("+"), v))
        by_variant = {v: _groups_of(agg, setup, v) for v in variants}
        correct = by_variant.get(CORRECT, {})
        judged = {v: cliff_pattern(gs, None if v == CORRECT else correct, t)
                  for v, gs in by_variant.items()}
        patterns = {v: p for v, (p, _) in judged.items()}
        fracs = (t.get("collapse_frac_low"), t.get("collapse_frac_high"))
        at = {f: _patterns_at(by_variant, f, t) for f in fracs if f is not None}
        for v, (p, evidence) in judged.items():
            notes = [collapse_margin(by_variant[v], None if v == CORRECT else correct),
                     _sensitivity_note({f: ps.get(v) if ps else None for f, ps in at.items()})]
            missing = missing_affected(by_variant[v], setup, v)
            if missing:
                notes.append("not run under this variant though it touches them: "
                             + ", ".join(missing))
            judged[v] = (p, "; ".join([evidence] + [n for n in notes if n]))
        defects_verdict, defects_evidence = _claim_defects_cause_cliff(patterns)
        defects_note = _sensitivity_note(
            {f: _claim_defects_cause_cliff(ps)[0] if ps else None for f, ps in at.items()})
        if defects_note:
            defects_evidence += "; " + defects_note
        rows = [
            ("Every method with an off-policy part collapses", "off_policy_collapses", CORRECT,
             _claim_off_policy_collapse(correct, t)),
            ("Pure on-policy distillation works", "on_policy_works", CORRECT,
             _claim_on_policy_works(correct, t)),
            ("Teacher seeding is the best method", "seeding_best", CORRECT,
             claim_seeding_best(correct, t)),
            ("The study's picture is produced by its implementation defects",
             "defects_cause_cliff", None, (defects_verdict, defects_evidence)),
        ]
        rows += [(f"Cliff pattern under `{v}`", "cliff_pattern", v, judged[v]) for v in by_variant]
        for claim, rule, variant, (verdict, evidence) in rows:
            out.append({"claim": claim, "setup": setup, "variant": variant, "rule": rule,
                        "rule_text": RULES[rule], "verdict": verdict, "evidence": evidence})
    return out
