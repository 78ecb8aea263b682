"""The main job's modes: the study's design (which runs, how many seeds, which defect rows),
run end to end: prepare the toy testbed, sweep, baselines, report, RESULTS.md.

1. prepare: train a toy tokenizer, a toy teacher and a smaller toy student, and run the
   method-neutral headroom checks (cached under the cache dir; WORKDIR/testbed.json);
2. sweep: every method x seed on the size setup (toy student <- toy teacher, unit problems whose
   value only the teacher knows) and the context setup (the teacher's own weights with/without
   k solved examples in the prompt; one hidden unit value per seed), correctly implemented;
   then the defect factorial (`sweep_rows`): each study defect alone and all together on the
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
import itertools
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from cliffdistill.engine.defects import TRAINING_DEFECTS, defect_applies
from cliffdistill import report
from cliffdistill.run import evaluation, loop, rundir
from cliffdistill.run import config_io
from cliffdistill.study import extensions, grid, runner, toy
from cliffdistill.engine.methods import STUDY_METHODS, num_steps, seed_tokens
from cliffdistill.study import testbed
from cliffdistill.run import assembly
from cliffdistill.stats import pct
from cliffdistill.study import toy_config

METHODS = STUDY_METHODS  # the study's table order (+ off_policy); no extensions
SETUPS = ("size", "context")
CLAIMS_FILE = "claims.json"
RETENTION_JSON = "retention.json"


def context_value(seed: int, values: Sequence[int]) -> int:
    """The hidden unit value of a context run: one per seed, cycling through the testbed's
    values, so three seeds see three different values (a method cannot win on one lucky value)."""
    return int(values[seed % len(values)])


@dataclasses.dataclass(frozen=True)
class Mode:
    """How much of the study one invocation runs (seeds per row, run length)."""

    name: str
    correct_seeds: int  # seeds of every method, correct implementation
    defect_seeds: int  # seeds of each (defect combination, factorial method) row
    step_divisor: int = 1  # runs of STEPS // step_divisor steps
    each_defect: bool = True  # each defect alone and the bundle (False: the bundle only)
    pairs: bool = False  # also every pair of defects
    evals: int = 4  # evaluations of 512 questions per run after step 0 (evenly spaced)
    # ... of a defect-variant run (None: `evals`): its verdict reads its final eval against the
    # correct implementation's, so its curve can be coarser than the correct runs'
    defect_evals: int | None = None


MODES = {
    # 1 seed, half-length runs, the all-defects bundle only, evaluated at step 0 and the end
    # (no curve): a first look in minutes (cached)
    "quick": Mode("quick", correct_seeds=1, defect_seeds=1, step_divisor=2, each_defect=False,
                  evals=1),
    # the default (target: 30 min cold on 2 CPU cores; measured in README): every verdict
    # decided, fewer defect seeds, defect variants evaluated at half-time and the end
    "default": Mode("default", correct_seeds=3, defect_seeds=1, defect_evals=2),
    # the whole factorial: >= 5 correct seeds, >= 3 per defect row, every pair of defects (its
    # evaluation steps are the default's, so it reuses the default's runs)
    "full": Mode("full", correct_seeds=5, defect_seeds=3, pairs=True, defect_evals=2),
}
#: Methods of the defect factorial: pure on-policy, pure off-policy, mixed and seeded.
FACTORIAL_METHODS = ("on_policy_gkd", "off_policy", "hybrid", "mixture", "kl_anchored",
                     "teacher_seeded")


def defect_combinations(setup: str, methods: Sequence[str], each: bool = True,
                        pairs: bool = False) -> list[tuple[str, ...]]:
    """The factorial's defect combinations on `setup`: each training defect alone (those that
    touch one of `methods` there), every pair (`pairs`) and all of them together; `each=False`:
    the bundle only."""
    applicable = tuple(d for d in TRAINING_DEFECTS
                       if any(defect_applies(d, m, setup) for m in methods))
    singles = [(d,) for d in applicable] if each else []
    doubles = list(itertools.combinations(applicable, 2)) if pairs and len(applicable) > 2 else []
    return singles + doubles + ([applicable] if len(applicable) > 1 or not each else [])


def sweep_rows(mode: Mode, methods: Sequence[str], factorial_methods: Sequence[str]
               ) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(setup, method, seed, defects) of every run: each method x `correct_seeds` seeds,
    correctly implemented; then each defect combination x the factorial methods it touches x
    `defect_seeds` seeds. A method no defect of a combination touches is not run under it -- its
    run would be identical to the correct one, which the report reuses."""
    rows = [(setup, m, seed, ()) for setup in SETUPS for m in methods
            for seed in range(mode.correct_seeds)]
    for setup in SETUPS:
        for combo in defect_combinations(setup, factorial_methods, mode.each_defect, mode.pairs):
            rows += [(setup, m, seed, combo) for m in factorial_methods
                     if any(defect_applies(d, m, setup) for d in combo)
                     for seed in range(mode.defect_seeds)]
    return rows


def sweep_config(root: Path, mode: Mode, methods: Sequence[str] = METHODS,
                 factorial_methods: Sequence[str] = FACTORIAL_METHODS, steps: int | None = None,
                 overrides: dict[str, Any] | None = None,
                 context_values: Sequence[int] | None = None) -> ml_collections.ConfigDict:
    """The main job's sweep: one zip row per run (`sweep_rows`). Every run's first and final
    evals are also scored under the study's protocol (`ablation.study_eval`); the seed prefix of
    teacher_seeded is the budget's seed fraction of the completion budget in use."""

    context_values = tuple(context_values or (toy_config.DEFAULT_CONTEXT_VALUE,))
    overrides = dict(overrides or {})
    overrides.setdefault("schedule.seed_max_tokens", seed_tokens(
        toy_config.BUDGET.seed_fraction, overrides.get("rollout.max_new_tokens", toy_config.BUDGET.max_new_tokens)))
    steps = steps or toy_config.STEPS // mode.step_divisor
    zipped: dict[str, list] = {}
    for setup, method, seed, defects in sweep_rows(mode, methods, factorial_methods):
        paths = toy_config.toy_paths(str(root), setup, context_value(seed, context_values))
        evals = mode.defect_evals if defects and mode.defect_evals else mode.evals
        values = {"setup": setup, "method": method, "seed": seed, **paths,
                  "eval.every": steps // evals,
                  **{f"ablation.{d}": d in defects for d in TRAINING_DEFECTS}}
        for field, value in values.items():
            zipped.setdefault(field, []).append(value)
    c = ml_collections.ConfigDict()
    c.name = f"toy study ({mode.name})"
    c.base_config = "configs/toy.py"
    c.base_overrides = config_io.nest({
        "schedule.num_steps": steps, "schedule.extended_num_steps": 2 * steps,
        "schedule.hybrid_switch_step": steps // 2, "schedule.seed_decay_steps": steps // 2,
        "schedule.reverse_switch_step": int(0.7 * steps), "checkpoint.every": steps,
        "ablation.study_eval": True, **overrides})
    c.order = ("setup", "method", "seed")
    c.name_fields = ("setup", "method", "seed", *(f"ablation.{d}" for d in TRAINING_DEFECTS))
    c.zip = config_io.nest({k: tuple(v) for k, v in zipped.items()})
    c.baselines = True
    return c


def smoke_prepare_config() -> ml_collections.ConfigDict:
    """A micro testbed (1-layer models, 20 pretraining steps, 16 eval questions): every stage of
    the main job in a minute or two.

    Its numbers mean nothing (the headroom checks mark both setups not testable); it exists so
    that CI (and a user checking an install) runs the real prepare -> sweep -> report path in a
    runtime-only environment.
    """
    c = toy_config.default_prepare_config()
    c.n_eval, c.n_dev, c.n_train_prompts, c.eval_batch_size = 16, 16, 32, 16
    c.run.update(n_fewshot=16, steps=4, max_new_tokens=16)
    c.teacher.update(layers=1, hidden=32, heads=2, kv_heads=1, head_dim=16, mlp=64, steps=20,
                     batch=8, episode_every=3)
    c.student.update(layers=1, hidden=16, heads=2, kv_heads=1, head_dim=8, mlp=32, steps=20,
                     batch=8, snapshots=(10, 20), max_accuracy=1.0)
    return c


# Run-config overrides that shrink every run of the smoke job to match its micro testbed.
SMOKE_OVERRIDES = {
    "data.n_train": 32, "data.n_fewshot": 16, "data.n_eval": 16, "data.context_k": 2,
    "rollout.batch_size": 8, "rollout.max_new_tokens": 16, "off_policy.max_new_tokens": 16,
    "eval.max_new_tokens": 16, "eval.batch_size": 16, "eval.study_n": 16,
}
SMOKE_METHODS = ("on_policy_gkd", "off_policy")
SMOKE_STEPS = 4
FLAGS = {"quick": " --quick", "default": "", "full": " --full", "smoke": " --smoke"}


def run_smoke(workdir: Path, cache_dir: Path, workers: int = 1) -> tuple[Path, Any]:
    """The micro main job: 2 methods x 4 steps x 1 seed, correct and the all-defects bundle."""
    return run_main(workdir, cache_dir, dataclasses.replace(MODES["quick"], name="smoke"),
                    prepare_cfg=smoke_prepare_config(), methods=SMOKE_METHODS,
                    factorial_methods=SMOKE_METHODS, steps=SMOKE_STEPS, overrides=SMOKE_OVERRIDES,
                    workers=workers)


def default_workers() -> int:
    """Runs at once by default: on CPU one per core (one small toy run keeps ~1.4 of 2 cores
    busy; two at once finish 1.3-1.7x sooner, measured), at most 4; on an accelerator 1 (each
    worker process would claim the device)."""
    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


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
                                                                         METHODS.index(kv[0][1])
                                                                         if kv[0][1] in METHODS else 99)):
        before = statistics.mean(r["before"] for r in rs)
        after = statistics.mean(r["after"] for r in rs)
        out.append(f"| {variant} | {method} | {pct(before, missing='-', unit='%')} | {pct(after, missing='-', unit='%')} | "
                   f"{100 * (after - before):+.1f} pp | {len(rs)} |")
    return out


def write_results(workdir: Path, prepared: Any, invocation_seconds: float, mode: Mode,
                  sweep_cfg: ml_collections.ConfigDict, workers: int = 1) -> Path:
    """RESULTS.md: when/where/how it ran, the testbed's checks, the verdicts, the report."""
    agg = report.aggregate(workdir)
    tb = prepared.testbed
    verdicts = testbed.gate_claims(report.study_claims(agg), tb)
    m = machine()
    lines = [
        "# Results of `python -m cliffdistill.main" + FLAGS[mode.name] + "`", "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {m['platform']}, {m['cpus']} CPUs, backend {m['backend']}, "
        f"python {m['python']}, jax {m['jax']}",
        f"- wall time: prepare {tb['prepare_seconds']['total']:.0f} s (the testbed's cold build), "
        f"runs {run_seconds(workdir):.0f} s (the sum of every run's wall time, over resumes, "
        f"{workers} at a time); this invocation {invocation_seconds:.0f} s",
        f"- runs: {len(report.run_entries(workdir)[1])}: every method x {mode.correct_seeds} "
        f"seed(s) per setup, correctly implemented; each study defect alone and all together on "
        f"{', '.join(FACTORIAL_METHODS)} x {mode.defect_seeds} seed(s) (a method a defect does not "
        "touch reuses its correct run; `--full`: 5 and 3 seeds and every pair of defects)",
        "", "## Testbed (measured by `prepare`, greedy, held-out synthetic problems)", "",
        *testbed_lines(tb), "",
        "## The study's claims on this testbed", "",
        *report.render_claims(verdicts), "",
        f"The testbed is a miniature: toy models, a synthetic task and "
        f"{sweep_cfg.base_overrides.schedule.num_steps}-step runs. A verdict "
        "here says whether the *mechanism* reproduces, not what happens at 4B-70B scale.", "",
        "## Retention (context setup): the plain task before and after distillation", "",
        *retention_lines(retention_rows(workdir)), "",
        "## Configuration", "",
        "Toy testbed (`cliffdistill.study.toy.default_prepare_config`):", "",
        "```json", json.dumps(prepared.report["config"], indent=1, sort_keys=True), "```", "",
        "Run config: `configs/toy.py` with these sweep settings (model paths point into the "
        "testbed):", "",
        "```json", json.dumps(_config_summary(sweep_cfg), indent=1, sort_keys=True), "```", "",
        "## Full report", "",
    ]
    body = (workdir / report.REPORT_MD).read_text()
    path = workdir / "RESULTS.md"
    rundir.write_text(path, "\n".join(lines) + "\n" + body)
    rundir.write_text(workdir / CLAIMS_FILE, json.dumps(verdicts, indent=2, sort_keys=True))
    return path


def run_seconds(workdir: Path) -> float:
    """Sum of the runs' wall time (status.json `wall_seconds`, which spans resumes)."""
    return sum(float((rundir.read_json(d / rundir.STATUS_FILE) or {}).get("wall_seconds") or 0.0)
               for d in (workdir / rundir.RUNS_SUBDIR).glob("*") if d.is_dir())


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
    rundir.write_json(run_dir / RETENTION_JSON, record)
    return record


def run_cost(cfg: ml_collections.ConfigDict) -> float:
    """A toy run's relative cost, for the order runs start in with several workers: its steps,
    x2 on the context setup (the 114k-parameter student and a 3x longer teacher view: 2-3x the
    seconds per step of a size run, measured in docs/PERFORMANCE.md)."""
    return num_steps(cfg.method, cfg.schedule) * (2.0 if cfg.setup == "context" else 1.0)


def run_setup(cfg: ml_collections.ConfigDict) -> str:
    """A run's kind for the worker schedule: a context run (the 114k-parameter student, bound by
    its matmuls) shares 2 cores better with a size run (26.6k parameters, bound by dispatch)
    than with another context run (`runner.next_task`)."""
    return str(cfg.setup)


def run_one(cfg: ml_collections.ConfigDict, run_dir: Path, prepared: Any) -> None:
    """One sweep run: train, then (context setup) the retention eval."""
    loop.run(cfg, run_dir, progress=False)
    if cfg.setup == "context":
        write_retention(cfg, Path(run_dir), prepared.plain_data,
                        prepared.testbed["context"]["retention_before"])


def _prepare(workdir: Path, cache_dir: Path, prepare_cfg: ml_collections.ConfigDict | None,
             workers: int = 1) -> Any:
    """Step 1 of every main-job study: the (cached) toy testbed, its testbed.json in `workdir`."""
    print(f"[1/3] toy testbed (cache: {cache_dir})", flush=True)
    prepared = toy.prepare(cache_dir, prepare_cfg, say=lambda s: print(s, flush=True),
                           workers=workers)
    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(workdir / testbed.TESTBED_JSON, prepared.testbed)
    return prepared


def run_main(workdir: Path, cache_dir: Path, mode: Mode, *,
             prepare_cfg: ml_collections.ConfigDict | None = None,
             methods: tuple[str, ...] = METHODS, factorial_methods: tuple[str, ...] = FACTORIAL_METHODS,
             steps: int | None = None, overrides: dict[str, Any] | None = None,
             workers: int = 1) -> tuple[Path, Any]:
    """prepare -> sweep (`workers` runs at once) -> report; returns (RESULTS.md path, the sweep
    result)."""
    t0 = time.time()
    prepared = _prepare(workdir, cache_dir, prepare_cfg, workers)
    cfg = sweep_config(prepared.root, mode, methods, factorial_methods, steps, overrides,
                       context_values=tuple(prepared.context_data))
    print(f"[2/3] sweep: {len(grid.expand(cfg))} runs -> {workdir}", flush=True)
    result = runner.run_sweep(cfg, workdir, run_fn=functools.partial(run_one, prepared=prepared),
                             baseline_fn=evaluation.run_baselines, workers=workers, cost=run_cost,
                             kind=run_setup)
    print("[3/3] report", flush=True)
    path = write_results(workdir, prepared, time.time() - t0, mode, cfg, workers)
    print(f"done in {time.time() - t0:.0f} s: {path} ({len(result.failed)} failed runs)")
    print("\n".join(toy_claims_summary(workdir)))
    return path, result


def run_extensions(workdir: Path, cache_dir: Path, *,
                   prepare_cfg: ml_collections.ConfigDict | None = None,
                   seeds: int = extensions.SEEDS, steps: int | None = None,
                   overrides: dict[str, Any] | None = None, workers: int = 1
                   ) -> tuple[Path, Any]:
    """The study's proposed next steps (cliffdistill.extensions) on the toy testbed: prepare
    (cached) -> the arms' runs -> EXTENSIONS.md with tables, a plot, CIs and paired tests."""

    t0 = time.time()
    prepared = _prepare(workdir, cache_dir, prepare_cfg, workers)
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
                             workers=workers, cost=run_cost, kind=run_setup)
    print("[3/3] report", flush=True)
    rows = extensions.analyze(workdir, arms, base_overrides)
    extensions.plot(rows, workdir / "plots" / "extensions.png")
    m = machine()
    tb = prepared.testbed
    lines = [
        "# The study's next steps on the toy testbed: `python -m cliffdistill.main --study "
        "extensions`", "",
        f"- date: {datetime.date.today().isoformat()}; machine: {m['platform']}, {m['cpus']} CPUs, "
        f"backend {m['backend']}, python {m['python']}, jax {m['jax']}",
        f"- wall time: prepare {tb['prepare_seconds']['total']:.0f} s (the testbed's cold build, "
        f"shared with the main job), runs {run_seconds(workdir):.0f} s (the sum of every run's "
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
        "- statistics: each arm's final accuracy with the two-way bootstrap over seeds x "
        "held-out questions; each arm against its part's reference (sensitivity: the default "
        "value of the same knob; retrieval: the same method with the few-shot teacher) by the "
        "paired bootstrap on the same seeds and questions, Holm-corrected within the part at 0.05.",
        "", *extensions.markdown(rows),
        "![extensions](plots/extensions.png)", "",
    ]
    path = workdir / "EXTENSIONS.md"
    rundir.write_text(path, "\n".join(lines) + "\n")
    rundir.write_json(workdir / "extensions.json", rows)
    print(f"done in {time.time() - t0:.0f} s: {path} ({len(result.failed)} failed runs)")
    return path, result


def publish(workdir: Path, docs: Path) -> list[Path]:
    """Copies a main run's RESULTS.md to docs/RESULTS.md and its plots, testbed.json and
    claims.json to docs/results/ (plot links rewritten): what the repository shows as results."""
    out = docs / "results"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for png in sorted((workdir / "plots").glob("*.png")):
        written.append(Path(shutil.copy2(png, out / png.name)))
    for name in (testbed.TESTBED_JSON, CLAIMS_FILE):
        written.append(Path(shutil.copy2(workdir / name, out / name)))
    text = (workdir / "RESULTS.md").read_text().replace("](plots/", "](results/")
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


def toy_claims_summary(workdir: Path) -> list[str]:
    claims = json.loads((workdir / CLAIMS_FILE).read_text())
    return [f"  {c['verdict']:>13}: {c['claim']}" for c in claims]

