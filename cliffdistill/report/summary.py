"""The compact tables a reader sees first (RESULTS.md): one row per method of a setup, then one
row per verdict. Legends are returned once, beside the tables, never inside the cells."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cliffdistill import stats
from cliffdistill.report import claims
from cliffdistill.report.aggregate import CORRECT, method_rank
from cliffdistill.report.markdown import compact_count, table
from cliffdistill.stats import finite, pct

#: The method every other one is compared with, seed by seed (the study's headline method).
REFERENCE = "teacher_seeded"

STATUS_LEGEND = ("status: seeds ending " + " / ".join(stats.STATUSES)
                 + " (the rule: docs/METRICS.md)")


def status_cell(g: Mapping) -> str:
    """``3/0/0/0``: the group's seeds per status, in `stats.STATUSES` order."""
    c = g["status_counts"]
    return "/".join(str(c.get(s, 0)) for s in stats.STATUSES)


def _interval(mean, low, high) -> str:
    """``58.3 [52.1, 64.5]`` (percent); ``58.3`` alone when there is no interval (one seed)."""
    if not finite(mean):
        return "n/a"
    if finite(low) and finite(high):
        return f"{pct(mean)} [{pct(low)}, {pct(high)}]"
    return pct(mean)


def _signed(x) -> str:
    return f"{100.0 * x:+.1f}"


def _paired(r: Mapping) -> str:
    """``+4.2 [-1.0, +9.4]`` pp (a - b, seed-level 95% interval), or the difference alone."""
    if finite(r["low"]) and finite(r["high"]):
        return f"{_signed(r['diff'])} [{_signed(r['low'])}, {_signed(r['high'])}]"
    return f"{_signed(r['diff'])} (1 seed)"


def vs_reference(groups: Mapping[str, Mapping]) -> dict[str, str]:
    """method -> its paired seed-level difference with `REFERENCE` (method - reference, pp)."""
    pairs = claims.pairwise(groups)
    out = {}
    for (a, b), r in pairs.items():
        if REFERENCE == b:
            out[a] = _paired(r)
        elif REFERENCE == a:
            out[b] = _paired({"diff": -r["diff"], "low": -r["high"], "high": -r["low"]})
    return out


def method_table(agg: Mapping, setup: str) -> list[str]:
    """The correct implementation of every method of `setup`: step 0, final with its seed-level
    95% CI, each seed's final, the paired difference with teacher_seeded, the tokens a run
    trained on, and the seeds' statuses."""
    groups = {g["method"]: g for g in agg["groups"]
              if g["setup"] == setup and g["variant"] == CORRECT and g["n_done"] > 0}
    diffs = vs_reference(groups)
    rows = []
    for m in sorted(groups, key=method_rank):
        g = groups[m]
        cost = g["cost"]
        rows.append([m, pct(g["start_mean"]),
                     _interval(g["final_mean"], g["final_ci_low"], g["final_ci_high"]),
                     " / ".join(pct(f) for f in g["final_per_seed"]),
                     "(reference)" if m == REFERENCE else diffs.get(m, "n/a"),
                     compact_count(cost["tokens_trained"] / max(cost["runs"], 1)), status_cell(g)])
    if not rows:
        return ["(no finished run of the correct implementation)"]
    return table(["method", "step 0 (%)", "final (%) [95% CI]", "final per seed (%)",
                  f"- {REFERENCE} (pp) [95% CI]", "tokens trained / run", "status"], rows)


METHOD_LEGEND = (
    "final: the last held-out evaluation; 95% CI at the seed level (Student's t over seeds on "
    "S - 1 df, its standard error widened by the held-out set's question-sampling variance; one "
    "seed has none). `- " + REFERENCE + "`: the paired seed-level difference (seed i with seed i, "
    "same questions), not corrected for multiple comparisons (the verdicts' Holm test is). "
    "tokens trained / run: completion tokens in the run's loss terms, summed over its steps "
    "(methods do not train on equal token budgets). " + STATUS_LEGEND + ".")


def verdict_table(verdicts: Sequence[Mapping]) -> list[str]:
    """claim | setup | verdict | the numbers | rule: one row per verdict, the rules said once
    below (`claims.RULES`)."""
    rows = [[v["claim"], v["setup"], f"**{v['verdict']}**", v["evidence"], f"`{v['rule']}`"]
            for v in verdicts]
    return (table(["claim", "setup", "verdict", "the numbers (correct implementation unless "
                   "stated)", "rule"], rows)
            + ["", "Numbers: `method final% [status]`, " + STATUS_LEGEND + ". Rules:", ""]
            + [f"- `{k}`: {t}" for k, t in claims.RULES.items()])
