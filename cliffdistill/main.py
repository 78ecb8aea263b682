"""The embedded default: the whole study in miniature, on CPU, with no downloads.

    python -m cliffdistill.main            # both setups x 8 methods x 3 seeds + the study's defects
    python -m cliffdistill.main --quick    # 1 seed, 20-step runs: a few minutes
    python -m cliffdistill.main --smoke    # micro testbed, 2 methods x 4 steps: proves the install

1. prepare: train a toy tokenizer, a toy teacher and student (cached under --cache_dir);
2. sweep: every method x seed on the size setup (toy student <- toy teacher) and the context setup
   (the teacher's own weights with/without k solved examples in the prompt), once with the
   correct implementation and once with the study's defects switched on;
3. report: tables, plots and a verdict on each of the study's claims, in WORKDIR/REPORT.md and
   WORKDIR/RESULTS.md (the latter with machine, versions, date and timings).

Re-running resumes: finished runs are skipped, so an interrupted main job continues where it was.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from cliffdistill import evaluate, report, rundir, sweep, toy, train
from cliffdistill import methods as methods_lib
from cliffdistill.setup import ABLATIONS

METHODS = tuple(methods_lib.METHODS)  # the study's table order
CLAIMS_FILE = "claims.json"


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": v} -> {"a": {"b": v}} (ConfigDict keys cannot contain dots)."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def sweep_config(root: Path, quick: bool, methods: tuple[str, ...] = METHODS,
                 steps: int | None = None, overrides: dict[str, Any] | None = None
                 ) -> ml_collections.ConfigDict:
    """Methods (product) x rows (zip) of (setup, seed, implementation).

    The correct implementation runs every seed; the study's defects (all switched on together,
    as in the study's code) run seed 0 only, to show whether the cliff reproduces.
    """
    from configs import toy as toy_config  # repo-root package: main() puts it on sys.path

    seeds = (0,) if quick else (0, 1, 2)
    rows = [(setup, seed, False) for setup in ("size", "context") for seed in seeds]
    rows += [(setup, 0, True) for setup in ("size", "context")]
    zipped: dict[str, list] = {}
    for setup, seed, defects in rows:
        values = {"setup": setup, "seed": seed, **toy_config.toy_paths(str(root), setup),
                  **{f"ablation.{name}": defects for name in ABLATIONS}}
        for field, value in values.items():
            zipped.setdefault(field, []).append(value)
    c = ml_collections.ConfigDict()
    c.name = "toy study (quick)" if quick else "toy study"
    c.base_config = "configs/toy.py"
    steps = steps or (toy_config.STEPS // 2 if quick else toy_config.STEPS)
    c.base_overrides = _nest({
        "schedule.num_steps": steps, "schedule.extended_num_steps": 2 * steps,
        "schedule.hybrid_switch_step": steps // 2, "schedule.seed_decay_steps": steps // 2,
        "schedule.reverse_switch_step": int(0.7 * steps), "eval.every": steps // (2 if quick else 4),
        "checkpoint.every": steps, **(overrides or {})})
    c.order = ("setup", "ablation.unshifted_off_policy", "method", "seed")
    c.name_fields = ("setup", "method", "seed", "ablation.unshifted_off_policy")
    c.product = {"method": tuple(methods)}
    c.zip = _nest({k: tuple(v) for k, v in zipped.items()})
    c.baselines = True
    return c


def smoke_prepare_config() -> ml_collections.ConfigDict:
    """A micro testbed (2-layer teacher, 30 pretraining steps): exercises every stage in ~1 min.

    Its numbers mean nothing; it exists so that CI (and a user checking an install) runs the
    real prepare -> sweep -> report path in a runtime-only environment.
    """
    c = toy.default_prepare_config()
    c.n_eval, c.n_train_prompts, c.context_k, c.eval_max_new_tokens = 16, 32, 2, 16
    c.teacher.update(layers=2, hidden=32, heads=4, kv_heads=2, head_dim=8, mlp=64, steps=30,
                     batch=16, episode_every=3)
    c.student.update(snapshots=(10, 20), max_accuracy=1.0)
    return c


# Run-config overrides that shrink every run of the smoke job to match its micro testbed.
SMOKE_OVERRIDES = {
    "data.n_train": 32, "data.n_fewshot": 16, "data.n_eval": 16, "data.context_k": 2,
    "rollout.batch_size": 8, "rollout.max_new_tokens": 8, "off_policy.max_new_tokens": 8,
    "eval.max_new_tokens": 8, "eval.batch_size": 16, "schedule.seed_max_tokens": 2,
}
SMOKE_METHODS = ("on_policy_gkd", "hybrid")
SMOKE_STEPS = 4


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()][:1]}


def _config_summary(sweep_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The sweep's knobs without machine-specific paths, plus the toy run config's key values."""
    from configs import toy as toy_config  # repo-root package: main() puts it on sys.path

    base = toy_config.get_config("size")
    zipped = {k: v for k, v in sweep_cfg.zip.to_dict().items() if k not in ("student", "teacher", "data")}
    return {
        "base_overrides": sweep_cfg.base_overrides.to_dict(), "product": sweep_cfg.product.to_dict(),
        "zip": zipped,
        "toy_run_config": {"lora": base.lora.to_dict(), "optim": base.optim.to_dict(),
                           "rollout": base.rollout.to_dict(), "loss": base.loss.to_dict(),
                           "data": {k: base.data[k] for k in ("n_train", "n_eval", "context_k")},
                           "eval": {k: base.eval[k] for k in ("max_new_tokens", "batch_size")}},
    }


def write_results(workdir: Path, prepared: Any, timings: dict[str, float], quick: bool,
                  sweep_cfg: ml_collections.ConfigDict) -> Path:
    """RESULTS.md: when/where/how it ran, the toy models' capabilities, the verdicts, the report."""
    agg = report.aggregate(workdir)
    verdicts = report.study_claims(agg)
    m = machine()
    lines = [
        "# Results of `python -m cliffdistill.main" + (" --quick" if quick else "") + "`", "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {m['platform']}, {m['cpus']} CPUs, backend {m['backend']}, "
        f"python {m['python']}, jax {m['jax']}",
        f"- wall time: prepare {timings['prepare']:.0f} s, sweep {timings['sweep']:.0f} s, "
        f"total {timings['total']:.0f} s",
        f"- runs: {len(report.run_entries(workdir)[1])} (8 methods x {len(sweep_cfg.zip['seed'])} "
        "(setup, seed, implementation) rows; the study's defects: seed 0 only)",
        "", "## Toy models (measured by `prepare`, greedy, held-out synthetic problems)", "",
        "| model | params | accuracy |", "|---|---|---|",
        f"| teacher (size setup) | {prepared.report['teacher']['params']:,} | "
        f"{prepared.report['teacher']['plain_accuracy']:.1%} |",
        f"| student (size setup): the teacher's snapshot at pretraining step "
        f"{prepared.report['student']['snapshot_step']} | {prepared.report['student']['params']:,} | "
        f"{prepared.report['student']['plain_accuracy']:.1%} |",
        f"| base with {prepared.report['config']['context_k']}-shot context (context teacher) | "
        f"{prepared.report['teacher']['params']:,} | "
        f"{prepared.report['teacher']['context_accuracy_with_context']:.1%} |",
        f"| base without context (context student) | {prepared.report['teacher']['params']:,} | "
        f"{prepared.report['teacher']['context_accuracy_without_context']:.1%} |",
        "", "## The study's claims on this testbed", "",
        *report.render_claims(verdicts), "",
        f"The testbed is a miniature: toy models, a synthetic task and "
        f"{sweep_cfg.base_overrides.schedule.num_steps}-step runs. A verdict "
        "here says whether the *mechanism* reproduces, not what happens at 4B-70B scale.", "",
        "## Configuration", "",
        "Toy testbed (`cliffdistill.toy.default_prepare_config`):", "",
        "```json", json.dumps(prepared.report["config"], indent=1, sort_keys=True), "```", "",
        "Run config: `configs/toy.py` with these sweep settings (model paths point into the "
        "testbed):", "",
        "```json", json.dumps(_config_summary(sweep_cfg), indent=1, sort_keys=True), "```", "",
        "## Full report", "",
    ]
    report_md = (workdir / report.REPORT_MD).read_text()
    body = report_md.replace("](plots/", "](plots/")
    path = workdir / "RESULTS.md"
    rundir.write_text(path, "\n".join(lines) + "\n" + body)
    rundir.write_text(workdir / CLAIMS_FILE, json.dumps(verdicts, indent=2, sort_keys=True))
    return path


def run_main(workdir: Path, cache_dir: Path, quick: bool, *,
             prepare_cfg: ml_collections.ConfigDict | None = None,
             methods: tuple[str, ...] = METHODS, steps: int | None = None,
             overrides: dict[str, Any] | None = None) -> tuple[Path, Any]:
    """prepare -> sweep -> report; returns (RESULTS.md path, the sweep result)."""
    # Compiled programs persist across invocations: a re-run (or --quick after the full job)
    # skips most XLA compilation, which dominates the toy runs' time on CPU.
    jax.config.update("jax_compilation_cache_dir", str(cache_dir / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    t0 = time.time()
    print(f"[1/3] toy testbed (cache: {cache_dir})", flush=True)
    prepared = toy.prepare(cache_dir, prepare_cfg, say=lambda s: print(s, flush=True))
    t_prep = time.time() - t0
    cfg = sweep_config(prepared.root, quick, methods, steps, overrides)
    print(f"[2/3] sweep: {len(sweep.expand(cfg))} runs -> {workdir}", flush=True)
    result = sweep.run_sweep(cfg, workdir, run_fn=lambda c, d: train.run(c, d, progress=False),
                             baseline_fn=evaluate.run_baselines)
    t_sweep = time.time() - t0 - t_prep
    print("[3/3] report", flush=True)
    timings = {"prepare": t_prep, "sweep": t_sweep, "total": time.time() - t0}
    path = write_results(workdir, prepared, timings, quick, cfg)
    print(f"done in {timings['total']:.0f} s: {path} ({len(result.failed)} failed runs)")
    print("\n".join(toy_claims_summary(workdir)))
    return path, result


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m cliffdistill.main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 seed, 20-step runs")
    mode.add_argument("--smoke", action="store_true",
                      help="micro testbed, 2 methods x 4 steps (~1-2 min): checks an install")
    p.add_argument("--workdir", default=None, help="default: runs/main (runs/main_quick)")
    p.add_argument("--cache_dir", default=None,
                   help="toy testbed cache (default $CLIFFDISTILL_CACHE or ~/.cache/cliffdistill)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))  # configs/ lives at the repo root
    from configs import toy as toy_config

    default_workdir = ("runs/main_smoke" if args.smoke else
                       "runs/main_quick" if args.quick else "runs/main")
    workdir = Path(args.workdir or default_workdir)
    cache_dir = Path(args.cache_dir or toy_config.TOY_CACHE)
    if args.smoke:
        _, result = run_main(workdir, cache_dir, quick=True, prepare_cfg=smoke_prepare_config(),
                             methods=SMOKE_METHODS, steps=SMOKE_STEPS, overrides=SMOKE_OVERRIDES)
    else:
        _, result = run_main(workdir, cache_dir, args.quick)
    return 1 if result.failed else 0


def toy_claims_summary(workdir: Path) -> list[str]:
    claims = json.loads((workdir / CLAIMS_FILE).read_text())
    return [f"  {c['verdict']:>13}: {c['claim']}" for c in claims]


if __name__ == "__main__":
    sys.exit(main())
