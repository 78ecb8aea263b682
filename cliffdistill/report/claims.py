"""Verdicts on the study's claims from `aggregate()`'s output (rules in `study_claims`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from cliffdistill import methods, stats, testbed
from cliffdistill.report.aggregate import CORRECT
from cliffdistill.report.markdown import finite, pct, pp, table


def _methods_where(pred: Callable[[methods.StepPlan], bool], every: bool) -> tuple[str, ...]:
    """Methods (study order) whose default schedule satisfies `pred` at any (every) step."""
    test = all if every else any
    return tuple(m for m in methods.METHODS
                 if test(pred(methods.get(m)(s)) for s in range(methods.num_steps(m))))


# Derived from the schedules, so a new or changed method lands in the right claim by itself.
OFF_POLICY_METHODS = _methods_where(lambda p: p.off_weight > 0, every=False)
ON_POLICY_METHODS = _methods_where(  # pure on-policy: no off-policy part, no teacher seeding
    lambda p: p.on_weight > 0 and p.off_weight == 0 and p.seed_tokens == 0, every=True)
# "not testable": the setup fails the testbed's headroom checks (cliffdistill.testbed.gate_claims)
VERDICTS = ("supported", "contradicted", "inconclusive", "no data", testbed.NOT_TESTABLE)


def _groups_of(agg: Mapping, setup: str, variant: str) -> dict[str, Mapping]:
    return {g["method"]: g for g in agg["groups"]
            if g["setup"] == setup and g["variant"] == variant and g["n_done"] > 0}


def _fmt_group(g: Mapping) -> str:
    counts = g["status_counts"]
    cells = "/".join(str(counts.get(s, 0)) for s in stats.STATUSES)
    return f"{g['method']} {pct(g['final_mean'])} ({cells} {'/'.join(stats.STATUSES)})"


def _majority(g: Mapping, status: str) -> bool:
    return g["status_counts"].get(status, 0) * 2 > g["n_done"]


def _claim_off_policy_collapse(groups: Mapping[str, Mapping]) -> tuple[str, str]:
    off = [groups[m] for m in OFF_POLICY_METHODS if m in groups]
    if not off:
        return "no data", ""
    evidence = "; ".join(_fmt_group(g) for g in off)
    if all(_majority(g, "collapsed") for g in off):
        return "supported", evidence
    if any(_majority(g, "stable") for g in off):
        return "contradicted", evidence
    return "inconclusive", evidence


def _claim_on_policy_works(groups: Mapping[str, Mapping]) -> tuple[str, str]:
    on = [groups[m] for m in ON_POLICY_METHODS if m in groups]
    if not on:
        return "no data", ""
    parts, verdicts = [], []
    for g in on:
        mean, low, high = stats.mean_ci(g["delta_per_seed"]) if g["delta_per_seed"] else (None,) * 3
        parts.append(f"{g['method']}: {pct(g['start_mean'])} -> {pct(g['final_mean'])} "
                     f"(gain {pp(mean)}, 95% CI {pp(low)} to {pp(high)})")
        if mean is None:
            verdicts.append("no data")
        elif finite(low) and low > 0:
            verdicts.append("supported")
        elif finite(high) and high < 0 or _majority(g, "collapsed"):
            verdicts.append("contradicted")
        elif not finite(low) and mean > 0 and _majority(g, "stable"):
            verdicts.append("supported")  # one seed: no CI; a gain with a stable run
        else:
            verdicts.append("inconclusive")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
    return verdict, "; ".join(parts)


def _claim_seeding_best(groups: Mapping[str, Mapping]) -> tuple[str, str]:
    if "teacher_seeded" not in groups or len(groups) < 2:
        return "no data", ""
    ranked = sorted(groups.values(), key=lambda g: -(g["final_mean"] or 0.0))
    ts = groups["teacher_seeded"]
    best, runner = ranked[0], ranked[1]
    evidence = ", ".join(f"{g['method']} {pct(g['final_mean'])}" for g in ranked[:4])
    if best is ts:
        separated = finite(ts["final_ci_low"]) and ts["final_ci_low"] > (runner["final_mean"] or 0)
        return ("supported" if separated else "inconclusive"), evidence + (
            "" if separated else " (best mean, but within the CI of the runner-up)")
    if finite(best["final_ci_low"]) and best["final_ci_low"] > (ts["final_mean"] or 0):
        return "contradicted", evidence
    return "inconclusive", evidence + " (teacher_seeded not best, within noise)"


def _claim_defects_cause_cliff(correct: Mapping[str, Mapping], defects: Mapping[str, Mapping]
                               ) -> tuple[str, str]:
    pairs = [(m, correct[m], defects[m]) for m in OFF_POLICY_METHODS if m in correct and m in defects]
    if not pairs:
        return "no data", ""
    evidence = "; ".join(f"{m}: correct {pct(c['final_mean'])} vs defects {pct(d['final_mean'])}"
                         for m, c, d in pairs)
    collapsed_only_with_defects = [m for m, c, d in pairs
                                   if _majority(d, "collapsed") and not _majority(c, "collapsed")]
    if len(collapsed_only_with_defects) * 2 > len(pairs):
        return "supported", evidence
    if not collapsed_only_with_defects:
        return "contradicted", evidence
    return "inconclusive", evidence


def study_claims(agg: Mapping) -> list[dict]:
    """A verdict per (claim, setup) from the aggregated numbers, with the evidence behind it.

    Rules (status = the majority of a group's seeds, see `stats.classify_status`):
    * "off-policy collapses": supported if every method with an off-policy part is mostly
      collapsed under the *correct* implementation; contradicted if any is mostly stable.
    * "pure on-policy works": supported if the across-seed 95% CI of the accuracy gain over the
      step-0 student is above 0; contradicted if it is below 0 or the runs mostly collapse.
    * "teacher seeding is best": supported if teacher_seeded has the highest mean and its CI
      lies above the runner-up's mean; contradicted if another method's CI lies above it.
    * "the cliff comes from the study's defects" (our question): supported if most off-policy
      methods collapse with the defects switched on but not in the correct implementation.
    Anything in between is "inconclusive"; a missing group is "no data".
    """
    out = []
    for setup in agg["setups"]:
        correct = _groups_of(agg, setup, CORRECT)
        variants = sorted({g["variant"] for g in agg["groups"] if g["setup"] == setup} - {CORRECT})
        defects = _groups_of(agg, setup, variants[-1]) if variants else {}
        for claim, (verdict, evidence) in (
            ("Every method with an off-policy part collapses", _claim_off_policy_collapse(correct)),
            ("Pure on-policy distillation works", _claim_on_policy_works(correct)),
            ("Teacher seeding is the best method", _claim_seeding_best(correct)),
            ("The collapse is produced by the study's implementation defects",
             _claim_defects_cause_cliff(correct, defects)),
        ):
            out.append({"claim": claim, "setup": setup, "verdict": verdict, "evidence": evidence,
                        "defects_variant": variants[-1] if variants else None})
    return out


def render_claims(verdicts: Sequence[Mapping]) -> list[str]:
    rows = [[v["claim"], v["setup"], f"**{v['verdict']}**", v["evidence"]] for v in verdicts]
    return table(["claim", "setup", "verdict", "evidence (correct implementation unless stated)"],
                  rows)
