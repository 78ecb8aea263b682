"""RESULTS.md of the main job: when, where and how it ran, the testbed's checks, the verdicts,
retention, the configuration and the full report; `publish` copies it into docs/."""


from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from cliffdistill.engine.defects import TRAINING_DEFECTS
from cliffdistill import report
from cliffdistill.report import retention as report_retention
from cliffdistill.report import summary as report_summary
from cliffdistill.run import rundir
from cliffdistill.study import testbed
from cliffdistill.stats import pct
from cliffdistill.study import toy_config
from cliffdistill.study import design
from cliffdistill.study import retention


CLAIMS_FILE = "claims.json"
CONFIG_FILE = "config.json"  # the testbed's and the sweep's settings, linked from RESULTS.md
#: Where `publish` puts RESULTS.md's companions (plots, claims, config, the full report) under docs/.
RESULTS_SUBDIR = "results"
RETENTION_JSON = "retention.json"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()][:1]}


def _config_summary(sweep_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The sweep's knobs without machine-specific paths, plus the toy run config's key values."""

    base = toy_config.get_config("size")
    z = sweep_cfg.zip
    runs: dict[str, int] = {}  # "setup / variant" -> number of runs (sweep.json lists each one)
    for i, setup in enumerate(z.setup):
        variant = "+".join(d for d in TRAINING_DEFECTS if z.ablation[d][i]) or "correct"
        runs[f"{setup} / {variant}"] = runs.get(f"{setup} / {variant}", 0) + 1
    return {
        "base_overrides": sweep_cfg.base_overrides.to_dict(), "runs": runs,
        "toy_run_config": {"lora": base.lora.to_dict(), "optim": base.optim.to_dict(),
                           "rollout": base.rollout.to_dict(), "loss": base.loss.to_dict(),
                           "data": {k: base.data[k] for k in ("n_train", "n_eval", "context_k")},
                           "eval": {k: base.eval[k] for k in ("max_new_tokens", "batch_size")}},
    }


def testbed_lines(tb: dict[str, Any]) -> list[str]:
    """The testbed section of RESULTS.md: what prepare measured, and whether each setup can
    answer the study's question (method-neutral checks only)."""
    s, x = tb["size"], tb["context"]

    def verdict(setup: dict[str, Any]) -> str:
        return "yes" if setup["testable"] else "**NOT TESTABLE**: " + "; ".join(setup["failed_checks"])

    lines = [
        "| setup | teacher | student | teacher - student | oracle (gain) | params teacher / student "
        "| testable |", "|---|---|---|---|---|---|---|",
        f"| size (unit value {s.get('value', '?')}) | {pct(s['teacher']['accuracy'], missing='-', unit='%')} | "
        f"{pct(s['student']['accuracy'], missing='-', unit='%')} (step {s['student']['snapshot_step']}; plain task "
        f"{pct(s['student'].get('plain_accuracy'), missing='-', unit='%')}) | "
        f"{100 * (s['teacher']['accuracy'] - s['student']['accuracy']):+.1f} pp | "
        f"{pct(s['oracle']['accuracy'], missing='-', unit='%')} ({100 * s['oracle_gain']:+.1f} pp) | "
        f"{s['teacher']['params']:,} / {s['student']['params']:,} ({s['param_ratio']:.1f}x) | "
        f"{verdict(s)} |",
        f"| context (values {', '.join(map(str, x['values']))}) | {pct(x['teacher']['accuracy'], missing='-', unit='%')} "
        f"(with context) | {pct(x['student']['accuracy'], missing='-', unit='%')} (without) | "
        f"{100 * (x['teacher']['accuracy'] - x['student']['accuracy']):+.1f} pp | "
        f"{pct(x['oracle']['accuracy'], missing='-', unit='%')} ({100 * x['oracle_gain']:+.1f} pp) | "
        f"{x['teacher']['params']:,} (one model) | {verdict(x)} |",
        *([f"| retrieval (the context setup, teacher reads a passage) | "
           f"{pct(tb['retrieval']['teacher']['accuracy'], missing='-', unit='%')} (with passage) | "
           f"{pct(tb['retrieval']['student']['accuracy'], missing='-', unit='%')} (without) | "
           f"{100 * (tb['retrieval']['teacher']['accuracy'] - tb['retrieval']['student']['accuracy']):+.1f} pp | "
           f"{pct(tb['retrieval']['oracle']['accuracy'], missing='-', unit='%')} ({100 * tb['retrieval']['oracle_gain']:+.1f} pp) | "
           f"(one model) | {verdict(tb['retrieval'])} |"] if "retrieval" in tb else []),
        "",
        "| context value | teacher (with context) | teacher (with passage) | format-only context "
        "| student (no context) | oracle |", "|---|---|---|---|---|---|",
        *(f"| {v} | {pct(r['teacher'], missing='-', unit='%')} | {pct(r.get('teacher_passage'), missing='-', unit='%')} | "
          f"{pct(r['format_only'], missing='-', unit='%')} | {pct(r['student'], missing='-', unit='%')} | {pct(r['oracle'], missing='-', unit='%')} |"
          for v, r in x["per_value"].items()),
        "",
        f"- eval: {tb['n_eval']} held-out problems per setup and value (95% half-width of one "
        f"evaluation at 50%: {100 * tb['eval_ci_halfwidth']:.1f} pp); eval solutions found "
        f"verbatim in the pretraining stream: {pct(tb['eval_pretrain_overlap'], missing='-', unit='%')}; mean answer "
        f"length {tb['mean_answer_tokens']:.1f} tokens.",
        f"- teacher seeding: {tb['seed_tokens']} tokens = {tb['seed_fraction']:.4f} of the "
        f"{tb['completion_budget']}-token completion budget (the study: 20 of 256).",
        "- oracle: the student with the runs' LoRA rank and step budget, trained by supervised "
        "NLL on the ground-truth solutions of the training prompts (method-neutral headroom).",
        "- format-only context: solved *plain* problems (the answer format, no unit value); a "
        "distilled context student above it learned more than the format.",
    ]
    return lines


def retention_rows(workdir: Path) -> list[dict[str, Any]]:
    """Every context run's retention record with its method and variant (from sweep.json)."""
    manifest = json.loads((workdir / rundir.SWEEP_FILE).read_text())
    rows = []
    for run in manifest["runs"]:
        path = workdir / rundir.RUNS_SUBDIR / run["name"] / RETENTION_JSON
        if run["setup"] == "context" and path.exists():
            rows.append({"method": run["method"], "variant": report.variant_name(run["ablation"]),
                         **json.loads(path.read_text())})
    return rows


def retention_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Plain-task accuracy of the context student before and after distillation, per method."""
    if not rows:
        return ["(no context run has a retention record)"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["method"]), []).append(r)
    out = ["| variant | method | plain accuracy before | after (mean over seeds) | change | n |",
           "|---|---|---|---|---|---|"]
    for (variant, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "correct",
                                                                         design.METHODS.index(kv[0][1])
                                                                         if kv[0][1] in design.METHODS else 99)):
        before = statistics.mean(r["before"] for r in rs)
        after = statistics.mean(r["after"] for r in rs)
        out.append(f"| {variant} | {method} | {pct(before, missing='-', unit='%')} | {pct(after, missing='-', unit='%')} | "
                   f"{100 * (after - before):+.1f} pp | {len(rs)} |")
    return out


def headroom_phrase(setup: dict[str, Any]) -> str:
    """How much of the teacher-student gap the method-neutral oracle closes, in words: the part
    it does not close is beyond what training the student on the ground truth reaches."""
    teacher, student, oracle = (setup[k]["accuracy"] for k in ("teacher", "student", "oracle"))
    gap, closed = teacher - student, oracle - student
    if gap <= 0:
        return "the student is not below the teacher, so there is no gap to close"
    share = min(max(closed / gap, 0.0), 1.0)
    where = ("most of the gap is capacity no method closes in these runs" if share < 0.5 else
             "most of the gap is within the student's reach")
    return (f"the oracle closes {pct(closed)} of the {pct(gap)} pp teacher-student gap "
            f"({share:.0%}): {where}")


def seeds_text(mode: design.Mode) -> str:
    size, context = mode.seeds("size"), mode.seeds("context")
    return f"{size} seeds" if size == context else f"{size} (size) and {context} (context) seeds"


def context_seed_text(mode: design.Mode, n_values: int) -> str:
    """Whether seed and context value are separate factors in the context setup."""
    per_value = mode.seeds("context") // n_values
    if per_value >= 2:
        return (f"seed i trains on context value i mod {n_values}, so each value has "
                f"{per_value} seeds: value and seed are separate factors")
    return ("one context value per seed, so seed variance there includes task heterogeneity "
            "(`--full`: two seeds per value)")


def limits_lines(tb: dict[str, Any], prepare_cfg: dict[str, Any], num_steps: int,
                 mode: design.Mode) -> list[str]:
    """What this testbed can and cannot show, in plain words, with its own numbers."""
    s, x = tb["size"], tb["context"]
    n_values = len(x.get("per_value") or {}) or 1
    return [
        f"The testbed is a miniature: toy models (a {s['student']['params']:,}-parameter student, "
        f"a {s['teacher']['params']:,}-parameter teacher), a synthetic arithmetic task, "
        f"{num_steps}-step runs and {seeds_text(mode)} per method. It can show whether the study's "
        "*mechanism* reproduces -- whether correctly implemented off-policy methods collapse, "
        "whether the study's implementation defects produce its cliff -- not what happens at "
        "4B-70B scale. The `size` setup's headroom is one fact (the value of a unit only the "
        f"teacher learned in pretraining): teacher {pct(s['teacher']['accuracy'])}%, student "
        f"{pct(s['student']['accuracy'])}%, and the method-neutral oracle (supervised training on "
        f"the ground truth) reaches {pct(s['oracle']['accuracy'])}% -- {headroom_phrase(s)}; the "
        "setup tests a knowledge gap, not the study's premise of a reasoning gap that mimicry "
        "fails to bridge. "
        f"Its teacher was pretrained for {prepare_cfg['teacher']['steps']:,} steps only, to fit "
        "the job's time budget (longer pretraining gives a stronger teacher: docs/PERFORMANCE.md). "
        f"The `context` setup distils a prompt (k solved examples; teacher {pct(x['teacher']['accuracy'])}%"
        f" with them, {pct(x['student']['accuracy'])}% without): {context_seed_text(mode, n_values)}"
        f". With {mode.seeds('size')} seeds a t-test has {mode.seeds('size') - 1} degree(s) of "
        "freedom: only large, consistent differences clear a Holm family "
        "of all method pairs.",
    ]


def defect_methods(sweep_cfg: ml_collections.ConfigDict) -> list[str]:
    """The methods that run under some defect in the sweep, in the study's order."""
    z = sweep_cfg.zip
    ran = {m for i, m in enumerate(z.method) if any(z.ablation[d][i] for d in TRAINING_DEFECTS)}
    return [m for m in design.METHODS if m in ran]


def write_results(workdir: Path, prepared: Any, invocation_seconds: float, mode: design.Mode,
                  sweep_cfg: ml_collections.ConfigDict, workers: int = 1) -> Path:
    """RESULTS.md, readable top to bottom in minutes: when/where/how it ran, what the testbed can
    show, one compact table per setup, the verdicts, plots, retention, the testbed's checks.
    The configuration goes to config.json and the full report stays in REPORT.md (linked)."""
    agg = report.aggregate(workdir)
    tb = prepared.testbed
    verdicts = testbed.gate_claims(report.study_claims(agg), tb)
    m = machine()
    num_steps = sweep_cfg.base_overrides.schedule.num_steps
    config = {"testbed": prepared.report["config"], "runs": _config_summary(sweep_cfg)}
    rundir.write_text(workdir / CONFIG_FILE, json.dumps(config, indent=1, sort_keys=True) + "\n")
    per_value = tb["context"]["per_value"]
    lines = [
        "# Results of `python -m cliffdistill.main" + design.FLAGS[mode.name] + "`", "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {m['platform']}, {m['cpus']} CPUs, backend {m['backend']}, "
        f"python {m['python']}, jax {m['jax']}",
        f"- wall time: prepare {tb['prepare_seconds']['total']:.0f} s (the testbed's cold build), "
        f"runs {run_seconds(workdir):.0f} s (the sum of every run's wall time, over resumes, "
        f"{workers} at a time); this invocation {invocation_seconds:.0f} s",
        f"- runs: {len(report.run_entries(workdir)[1])}: every method x {seeds_text(mode)}, "
        f"correctly implemented; each study defect alone and all together on "
        f"{', '.join(defect_methods(sweep_cfg))} x {mode.defect_seeds} seed(s) (a method a defect does not "
        "touch reuses its correct run; `--full`: 5 (size) and 6 (context) seeds, 3 per defect row, "
        "every pair of defects, on every method a defect touches)",
        f"- configuration (testbed and run settings): [{CONFIG_FILE}]({CONFIG_FILE}); "
        f"the full report (baselines, every defect variant side by side, diagnostics, cost): "
        f"[{report.REPORT_MD}]({report.REPORT_MD})",
        "", "## What this testbed can and cannot show", "",
        *limits_lines(tb, prepared.report["config"], num_steps, mode), "",
        "## Results per setup (correct implementation)", "",
    ]
    for setup in agg["setups"]:
        lines += [f"### `{setup}`", "", *report_summary.method_table(agg, setup), ""]
        if setup == "context":
            lines += ["Baselines per context value (measured by `prepare`; seed i trains on value "
                      f"{', '.join(map(str, per_value))} in turn):", "",
                      "| context value | teacher (with context) | format-only context | student "
                      "(no context) | oracle |", "|---|---|---|---|---|",
                      *(f"| {v} | {pct(r['teacher'], missing='-', unit='%')} | "
                        f"{pct(r['format_only'], missing='-', unit='%')} | "
                        f"{pct(r['student'], missing='-', unit='%')} | "
                        f"{pct(r['oracle'], missing='-', unit='%')} |" for v, r in per_value.items()),
                      ""]
    lines += [report_summary.METHOD_LEGEND, "",
              "## The study's claims on this testbed", "",
              *report_summary.verdict_table(verdicts), "",
              "## Plots", "",
              *(f"![{Path(rel).stem}]({rel})" + "\n" for rel in sorted(
                  str(p.relative_to(workdir)) for p in (workdir / report.PLOTS_DIR).glob("accuracy_*.png"))),
              "## Retention: what the student knew before distillation, at step 0 and at the end", "",
              f"`{retention.TASK}` is the toy arithmetic benchmark (`cliffdistill.study.retention`): "
              "one equation of a held-out plain problem cut after its `=`, the true result against "
              "three near misses, scored by log-likelihood (acc). Change = end - step 0 on the same "
              "documents; its 95% CI is the t-interval over the seeds' changes.", "",
              *report_retention.markdown(report_retention.group(report_retention.run_rows(workdir))), "",
              "The plain task (greedy, the context setup's student; its step-0 accuracy measured by "
              "`prepare`):", "",
              *retention_lines(retention_rows(workdir)), "",
              "## Testbed (measured by `prepare`, greedy, held-out synthetic problems)", "",
              *testbed_lines(tb), ""]
    path = workdir / "RESULTS.md"
    rundir.write_text(path, "\n".join(lines))
    rundir.write_text(workdir / CLAIMS_FILE, json.dumps(verdicts, indent=2, sort_keys=True))
    return path


def run_seconds(workdir: Path) -> float:
    """Sum of the runs' wall time (status.json `wall_seconds`, which spans resumes)."""
    return sum(float((rundir.read_json(d / rundir.STATUS_FILE) or {}).get("wall_seconds") or 0.0)
               for d in (workdir / rundir.RUNS_SUBDIR).glob("*") if d.is_dir())


def toy_claims_summary(workdir: Path) -> list[str]:
    claims = json.loads((workdir / CLAIMS_FILE).read_text())
    return [f"  {c['verdict']:>13}: {c['claim']}" for c in claims]


def publish(workdir: Path, docs: Path) -> list[Path]:
    """Copies a main run's RESULTS.md to docs/RESULTS.md and its plots, testbed.json, claims.json,
    config.json and REPORT.md to docs/results/ (plot links rewritten): what the repository shows
    as results."""
    out = docs / RESULTS_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for png in sorted((workdir / "plots").glob("*.png")):
        written.append(Path(shutil.copy2(png, out / png.name)))
    for name in (testbed.TESTBED_JSON, CLAIMS_FILE, CONFIG_FILE):
        written.append(Path(shutil.copy2(workdir / name, out / name)))
    full = (workdir / report.REPORT_MD).read_text().replace("](plots/", "](")
    rundir.write_text(out / report.REPORT_MD, full)
    written.append(out / report.REPORT_MD)
    text = (workdir / "RESULTS.md").read_text().replace("](plots/", f"]({RESULTS_SUBDIR}/")
    for name in (CONFIG_FILE, report.REPORT_MD):
        text = text.replace(f"]({name})", f"]({RESULTS_SUBDIR}/{name})")
    rundir.write_text(docs / "RESULTS.md", text)
    return written + [docs / "RESULTS.md"]


def publish_extensions(workdir: Path, docs: Path) -> list[Path]:
    """Copies EXTENSIONS.md to docs/ and its plot to docs/results/ (plot link rewritten)."""
    (docs / "results").mkdir(parents=True, exist_ok=True)
    png = Path(shutil.copy2(workdir / "plots" / "extensions.png",
                            docs / "results" / "extensions.png"))
    text = (workdir / "EXTENSIONS.md").read_text().replace("](plots/", "](results/")
    rundir.write_text(docs / "EXTENSIONS.md", text)
    return [png, docs / "EXTENSIONS.md"]
