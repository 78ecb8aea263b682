"""The main job's modes: the study's design (which runs, how many seeds, which defect rows),
run end to end: prepare the toy testbed, sweep, baselines, report, RESULTS.md.

1. prepare: train a toy tokenizer, a toy teacher and a smaller toy student, and run the
   method-neutral headroom checks (cached under the cache dir; WORKDIR/testbed.json);
2. sweep: every method x seed on the size setup (toy student <- toy teacher, unit problems whose
   value only the teacher knows) and the context setup (the teacher's own weights with/without
   k solved examples in the prompt; one hidden unit value per seed), correctly implemented;
   then the defect factorial (`design.sweep_rows`): each study defect alone and all together on the
   methods it touches; the first and final evals are also scored under the study's protocol
   (`study_eval`), and every context run measures its retention of the plain task;
3. report: tables, plots and a verdict on each of the study's claims (none on a setup that fails
   the headroom checks), in WORKDIR/REPORT.md and WORKDIR/RESULTS.md (the latter with machine,
   versions, date and timings).

The command line is `python -m cliffdistill.main` (`cliffdistill/main.py`).
"""


from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from cliffdistill.run import evaluation, loop, rundir
from cliffdistill.study import extensions, grid, runner, toy
from cliffdistill.engine.methods import seed_tokens
from cliffdistill.study import testbed
from cliffdistill.run import assembly
from cliffdistill.stats import pct
from cliffdistill.study import toy_config
from cliffdistill.study import design
from cliffdistill.study import results
from cliffdistill.study import retention


def run_smoke(workdir: Path, cache_dir: Path, workers: int = 1, rebuild: bool = False
              ) -> tuple[Path, Any]:
    """The micro main job: 2 methods x 4 steps x 1 seed, correct and the all-defects bundle."""
    return run_main(workdir, cache_dir, dataclasses.replace(design.MODES["quick"], name="smoke"),
                    prepare_cfg=design.smoke_prepare_config(), methods=design.SMOKE_METHODS,
                    factorial_methods=design.SMOKE_METHODS, steps=design.SMOKE_STEPS, overrides=design.SMOKE_OVERRIDES,
                    workers=workers, rebuild=rebuild)


def default_workers() -> int:
    """Runs at once by default: on CPU one per core (one small toy run keeps ~1.4 of 2 cores
    busy; two at once finish 1.3-1.7x sooner, measured), at most 4; on an accelerator 1 (each
    worker process would claim the device)."""
    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def write_retention(cfg: ml_collections.ConfigDict, run_dir: Path, plain_data: Path,
                    before: float) -> dict[str, float]:
    """The context student's plain-task accuracy after the run (its final adapters), beside the
    base model's (``before``, measured by prepare on the same questions and budget): whether
    distilling the context cost the skill the student already had."""
    rcfg = copy.deepcopy(cfg)
    with rcfg.unlocked():
        rcfg.setup, rcfg.teacher.path = "size", cfg.student.path  # plain task, no teacher context
        rcfg.data.path, rcfg.data.context = str(plain_data), "none"
        rcfg.ablation.teacher_no_context = False
    s = assembly.make_setup(rcfg)
    lora = evaluation.restore_lora(s, cfg, run_dir)
    summary, _ = evaluation.evaluate_arrays(s, s.student_cfg, s.student_params, lora, s.eval.student,
                                          s.eval.student_mask, max_new_tokens=cfg.eval.max_new_tokens)
    record = {"before": before, "after": summary["accuracy"], "n": len(s.eval.questions)}
    rundir.write_json(run_dir / results.RETENTION_JSON, record)
    return record


def run_one(cfg: ml_collections.ConfigDict, run_dir: Path, prepared: Any) -> None:
    """One sweep run: train, then (context setup) the retention eval."""
    loop.run(cfg, run_dir, progress=False)
    if cfg.setup == "context":
        write_retention(cfg, Path(run_dir), prepared.plain_data,
                        prepared.testbed["context"]["retention_before"])


def _prepare(workdir: Path, cache_dir: Path, prepare_cfg: ml_collections.ConfigDict | None,
             workers: int = 1, rebuild: bool = False) -> Any:
    """Step 1 of every main-job study: the (cached) toy testbed, its testbed.json in `workdir`."""
    print(f"[1/3] toy testbed (cache: {cache_dir})", flush=True)
    prepared = toy.prepare(cache_dir, prepare_cfg, say=lambda s: print(s, flush=True),
                           workers=workers, rebuild=rebuild)
    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(workdir / testbed.TESTBED_JSON, prepared.testbed)
    return prepared


def run_main(workdir: Path, cache_dir: Path, mode: design.Mode, *,
             prepare_cfg: ml_collections.ConfigDict | None = None,
             methods: tuple[str, ...] = design.METHODS, factorial_methods: tuple[str, ...] | None = None,
             steps: int | None = None, overrides: dict[str, Any] | None = None,
             workers: int = 1, rebuild: bool = False) -> tuple[Path, Any]:
    """prepare -> sweep (`workers` runs at once) -> report; returns (RESULTS.md path, the sweep
    result). `rebuild`: rebuild a cached testbed made by other testbed code (`toy.prepare`)."""
    t0 = time.time()
    prepared = _prepare(workdir, cache_dir, prepare_cfg, workers, rebuild)
    bench = retention.write_benchmark(prepared.plain_data, workdir / "benchmarks",
                                      design.RETENTION_DOCS)
    cfg = design.sweep_config(prepared.root, mode, methods, factorial_methods, steps, overrides,
                       context_values=tuple(prepared.context_data), benchmarks=bench)
    print(f"[2/3] sweep: {len(grid.expand(cfg))} runs -> {workdir}", flush=True)
    result = runner.run_sweep(cfg, workdir, run_fn=functools.partial(run_one, prepared=prepared),
                             baseline_fn=evaluation.run_baselines, workers=workers, cost=design.run_cost,
                             kind=design.run_kind)
    print("[3/3] report", flush=True)
    path = results.write_results(workdir, prepared, time.time() - t0, mode, cfg, workers)
    print(f"done in {time.time() - t0:.0f} s: {path} ({len(result.failed)} failed runs)")
    print("\n".join(results.toy_claims_summary(workdir)))
    return path, result


def run_extensions(workdir: Path, cache_dir: Path, *,
                   prepare_cfg: ml_collections.ConfigDict | None = None,
                   seeds: int = extensions.SEEDS, steps: int | None = None,
                   overrides: dict[str, Any] | None = None, workers: int = 1,
                   rebuild: bool = False) -> tuple[Path, Any]:
    """The study's proposed next steps (cliffdistill.extensions) on the toy testbed: prepare
    (cached) -> the arms' runs -> EXTENSIONS.md with tables, a plot, CIs and paired tests."""

    t0 = time.time()
    prepared = _prepare(workdir, cache_dir, prepare_cfg, workers, rebuild)
    b = toy_config.BUDGET
    steps = steps or b.steps
    base_overrides = {"eval.every": steps // 4, "checkpoint.every": steps,
                      "schedule.num_steps": steps, "schedule.seed_decay_steps": steps // 2,
                      "schedule.hybrid_switch_step": steps // 2, **(overrides or {})}
    base_overrides.setdefault("schedule.seed_max_tokens", seed_tokens(
        b.seed_fraction, base_overrides.get("rollout.max_new_tokens", b.max_new_tokens)))
    arms = extensions.arms(steps, base_overrides.get("rollout.max_new_tokens", b.max_new_tokens),
                           b.lr, b.lora_rank)
    cfg = extensions.sweep_config(prepared.root, arms, tuple(prepared.context_data),
                                  base_overrides, seeds)
    print(f"[2/3] sweep: {len(grid.expand(cfg))} runs -> {workdir}", flush=True)
    # no REPORT.md: its (setup, method) groups would pool the arms (e.g. every LoRA rank)
    result = runner.run_sweep(cfg, workdir, run_fn=functools.partial(loop.run, progress=False),
                             baseline_fn=evaluation.run_baselines, write_report=False,
                             workers=workers, cost=design.run_cost, kind=design.run_kind)
    print("[3/3] report", flush=True)
    rows = extensions.analyze(workdir, arms, base_overrides)
    extensions.plot(rows, workdir / "plots" / "extensions.png")
    m = results.machine()
    tb = prepared.testbed
    lines = [
        "# The study's next steps on the toy testbed: `python -m cliffdistill.main --study "
        "extensions`", "",
        f"- date: {datetime.date.today().isoformat()}; machine: {m['platform']}, {m['cpus']} CPUs, "
        f"backend {m['backend']}, python {m['python']}, jax {m['jax']}",
        f"- wall time: prepare {tb['prepare_seconds']['total']:.0f} s (the testbed's cold build, "
        f"shared with the main job), runs {results.run_seconds(workdir):.0f} s (the sum of every run's "
        f"wall time, over resumes, {workers} at a time), this invocation {time.time() - t0:.0f} s; "
        f"{len(result.ran) + len(result.skipped)} runs ({seeds} seeds per arm, {steps}-step "
        f"runs unless an arm varies it, {len(result.failed)} failed)",
        f"- setups (testbed.json): objectives and sensitivity on the size setup (teacher "
        f"{pct(tb['size']['teacher']['accuracy'], missing='-', unit='%')}, student "
        f"{pct(tb['size']['student']['accuracy'], missing='-', unit='%')}, ground-truth oracle "
        f"{pct(tb['size']['oracle']['accuracy'], missing='-', unit='%')}; testable: {tb['size']['testable']}); "
        f"retrieval vs few-shot on the context setup (values "
        f"{', '.join(map(str, tb['context']['values']))}, one per seed; teacher with solved "
        f"examples {pct(tb['context']['teacher']['accuracy'], missing='-', unit='%')}, with the passage "
        f"{pct(tb.get('retrieval', {}).get('teacher', {}).get('accuracy'), missing='-', unit='%')}, student "
        f"{pct(tb['context']['student']['accuracy'], missing='-', unit='%')}; testable: "
        f"{tb.get('retrieval', tb['context'])['testable']})",
        "- statistics: each arm's final accuracy with the seed-level interval (t over seeds, "
        "widened by question-sampling variance; one seed: none); each arm against its part's "
        "reference (sensitivity: the default value of the same knob; retrieval: the same method "
        "with the few-shot teacher) by the paired seed-level t-test on the same seeds and "
        "questions, Holm-corrected within the part at 0.05 (one seed: descriptive).",
        "", *extensions.markdown(rows),
        "![extensions](plots/extensions.png)", "",
    ]
    path = workdir / "EXTENSIONS.md"
    rundir.write_text(path, "\n".join(lines) + "\n")
    rundir.write_json(workdir / "extensions.json", rows)
    print(f"done in {time.time() - t0:.0f} s: {path} ({len(result.failed)} failed runs)")
    return path, result

