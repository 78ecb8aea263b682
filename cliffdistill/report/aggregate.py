"""Reading a sweep directory's run files and aggregating them into the report's numbers.

`aggregate(sweep_dir)` is a pure function of the files (see the package docstring for what
counts where); everything downstream (markdown, CSV, plots, claims) reads only its output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import ml_collections
import numpy as np

from cliffdistill import stats
from cliffdistill.engine import methods
from cliffdistill.run import integrity, rundir
from cliffdistill.run.rundir import BASELINE_TITLES, read_json, read_jsonl
from cliffdistill.engine.defects import EVAL_ONLY_SWITCHES

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "REPORT.md"
PLOTS_DIR = "plots"
CORRECT = "correct"
_TOKEN_KEYS = {
    "tokens_sampled": "tokens/sampled",
    "tokens_scored": "tokens/scored",
    "tokens_trained": "tokens/trained",
}
_TIME_KEYS = {
    "seconds_rollout": "time/rollout",
    "seconds_score": "time/score",
    "seconds_update": "time/update",
    "seconds_eval": "time/eval",
    "seconds_step": "time/step",
}
COST_FIELDS = tuple(_TOKEN_KEYS) + tuple(_TIME_KEYS) + ("flops", "device_hours", "usd")
DIAG_FIELDS = ("mean_length", "truncation_rate", "empty_rate", "repetition_rate")
# Per-step training metrics (metrics.jsonl, on-policy steps) the report draws aligned on each
# method's switch point, beside held-out accuracy.
STEP_SERIES = ("entropy", "reverse_kl", "teacher_score", "truncation_rate", "repetition_rate")

# ----------------------------------------------------------------------------- reading run files


def by_step(records: Iterable[Mapping]) -> list[dict]:
    """One record per step (the last one written wins: a resumed run re-logs steps), sorted by step."""
    latest: dict[int, dict] = {}
    for rec in records:
        try:
            step = int(rec["step"])
        except (KeyError, TypeError, ValueError):
            continue
        latest[step] = dict(rec)
    return [latest[s] for s in sorted(latest)]


def _num(value: Any) -> Optional[float]:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def variant_name(ablation: Any) -> str:
    """``correct`` when no training defect is on, else the switched-on names joined by ``+``
    (``study_eval`` adds an evaluation protocol and changes no training: not part of the name)."""
    if not isinstance(ablation, Mapping):
        return CORRECT
    on = []
    for key in sorted(k for k in ablation if k not in EVAL_ONLY_SWITCHES):
        value = ablation[key]
        if value is True:
            on.append(str(key))
        elif value not in (False, None, 0, "", "none", "off"):
            on.append(f"{key}={value}")
    return "+".join(on) if on else CORRECT


def _switch_step(method: str, schedule: Any) -> int:
    """The method's switch step under the run's own schedule config (0 for unknown methods)."""
    if method not in methods.METHODS:
        return 0
    cfg = ml_collections.ConfigDict(schedule) if isinstance(schedule, Mapping) else None
    return methods.switch_step(method, cfg)


def run_entries(sweep_dir: Path) -> tuple[str, list[dict]]:
    """(sweep name, run entries) from sweep.json, or from scanning runs/*/ without one."""
    manifest = read_json(sweep_dir / rundir.SWEEP_FILE)
    if manifest is not None:
        return str(manifest.get("name", "sweep")), list(manifest.get("runs", []))
    runs_dir = sweep_dir / rundir.RUNS_SUBDIR
    entries = (
        [{"name": p.name} for p in sorted(runs_dir.iterdir()) if p.is_dir()] if runs_dir.is_dir() else []
    )
    return "sweep", entries


def summarize_run(sweep_dir: Path, entry: Mapping, student_baseline: Mapping[str, float]) -> dict:
    """Everything the report needs from one run dir (plus its per-step series under ``_series``)."""
    name = str(entry["name"])
    rdir = sweep_dir / rundir.RUNS_SUBDIR / name
    cfg = read_json(rdir / rundir.CONFIG_FILE) or {}
    status = read_json(rdir / rundir.STATUS_FILE)

    def key(field: str, default: Any) -> Any:
        return cfg[field] if field in cfg else entry.get(field, default)

    setup = str(key("setup_label", "") or key("setup", "default"))
    ablation = key("ablation", {})
    run: dict[str, Any] = {
        "name": name,
        "setup": setup,
        "method": str(key("method", "default")),
        "seed": key("seed", None),
        "variant": variant_name(ablation),
        "state": str(status.get("state", "missing")) if status else "missing",
        "error": None,
        "final_step": status.get("final_step") if status else None,
    }
    changes = integrity.history_lines(rdir)  # accepted mid-run config changes (rare; shown)
    if changes:
        run["config_changes"] = changes
    error_text = str((status or {}).get("error") or "").strip()
    if error_text:
        run["error"] = error_text.splitlines()[0][:300]  # first line: tracebacks hold paths

    evals = by_step(read_jsonl(rdir / rundir.EVAL_FILE))
    metrics = by_step(read_jsonl(rdir / rundir.METRICS_FILE))
    acc = [(int(e["step"]), _num(e.get("accuracy"))) for e in evals]
    acc = [(s, a) for s, a in acc if a is not None]
    run["eval_curve"] = [[s, a] for s, a in acc]
    start = next((a for s, a in acc if s == 0), None)
    start_source = "run"
    if start is None and setup in student_baseline:
        start, start_source = student_baseline[setup], "baseline"
    run["start_accuracy"], run["start_source"] = start, (start_source if start is not None else None)
    final_rec = next((e for e in reversed(evals) if _num(e.get("accuracy")) is not None), None)
    run["final_accuracy"] = _num(final_rec.get("accuracy")) if final_rec else None
    run["final_eval_step"] = int(final_rec["step"]) if final_rec else None
    after = [a for s, a in acc if s > 0]
    run["best_accuracy"] = max(after) if after else (max(a for _, a in acc) if acc else None)
    run["final_diagnostics"] = {f: _num(final_rec.get(f)) for f in DIAG_FIELDS} if final_rec else {}
    # per-question correctness ("1"/"0" per held-out question) of step 0 and the final eval
    first = next((e for e in evals if int(e["step"]) == 0), None)
    run["start_per_question"] = first.get("per_question") if first else None
    run["final_per_question"] = final_rec.get("per_question") if final_rec else None
    final_status = None
    if final_rec is not None:
        recorded = final_rec.get("status")
        if isinstance(recorded, str) and recorded:
            final_status = recorded
        elif start is not None:
            try:
                final_status = stats.classify_status(run["final_accuracy"], start)
            except ValueError:  # e.g. accuracy logged in % -- shown as "invalid", never a crash
                final_status = "invalid"
    # Status from the whole curve: an intermediate evaluation recorded (or classified) as
    # collapsed turns a final "stable"/"partial" into "transient_collapse".
    mid = [e for e in evals if e is not final_rec and int(e["step"]) > 0
           and _num(e.get("accuracy")) is not None]
    mid_status = [e.get("status") or (stats.classify_status(_num(e["accuracy"]), start)
                                      if start is not None else None) for e in mid]
    if final_status in ("stable", "partial") and "collapsed" in mid_status:
        final_status = stats.TRANSIENT
    run["final_status"] = final_status
    run["min_accuracy"] = min(after) if after else None
    run["delta_vs_start"] = (
        run["final_accuracy"] - start if run["final_accuracy"] is not None and start is not None else None
    )

    cost: dict[str, Any] = {}
    for out_key, metric_key in {**_TOKEN_KEYS, **_TIME_KEYS, "flops": "flops"}.items():
        cost[out_key] = math.fsum(v for m in metrics if (v := _num(m.get(metric_key))) is not None)
    status_cost = (status or {}).get("cost") or {}
    cost["device_hours"] = _num(status_cost.get("device_hours")) or 0.0
    cost["usd"] = _num(status_cost.get("usd")) or 0.0
    cost["wall_seconds"] = _num((status or {}).get("wall_seconds"))
    run["cost"] = cost
    run["_series"] = {f: [(int(m["step"]), v) for m in metrics if (v := _num(m.get(f))) is not None]
                      for f in STEP_SERIES}
    # the study's protocol on the same checkpoints (ablation.study_eval): first train questions
    study = [(int(e["step"]), _num((e.get("study") or {}).get("accuracy"))) for e in evals]
    study = [(st, a) for st, a in study if a is not None]
    run["switch_step"] = _switch_step(run["method"], cfg.get("schedule"))
    run["study_start_accuracy"] = next((a for st, a in study if st == 0), None)
    run["study_final_accuracy"] = study[-1][1] if study else None
    return run


# ----------------------------------------------------------------------------- aggregation


def method_rank(method: str) -> tuple[int, str]:
    order = methods.STUDY_METHODS + methods.EXTENSION_METHODS  # the study's table, then extensions
    return (order.index(method), "") if method in order else (len(order), method)


def _group_sort_key(key: tuple[str, str, str]) -> tuple:
    setup, method, variant = key
    return (setup, method_rank(method), variant != CORRECT, variant)


#: How a group's CI and the claims' intervals are computed (`stats.seed_interval`).
SEED_LEVEL = "t over seeds + question noise"


def question_matrix(per_question: Sequence[Optional[str]]) -> Optional[np.ndarray]:
    """[seeds, questions] 0/1 matrix from the runs' `per_question` strings ("1"/"0" per held-out
    question), or None when a run did not record one or the runs differ in questions."""
    rows = list(per_question)
    if not rows or not all(rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.array([[c == "1" for c in r] for r in rows], dtype=np.float64)


def final_ci(values: Sequence[float], per_question: Sequence[Optional[str]] = ()) -> dict:
    """Mean and 95% CI of a group's final accuracy at the seed level: `stats.seed_interval` (t over
    seeds, widened by the eval set's question-sampling variance) when every run recorded
    per-question results on the same questions, else a t-interval over the seeds' accuracies.
    One seed has no interval (NaN): its question noise alone says nothing about another seed."""
    matrix = question_matrix(per_question)
    if matrix is not None and len(matrix) == len(values):
        r = stats.seed_interval(matrix)
        mean, low, high, how = r["mean"], r["low"], r["high"], SEED_LEVEL
    else:
        (mean, low, high), how = stats.mean_ci(values), "t over seeds"
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": len(values), "how": how}


def _curve(points_per_run: Iterable[Iterable[tuple[int, float]]]) -> dict:
    """Mean and t-CI across runs at every step any run logged."""
    per_step: dict[int, list[float]] = {}
    for points in points_per_run:
        for step, value in points:
            per_step.setdefault(int(step), []).append(float(value))
    out: dict[str, list] = {"steps": [], "mean": [], "ci_low": [], "ci_high": [], "n": []}
    for step in sorted(per_step):
        mean, low, high = stats.mean_ci(per_step[step])
        out["steps"].append(step)
        out["mean"].append(mean)
        out["ci_low"].append(low)
        out["ci_high"].append(high)
        out["n"].append(len(per_step[step]))
    return out


def _sum_costs(runs: Sequence[Mapping]) -> dict:
    total = {f: math.fsum(r["cost"][f] for r in runs) for f in COST_FIELDS}
    total["runs"] = len(runs)
    return total


def mean_of(values: Iterable[Optional[float]]) -> Optional[float]:
    vs = [v for v in values if v is not None]
    return math.fsum(vs) / len(vs) if vs else None


def _seed_key(seed: Any) -> tuple:
    """Numeric seeds in numeric order (2 before 10), anything else after them as text."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, str(seed))


def summarize_group(key: tuple[str, str, str], runs: Sequence[Mapping]) -> dict:
    """Across-seed statistics of one (setup, method, variant)."""
    setup, method, variant = key
    runs = sorted(runs, key=lambda r: (_seed_key(r["seed"]), r["name"]))
    done = [r for r in runs if r["state"] == "done" and r["final_accuracy"] is not None]
    finals = [r["final_accuracy"] for r in done]
    counts = {s: 0 for s in stats.STATUSES}
    for r in done:
        if r["final_status"] is not None:
            counts[r["final_status"]] = counts.get(r["final_status"], 0) + 1
    deltas = [r["delta_vs_start"] for r in done if r["delta_vs_start"] is not None]
    bests = [r["best_accuracy"] for r in done if r["best_accuracy"] is not None]
    starts = [r["start_accuracy"] for r in done if r["start_accuracy"] is not None]
    final = final_ci(finals, [r["final_per_question"] for r in done])
    return {
        "setup": setup,
        "method": method,
        "variant": variant,
        "seeds": [r["seed"] for r in done],
        "final_per_seed": finals,
        "start_per_seed": [r["start_accuracy"] for r in done],  # None where not recorded
        # [seed][question] 0/1 of the final and the step-0 evals (None where not recorded)
        "final_per_question": [r["final_per_question"] for r in done],
        "start_per_question": [r["start_per_question"] for r in done],
        "final_mean": final["mean"],
        "final_ci_low": final["ci_low"],
        "final_ci_high": final["ci_high"],
        "final_ci_how": final["how"],
        "n_done": len(done),
        "n_failed": sum(r["state"] == "failed" for r in runs),
        "n_pending": sum(r["state"] not in ("done", "failed") for r in runs),
        "n_done_without_eval": sum(r["state"] == "done" and r["final_accuracy"] is None for r in runs),
        "status_counts": counts,
        "best_mean": mean_of(bests),
        "best_max": max(bests) if bests else None,
        "start_mean": mean_of(starts),
        "delta_mean": mean_of(deltas),
        "delta_per_seed": deltas,
        "final_diagnostics": {f: mean_of(r["final_diagnostics"].get(f) for r in done) for f in DIAG_FIELDS},
        "study_final_mean": mean_of(r["study_final_accuracy"] for r in done),
        "study_start_mean": mean_of(r["study_start_accuracy"] for r in done),
        "switch_step": done[0]["switch_step"] if done else 0,
        "curves": {
            "accuracy": _curve([(s, a) for s, a in r["eval_curve"]] for r in done),
            **{f: _curve(r["_series"][f] for r in done) for f in STEP_SERIES},
        },
        "cost": _sum_costs(runs),
    }


def _baseline_record(rec: Any) -> Optional[dict]:
    """An EVAL record -> accuracy with a Wilson CI (recomputed from correct/n when both are given)."""
    if not isinstance(rec, Mapping):
        return None
    acc = _num(rec.get("accuracy"))
    correct, n = rec.get("correct"), rec.get("n")
    out = {
        "accuracy": acc,
        "ci_low": _num(rec.get("ci_low")),
        "ci_high": _num(rec.get("ci_high")),
        "n": n,
        "correct": correct,
    }
    if (
        isinstance(correct, int)
        and isinstance(n, int)
        and not isinstance(correct, bool)
        and 0 <= correct <= n
        and n > 0
    ):
        out["ci_low"], out["ci_high"] = stats.wilson_interval(correct, n)
        out["accuracy"] = correct / n if acc is None else acc
    return out if out["accuracy"] is not None else None


def read_baselines(sweep_dir: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """``({setup: {role: record}}, {setup: error})`` from ``baselines/``."""
    base_dir = sweep_dir / rundir.BASELINES_SUBDIR
    found: dict[str, dict] = {}
    failed: dict[str, str] = {}
    if not base_dir.is_dir():
        return found, failed
    for path in sorted(base_dir.glob("*.json")):
        if path.name.endswith(".failed.json"):
            info = read_json(path) or {}
            failed[path.name[: -len(".failed.json")]] = str(info.get("error", "unknown error"))
            continue
        data = read_json(path)
        if data is None:
            continue
        found[path.stem] = {role: _baseline_record(data.get(role)) for role in BASELINE_TITLES}
    return found, failed


def claim_thresholds(sweep_dir: Path, entries: Sequence[Mapping]) -> ml_collections.ConfigDict:
    """The verdict thresholds the runs were configured with (config `eval.claims`, read from the
    first run that has them), else `stats.default_claim_thresholds()`."""
    t = stats.default_claim_thresholds()
    for e in entries:
        cfg = read_json(sweep_dir / rundir.RUNS_SUBDIR / str(e["name"]) / rundir.CONFIG_FILE) or {}
        if (cfg.get("eval") or {}).get("claims"):
            t.update(cfg["eval"]["claims"])
            break
    return t


def aggregate(sweep_dir: str | Path) -> dict:
    """All numbers of the report, as plain JSON-able data (see the module docstring for definitions)."""
    sweep_dir = Path(sweep_dir)
    name, entries = run_entries(sweep_dir)
    baselines, baseline_errors = read_baselines(sweep_dir)
    student0 = {s: b["student"]["accuracy"] for s, b in baselines.items() if b.get("student")}
    runs = [summarize_run(sweep_dir, e, student0) for e in entries]

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["setup"], r["method"], r["variant"]), []).append(r)
    claim_t = claim_thresholds(sweep_dir, entries)
    group_list = [summarize_group(k, groups[k]) for k in sorted(groups, key=_group_sort_key)]

    setups = sorted({r["setup"] for r in runs} | set(baselines))
    cost_by_method: dict[str, dict[str, dict]] = {}
    for setup in setups:
        by_method: dict[str, list[dict]] = {}
        for r in runs:
            if r["setup"] == setup:
                by_method.setdefault(r["method"], []).append(r)
        cost_by_method[setup] = {m: _sum_costs(by_method[m]) for m in sorted(by_method, key=method_rank)}
    cost_by_setup = {s: _sum_costs([r for r in runs if r["setup"] == s]) for s in setups}

    for r in runs:
        r.pop("_series")
    states = [r["state"] for r in runs]
    return {
        "name": name,
        "counts": {
            "runs": len(runs),
            "done": states.count("done"),
            "failed": states.count("failed"),
            "pending": len(runs) - states.count("done") - states.count("failed"),
        },
        "status_thresholds": stats.default_status_thresholds().to_dict(),
        "claim_thresholds": claim_t.to_dict(),
        "setups": setups,
        "baselines": {s: baselines.get(s, {}) for s in setups},
        "baseline_errors": baseline_errors,
        "groups": group_list,
        "runs": runs,
        "cost": {"by_setup": cost_by_setup, "by_setup_method": cost_by_method, "total": _sum_costs(runs)},
    }
