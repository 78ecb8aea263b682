#!/usr/bin/env python
"""Throughput / MFU of cliffdistill's jitted pieces against HF transformers, in one run.

    python benchmarks/throughput.py --out results.json            # real presets, one GPU
    python benchmarks/throughput.py --smoke --out /tmp/r.json     # tiny models on CPU (< 60 s)
    python benchmarks/throughput.py --only rollout,score --no-hf  # pick phases

What runs (docs/PERFORMANCE.md explains every number):

* bandwidth: device-to-device copy bandwidth of one large array (read + write bytes / time);
* rollout:   `sampling.generate_arrays`, Qwen3-4B student (random bf16 weights), temperature 1,
             EOS ignored (the EOS id is outside the vocabulary): B=64 x (128 prompt, 256 new) and
             B=256 x (128, 128 new); prefill-only time from the same executable (max_new_tokens=0
             is an array, so it does not recompile) gives decode ms/step, compared with the
             memory-bandwidth floor (weights + KV cache at the mean context, over the bandwidth);
* score:     `scoring.score`, B=32 x 512 tokens (256 prompt + 256 completion), for the
             Qwen3-4B student and the Qwen3-30B-A3B teacher;
* update:    the trainer's own update step (`update.update_fn`): one LoRA (rank 32, all seven
             projections, fp32 adapters, AdamW) on-policy sampled-reverse-KL step at the 4B
             preset, B=64 x (128 + 256): tokens/s and MFU;
* hf:        HF transformers (PyTorch) `generate` at the rollout shapes and forward scoring at
             the scoring shapes, in a child process that exits before JAX touches the GPU (the
             two frameworks' allocators never share it);
* estimate:  (--estimate) wall time of a 100-step `teacher_seeded` Qwen3-4B <- 30B-A3B run from
             the measured phase times.

Phases run one after another and free their arrays: the student (8 GB) and the teacher (61 GB)
are never resident together. Every timing is a median over `--reps` runs after a warm-up call
(compile + one run, reported separately). A failing phase is recorded in the JSON (`errors`) and
the rest still runs; the exit status is then 1. No timing is asserted anywhere.

What it times is what trains: the update step, the optimizer defaults (`update.OptimConfig`),
the teacher-seeding schedule (`methods`) and the KV-cache byte formula (`memplan`) come from
the library, never a copy. torch/transformers are imported only in the HF child process.

This file is the command line and the phase runner; the measurements are in throughput_phases.py,
the derived numbers (roofline, estimate, ratios, targets) and the table in throughput_report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks.*` and `cliffdistill` from a plain script run
    sys.path.insert(0, str(REPO))

if __name__ == "__main__":
    # Before JAX initialises: smoke runs on CPU; on a GPU let JAX take the card (the HF child has
    # exited by the time JAX allocates). The 30B-A3B teacher (61 GB) does not fit the default 75%.
    if "--smoke" in sys.argv:  # CPU, and cheap compiles: smoke numbers are not performance data
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")

import jax  # noqa: E402

from benchmarks.throughput_phases import (  # noqa: E402
    GPU_SHAPES, LORA, SMOKE_SHAPES, SMOKE_STUDENT, SMOKE_TEACHER, bench_bandwidth, bench_generate,
    bench_score, bench_update, delete_tree, init_params_on_device, run_hf_child, tree_bytes)
from benchmarks.throughput_report import estimate, ratios, roofline, table  # noqa: E402
from cliffdistill.models import lora as lora_lib  # noqa: E402
from cliffdistill.models import transformer  # noqa: E402
from cliffdistill.models.config import ModelConfig, preset  # noqa: E402
from cliffdistill.models.flops import active_params, peak_flops  # noqa: E402


def _jax_flag(name: str) -> Any:
    try:
        return jax.config.read(name)
    except Exception:  # noqa: BLE001 - older/newer JAX spell it differently; informational only
        return os.environ.get(name.upper())


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny models and shapes on CPU (exercises every code path; < 60 s)")
    p.add_argument("--out", default="", help="write the results JSON here")
    p.add_argument("--only", default="rollout,score,update,hf",
                   help="comma-separated phases: rollout,score,update,hf")
    p.add_argument("--no-hf", action="store_true", help="skip the HF transformers baseline")
    p.add_argument("--estimate", action="store_true",
                   help="also estimate a 100-step teacher_seeded run (implied by --smoke); adds "
                        "the +LoRA rollout, the teacher's seeding decode and the study-shape "
                        "teacher scoring")
    p.add_argument("--student", default="qwen3_4b", help="student preset")
    p.add_argument("--teacher", default="qwen3_30b_a3b", help="teacher preset")
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (median); 0 = default")
    p.add_argument("--moe-impl", default="ragged,grouped",
                   help="comma-separated MoE paths to time for the teacher's scoring: ragged "
                        "(lax.ragged_dot), grouped (capacity-based einsums), dense (every expert "
                        "on every token; the test reference). The first one also runs the "
                        "teacher's decode and the study-shape scoring")
    p.add_argument("--peak-flops", type=float, default=0.0,
                   help="peak FLOP/s per device for MFU (0: from the device kind)")
    p.add_argument("--compile-cache", default="",
                   help="JAX persistent compilation cache directory (e.g. cache/jax, which git "
                        "ignores): a rerun on the same machine skips compilation; warm-up times "
                        "then no longer include it")
    p.add_argument("--hf-timeout", type=int, default=480, help="seconds for the HF child")
    p.add_argument("--hf-from", default="",
                   help="reuse the `hf` section of an earlier results JSON from the SAME device "
                        "instead of running the HF child (to split a long run in two)")
    args = p.parse_args(argv)
    args.phases = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = args.phases - {"rollout", "score", "update", "hf"}
    if unknown:
        p.error(f"--only: unknown phase(s) {sorted(unknown)}; choose from rollout,score,update,hf")
    args.moe_impls = [x.strip() for x in args.moe_impl.split(",") if x.strip()]
    bad = [x for x in args.moe_impls if x not in transformer.MOE_IMPLS or x == "auto"]
    if bad or not args.moe_impls:
        p.error(f"--moe-impl: unknown path(s) {bad}; choose from ragged,grouped,dense")
    if args.no_hf:
        args.phases.discard("hf")
    if args.smoke:
        args.estimate = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shapes = SMOKE_SHAPES if args.smoke else GPU_SHAPES
    if args.reps:
        shapes = dataclasses.replace(shapes, reps=args.reps)
    student = SMOKE_STUDENT if args.smoke else preset(args.student)
    teacher = SMOKE_TEACHER if args.smoke else preset(args.teacher)
    phases = args.phases
    moe_impls = args.moe_impls
    t_start = time.perf_counter()
    res: dict[str, Any] = {"meta": {}, "warmup_s": {}, "errors": {}}

    # HF first, in a child process, while JAX has not touched the accelerator.
    if args.hf_from:
        res["hf"] = dict(json.loads(Path(args.hf_from).read_text()).get("hf", {}))
        res["hf"]["source"] = f"reused from {args.hf_from}"
    elif "hf" in phases:
        log("HF transformers baseline (child process) ...")
        res["hf"] = run_hf_child(student, teacher, shapes, args.smoke, phases, args.hf_timeout)
    if "hf" in res:
        for k, v in res["hf"].items():
            if isinstance(v, dict) and "error" in v:
                res["errors"][f"hf.{k}"] = v["error"]
        if "error" in res["hf"]:
            res["errors"]["hf"] = res["hf"]["error"]

    if args.compile_cache:
        try:
            jax.config.update("jax_compilation_cache_dir", args.compile_cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        except Exception as e:  # noqa: BLE001 - an optional speed-up only
            log(f"--compile-cache ignored: {e}")
    dev = jax.devices()[0]
    if dev.platform == "cpu" and not args.smoke:
        log("the real presets need a GPU (a 4B decode on CPU would take hours): use --smoke on CPU")
        return 2
    peak = peak_flops(dev.device_kind, args.peak_flops)
    res["meta"] = {
        "smoke": args.smoke, "date": datetime.date.today().isoformat(),
        "platform": dev.platform, "device_kind": dev.device_kind, "n_devices": jax.device_count(),
        "jax": jax.__version__, "python": platform.python_version(),
        "host": platform.machine(), "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "student": "smoke_qwen3" if args.smoke else args.student,
        "teacher": "smoke_qwen3_moe" if args.smoke else args.teacher,
        "student_active_params": active_params(student),
        "teacher_active_params": active_params(teacher),
        "peak_flops_per_s": peak, "dtype": "bfloat16", "shapes": dataclasses.asdict(shapes),
        "phases": sorted(phases), "estimate": args.estimate,
        "jax_disable_most_optimizations": _jax_flag("jax_disable_most_optimizations"),
        "compile_cache": args.compile_cache or None, "moe_impl": moe_impls,
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }

    def save(final: bool = False) -> None:
        """The JSON after every phase (`partial: true` until the end): a run killed at a time
        limit still leaves what it measured."""
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({**res, "partial": not final}, indent=1,
                                                 sort_keys=True, default=float))

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        """Runs one measurement, stores it at res[a][b] for name "a.b" (or res[name]), saves."""
        log(f"{name} ...")
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - recorded; later phases still run
            msg = f"{type(e).__name__}: {e}"
            log(f"{name} FAILED: {msg[:300]}")
            res["errors"][name] = msg[:2000]
            out = {"error": msg[:2000]}
        if isinstance(out, dict) and "warmup_s" in out:
            res["warmup_s"][name] = out["warmup_s"]
            log(f"{name}: warm-up {out['warmup_s']:.1f}s, median {out['median_s']:.4f}s")
        *parents, leaf = name.split(".")
        d = res
        for k in parents:
            d = d.setdefault(k, {})
        d[leaf] = out
        save()
        return out

    def init(role: str, cfg: ModelConfig, seed: int) -> Any:
        t0 = time.perf_counter()
        log(f"initialising the {role} on the device ...")
        try:
            params = init_params_on_device(cfg, seed=seed, per_leaf=not args.smoke)
        except Exception as e:  # noqa: BLE001
            res["errors"][f"{role}_init"] = f"{type(e).__name__}: {e}"[:2000]
            log(f"{role} init FAILED: {e}")
            return None
        res["meta"][f"{role}_weight_bytes"] = tree_bytes(params)
        res["meta"][f"{role}_params"] = transformer.count_params(params)
        res["meta"][f"{role}_init_s"] = time.perf_counter() - t0
        log(f"{role}: {res['meta'][f'{role}_params'] / 1e9:.3f}B params, "
            f"{res['meta'][f'{role}_weight_bytes'] / 2**30:.2f} GiB")
        return params

    bw = phase("bandwidth", lambda: bench_bandwidth(shapes.bandwidth_bytes, shapes.reps)).get(
        "copy_bandwidth_bytes_per_s")

    # ---- student phases
    params = init("student", student, 0) if phases & {"rollout", "score", "update"} else None
    if params is not None:
        if "rollout" in phases:
            for name, B, P, G in shapes.rollout:
                phase(f"rollout.{name}", lambda B=B, P=P, G=G: bench_generate(
                    student, params, None, B, P, G, shapes.reps))
            if args.estimate:  # the trainer samples with the adapters on
                _, B, P, G = shapes.rollout[0]
                lora = lora_lib.init_lora(student, LORA, jax.random.key(5),
                                          transformer.param_shapes(student))
                phase("rollout.b64_lora", lambda: bench_generate(
                    student, params, lora, B, P, G, shapes.reps))
                delete_tree(lora)
            res["roofline"] = roofline(student, res["meta"]["student_weight_bytes"], bw,
                                       res["rollout"])
        if "score" in phases:
            phase("score.student", lambda: bench_score(student, params, *shapes.score,
                                                       shapes.reps))
        if "update" in phases:
            phase("update", lambda: bench_update(student, teacher, params, *shapes.update,
                                                 shapes.reps, peak))
        delete_tree(params)
        del params
        gc.collect()

    # ---- teacher phases (the student is gone: the 57 GiB teacher then fits an 80 GB card)
    tparams = init("teacher", teacher, 1) if "score" in phases else None
    if tparams is not None:
        for i, impl in enumerate(moe_impls):  # one timing per MoE path; the first is the reference
            phase("score.teacher" if i == 0 else f"score.teacher_{impl}", lambda impl=impl: bench_score(
                teacher, tparams, *shapes.score, shapes.reps, moe_impl=impl))
        if args.estimate:
            B, P, Gs = shapes.teacher_decode  # the teacher writing the seed prefix
            phase("teacher_decode", lambda: bench_generate(
                teacher, tparams, None, B, P, Gs, shapes.reps, moe_impl=moe_impls[0]))
            # the study's scoring shape: prompts_per_step x (prompt + max_new_tokens)
            phase("score.teacher_study", lambda: bench_score(
                teacher, tparams, *shapes.update, shapes.reps, moe_impl=moe_impls[0]))
        delete_tree(tparams)
        del tparams
        gc.collect()

    res["ratios"] = ratios(res)
    if args.estimate:
        if {"rollout", "score", "update"} <= phases:
            res["estimate"] = estimate(res, student)
            if "error" in res["estimate"]:
                res["errors"]["estimate"] = res["estimate"]["error"]
        else:
            res["estimate"] = {"skipped": "needs the rollout, score and update phases"}
        res["ratios"] = ratios(res)
    res["meta"]["wall_s"] = time.perf_counter() - t_start
    if not res["errors"]:
        del res["errors"]
    save(final=True)
    if args.out:
        log(f"wrote {args.out}")
    print(table(res), flush=True)
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
