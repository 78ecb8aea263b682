"""Retention of every method: each benchmark a run scored at step 0 and at its end
(`eval.benchmarks`, `cliffdistill.run.benchmarks`), paired on the same documents.

Per run the change is (end - step 0) on the same documents. Over a group's seeds the change is
averaged and its 95% interval is the Student-t interval over the per-seed changes (the seed is
the replicate, as everywhere in the report); a group with one seed shows that run's interval over
documents instead, marked "docs" (it ignores seed-to-seed variation, so it is narrower than a
seed-level interval would be).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from cliffdistill import stats
from cliffdistill.report.aggregate import CORRECT, run_entries, variant_name
from cliffdistill.run import benchmarks, rundir


def run_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per (run, task) with a step-0 and an end score: setup, method, variant, seed,
    task, before, after, diff, its document-level interval, n documents."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for entry in run_entries(sweep_dir)[1]:
        rdir = sweep_dir / rundir.RUNS_SUBDIR / str(entry["name"])
        cfg = rundir.read_json(rdir / rundir.CONFIG_FILE) or {}
        for task, r in benchmarks.retention(benchmarks.run_root(rdir)).items():
            rows.append({"setup": str(cfg.get("setup_label") or cfg.get("setup", "default")),
                         "method": str(cfg.get("method", "default")),
                         "variant": variant_name(cfg.get("ablation", {})),
                         "seed": cfg.get("seed"), "task": task, **r})
    return rows


def group(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows pooled over seeds per (setup, task, variant, method), in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setup"], r["task"], r["variant"], r["method"]), []).append(r)
    out = []
    for (setup, task, variant, method), rs in groups.items():
        diffs = [r["diff"] for r in rs]
        mean, low, high = stats.mean_ci(diffs)
        basis = "seeds"
        if len(rs) == 1:
            low, high = rs[0]["diff_ci"]
            basis = "docs"
        out.append({"setup": setup, "task": task, "variant": variant, "method": method,
                    "seeds": len(rs), "n": rs[0]["n"],
                    "before": stats.mean_ci([r["before"] for r in rs])[0],
                    "after": stats.mean_ci([r["after"] for r in rs])[0],
                    "diff": mean, "diff_ci": [low, high], "ci_basis": basis,
                    "per_seed": [r["diff"] for r in sorted(rs, key=lambda r: str(r["seed"]))]})
    return out


def _pp(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:+.1f}"


def markdown(groups: Sequence[Mapping[str, Any]], variants: Sequence[str] = (CORRECT,)) -> list[str]:
    """The retention table (accuracy at step 0 and at the end, change in points with its 95% CI
    and the per-seed changes), one row per setup x benchmark x method."""
    shown = [g for g in groups if g["variant"] in variants]
    if not shown:
        return ["(no run scored a benchmark at step 0 and at its end: set `eval.benchmarks.tasks`)"]
    out = ["| setup | benchmark | method | seeds | docs | step 0 | end | change (pp) | 95% CI (pp) "
           "| per-seed changes (pp) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in shown:
        low, high = g["diff_ci"]
        ci = f"[{_pp(low)}, {_pp(high)}]" + (" docs" if g["ci_basis"] == "docs" else "")
        out.append(f"| {g['setup']} | {g['task']} | {g['method']} | {g['seeds']} | {g['n']} | "
                   f"{stats.pct(g['before'], unit='%')} | {stats.pct(g['after'], unit='%')} | "
                   f"{_pp(g['diff'])} | {ci} | {', '.join(_pp(d) for d in g['per_seed'])} |")
    return out
