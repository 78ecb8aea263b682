"""REPORT.md and results.csv from `aggregate()`'s output."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from cliffdistill.engine.defects import TRAINING_DEFECTS, defect_applies
from cliffdistill import stats
from cliffdistill.engine import methods
from cliffdistill.report.aggregate import (BASELINE_TITLES, CORRECT, COST_FIELDS, DIAG_FIELDS,
                                           mean_of, method_rank)
from cliffdistill.stats import finite, pct

STATUS_HEADER = " / ".join(stats.STATUSES)  # the order of a status-count cell


def _acc_ci(mean: Any, low: Any, high: Any, n: int) -> str:
    """``58.6 ± 3.1`` (percent, half-width of the 95% CI); no interval gives ``58.6 (1 seed)``."""
    if not finite(mean):
        return "n/a"
    if finite(low) and finite(high):
        return f"{pct(mean)} ± {100.0 * (high - low) / 2.0:.1f}"
    return f"{pct(mean)} ({n} seed{'s' if n != 1 else ''})"


def pp(x: Any) -> str:
    return f"{100.0 * x:+.1f} pp" if finite(x) else "n/a"


def compact_count(x: Any) -> str:
    """Compact counts: 950, 12.3k, 4.56M, 7.89G."""
    if not finite(x):
        return "n/a"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def label(g: Mapping) -> str:
    return g["method"] if g["variant"] == CORRECT else f"{g['method']} [{g['variant']}]"


def _status_counts(g: Mapping) -> str:
    c = g["status_counts"]
    text = " / ".join(str(c.get(s, 0)) for s in stats.STATUSES)
    extra = sorted(k for k in c if k not in stats.STATUSES)
    return text + "".join(f", {k}: {c[k]}" for k in extra)


def setup_groups(agg: Mapping, setup: str) -> list[dict]:
    return [g for g in agg["groups"] if g["setup"] == setup]


def main_groups(groups: Sequence[Mapping]) -> list[Mapping]:
    """The correct implementation of every method; every group when the sweep ran no correct one."""
    correct = [g for g in groups if g["variant"] == CORRECT]
    return correct if correct else list(groups)


def student_step0(agg: Mapping, setup: str) -> tuple[Optional[float], str]:
    """The student's step-0 accuracy: baseline file, else the mean step-0 accuracy of the runs."""
    rec = (agg["baselines"].get(setup) or {}).get("student")
    if rec:
        return rec["accuracy"], "baseline"
    starts = [r["start_accuracy"] for r in agg["runs"] if r["setup"] == setup and r["start_source"] == "run"]
    return (mean_of(starts), "runs") if starts else (None, "")


def _intro(agg: Mapping, generated_at: Optional[str]) -> list[str]:
    """Title, run counts and how accuracy, CIs and status are defined."""
    out: list[str] = []
    th = agg["status_thresholds"]
    c = agg["counts"]
    out += [f"# Sweep report: {agg['name']}", ""]
    if generated_at:
        out += [f"Generated at {generated_at}.", ""]
    out += [
        f"Runs: {c['runs']} ({c['done']} done, {c['failed']} failed, {c['pending']} not finished).",
        "",
        "Accuracy is held-out accuracy in % at the last evaluation of each finished run; "
        "`±` is the half-width of the seed-level 95 % CI. Baseline CIs are Wilson 95 % intervals. "
        f"Status per run (final `f` vs the run's step-0 accuracy `s`): **collapsed** if f < {th['collapse_frac']}·s, "
        f"or s ≥ {th['collapse_abs_min_start']} and f ≤ {th['collapse_abs']}; otherwise **near_zero** if "
        f"f < {th['floor']} (an absolute floor); otherwise **stable** if "
        f"f ≥ {th['stable_frac']}·s; otherwise **partial** (the trainer's recorded status wins when present).",
        "",
    ]
    return out


def _baselines_section(agg: Mapping, setup: str) -> list[str]:
    """The step-0 baselines of one setup (student, teacher, teacher + context)."""
    out: list[str] = []
    out += ["### Baselines", ""]
    base = agg["baselines"].get(setup) or {}
    rows = []
    for role, title in BASELINE_TITLES.items():
        rec = base.get(role)
        if rec:
            ci = f"[{pct(rec['ci_low'])}, {pct(rec['ci_high'])}]"
            n = rec["n"] if rec["n"] is not None else "n/a"
            rows.append([title, pct(rec["accuracy"]), ci, n])
    if "student" not in base or not base.get("student"):
        s0, src = student_step0(agg, setup)
        if src == "runs":
            rows.insert(0, ["student (step 0, mean of runs)", pct(s0), "n/a", "n/a"])
    if setup in agg["baseline_errors"]:
        out += [f"Baselines failed: {_cell(agg['baseline_errors'][setup])}", ""]
    out += table(["model", "accuracy (%)", "95% CI (Wilson)", "n"], rows) if rows else ["No baselines."]
    out.append("")
    return out


def _results_section(agg: Mapping, groups: Sequence[Mapping]) -> list[str]:
    """The study's table: the correct implementation of every method."""
    out: list[str] = []
    c = agg["counts"]
    main = main_groups(groups)
    out += [
        "### Results"
        + (" (correct implementation)" if any(g["variant"] == CORRECT for g in groups) else ""),
        "",
    ]
    rows = []
    for g in main:
        row = [
            label(g),
            pct(g["start_mean"]),
            _acc_ci(g["final_mean"], g["final_ci_low"], g["final_ci_high"], g["n_done"]),
            _status_counts(g),
            pp(g["delta_mean"]),
            pct(g["best_mean"]),
            _study_cell(g),
            g["n_done"],
            g["n_failed"],
        ]
        if c["pending"]:
            row.append(g["n_pending"])
        rows.append(row)
    header = [
        "method",
        "step 0 (%)",
        "final accuracy (%) ± 95% CI",
        STATUS_HEADER,
        "Δ vs student step 0",
        "best (%)",
        "study protocol (%): step 0 -> final",
        "seeds",
        "failed",
    ]
    out += table(header + (["unfinished"] if c["pending"] else []), rows) if rows else ["No runs."]
    out += ["", "CI: seed level -- Student's t over seeds (S - 1 df) on the per-seed results, its "
            "standard error widened by the held-out set's question-sampling variance; one seed "
            "has no interval.",
            "", "Study protocol: the same checkpoints scored the study's way "
            "(`ablation.study_eval`: the first `eval.study_n` *training* questions, "
            "`eval.study_max_new_tokens`), beside the held-out accuracy; `-` where not recorded.",
            ""]
    return out


def _study_cell(g: Mapping) -> str:
    if not finite(g.get("study_final_mean")):
        return "-"
    return f"{pct(g.get('study_start_mean'))} -> {pct(g['study_final_mean'])}"


def _ablations_section(groups: Sequence[Mapping]) -> list[str]:
    """Every variant (study defects on) next to the correct one; empty without variants."""
    out: list[str] = []
    variants = sorted({g["variant"] for g in groups}, key=lambda v: (v != CORRECT, v))
    if len(variants) > 1:
        out += ["### Ablations (study defects switched on) side by side", ""]
        index = {(g["method"], g["variant"]): g for g in groups}
        methods = sorted({g["method"] for g in groups}, key=method_rank)
        rows = []
        for m in methods:
            row = [m]
            for v in variants:
                g = index.get((m, v))
                if g is None:
                    row.append("= correct (untouched)" if _untouched(m, v, groups) else "–")
                    continue
                acc = _acc_ci(g["final_mean"], g["final_ci_low"], g["final_ci_high"], g["n_done"])
                row.append(f"{acc} ({_status_counts(g)})")
            rows.append(row)
        out += table(["method"] + variants, rows)
        out += ["", f"Cells: accuracy (%) ± 95% CI ({STATUS_HEADER}).", ""]
    return out


def _untouched(method: str, variant: str, groups: Sequence[Mapping]) -> bool:
    """No defect of `variant` changes any step of `method` (its run would equal the correct one)."""
    defects = variant.split("+")
    setup = groups[0]["setup"] if groups else ""
    return (variant != CORRECT and set(defects) <= set(TRAINING_DEFECTS)
            and method in methods.METHODS
            and not any(defect_applies(d, method, setup) for d in defects))


def _diagnostics_section(groups: Sequence[Mapping]) -> list[str]:
    """Degeneration signals of the final evals (a cliff usually shows here first)."""
    out: list[str] = []
    # Degeneration signals of the final evals (a cliff usually shows here first); skipped
    # when the trainer logged none of them.
    diag = [g for g in groups if any(v is not None for v in g["final_diagnostics"].values())]
    if diag:
        out += ["### Final-eval diagnostics (mean over seeds)", ""]
        rows = []
        for g in diag:
            d = g["final_diagnostics"]
            length = f"{d['mean_length']:.1f}" if finite(d["mean_length"]) else "n/a"
            rows.append([label(g), length] + [pct(d[f]) for f in DIAG_FIELDS[1:]])
        out += table(["method", "mean length", "truncated (%)", "empty (%)", "repetitive (%)"], rows)
        out.append("")
    return out


def _cost_section(agg: Mapping, setup: str) -> list[str]:
    """Tokens, seconds per phase and device-hours per method of one setup."""
    out: list[str] = []
    out += ["### Cost", ""]
    cost = agg["cost"]["by_setup_method"].get(setup, {})
    rows = [_cost_row(m, cm) for m, cm in cost.items()]
    if rows:
        rows.append(_cost_row("**total**", agg["cost"]["by_setup"][setup]))
    out += (
        table(
            [
                "method",
                "runs",
                "tokens sampled",
                "tokens scored",
                "tokens trained",
                "rollout s",
                "score s",
                "update s",
                "eval s",
                "step s",
                "device-h",
                "USD",
            ],
            rows,
        )
        if rows
        else ["No runs."]
    )
    out.append("")
    return out


def _plots_section(plots: Mapping[str, Sequence[str]], setup: str) -> list[str]:
    """The setup's plot images."""
    out: list[str] = []
    if plots.get(setup):
        out += ["### Plots", ""]
        for rel in plots[setup]:
            out += [f"![{Path(rel).stem}]({rel})", ""]
    return out


def _closing(agg: Mapping) -> list[str]:
    """Failed runs, runs whose config changed mid-run, and the total cost of the sweep."""
    out: list[str] = []
    changed = [r for r in agg["runs"] if r.get("config_changes")]
    if changed:
        out += ["## Runs whose config changed mid-run", "",
                "Resumed with `--allow_config_change`: each is one run only up to the step named.", ""]
        out += table(["run", "change"], [[r["name"], c] for r in changed for c in r["config_changes"]])
        out.append("")
    failed = [r for r in agg["runs"] if r["state"] == "failed"]
    if failed:
        out += ["## Failed runs", ""]
        out += table(["run", "error"], [[r["name"], r["error"] or "unknown"] for r in failed])
        out.append("")
    total = agg["cost"]["total"]
    out += [
        "## Total cost",
        "",
        f"{total['runs']} runs, {compact_count(total['tokens_sampled'])} tokens sampled, "
        f"{compact_count(total['tokens_scored'])} scored, {compact_count(total['tokens_trained'])} trained; "
        f"{total['device_hours']:.3f} device-hours, ${total['usd']:.2f}.",
        "",
    ]
    return out


def render_markdown(
    agg: Mapping, plots: Mapping[str, Sequence[str]], generated_at: Optional[str] = None
) -> str:
    """REPORT.md: per setup baselines, the study's table, ablations side by side, cost, plots."""
    out = _intro(agg, generated_at)
    for setup in agg["setups"]:
        groups = setup_groups(agg, setup)
        out += [f"## Setup `{setup}`", ""]
        out += _baselines_section(agg, setup)
        out += _results_section(agg, groups)
        out += _ablations_section(groups)
        out += _diagnostics_section(groups)
        out += _cost_section(agg, setup)
        out += _plots_section(plots, setup)
    out += _closing(agg)
    return "\n".join(out)


def _cost_row(label: str, c: Mapping) -> list[str]:
    return [
        label,
        str(c["runs"]),
        compact_count(c["tokens_sampled"]),
        compact_count(c["tokens_scored"]),
        compact_count(c["tokens_trained"]),
        f"{c['seconds_rollout']:.1f}",
        f"{c['seconds_score']:.1f}",
        f"{c['seconds_update']:.1f}",
        f"{c['seconds_eval']:.1f}",
        f"{c['seconds_step']:.1f}",
        f"{c['device_hours']:.3f}",
        f"{c['usd']:.2f}",
    ]


_CSV_COLUMNS = (
    "setup",
    "method",
    "variant",
    "n_done",
    "n_failed",
    "n_pending",
    "final_mean",
    "final_ci_low",
    "final_ci_high",
    "final_per_seed",
    "seeds",
    "stable",
    "partial",
    "collapsed",
    "near_zero",
    "transient_collapse",
    "best_mean",
    "best_max",
    "start_mean",
    "delta_mean",
    "mean_length",
    "truncation_rate",
    "empty_rate",
    "repetition_rate",
) + COST_FIELDS


def _csv_value(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return "" if v is None else str(v).lower()
    if isinstance(v, float):
        return format(v, ".10g") if math.isfinite(v) else ""
    if isinstance(v, (list, tuple)):
        return ";".join(_csv_value(x) for x in v)
    return str(v)


def render_csv(agg: Mapping) -> str:
    """results.csv: one row per (setup, method, variant)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_COLUMNS)
    for g in agg["groups"]:
        row = {**g, **g["status_counts"], **g["final_diagnostics"], **{f: g["cost"][f] for f in COST_FIELDS}}
        w.writerow([_csv_value(row.get(col)) for col in _CSV_COLUMNS])
    return buf.getvalue()
