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
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HF_BASELINE = Path(__file__).resolve().with_name("hf_baseline.py")  # the HF child process

if __name__ == "__main__":
    # Before JAX initialises: smoke runs on CPU; on a GPU let JAX take the card (the HF child has
    # exited by the time JAX allocates). The 30B-A3B teacher (61 GB) does not fit the default 75%.
    if "--smoke" in sys.argv:  # CPU, and cheap compiles: smoke numbers are not performance data
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from cliffdistill import memplan, methods, sampling, scoring, update  # noqa: E402
from cliffdistill.models import lora as lora_lib  # noqa: E402
from cliffdistill.models import transformer  # noqa: E402
from cliffdistill.models.flops import active_params, peak_flops  # noqa: E402
from cliffdistill.models.config import ModelConfig, preset, to_hf_config  # noqa: E402

# ============================================================================ settings

LORA = lora_lib.LoraConfig(rank=32, alpha=32.0)
VOCAB_CHUNK = 16384  # configs/base.py loss.vocab_chunk

# The study's teacher_seeded run (DESIGN §1, configs/base.py defaults) that --estimate prices.
STUDY = dict(steps=100, prompts_per_step=64, samples_per_prompt=1, prompt_len=128,
             max_new_tokens=256, seed_bucket=32, lora_rank=32, eval_every=25, n_eval=500, eval_batch=64, eval_max_new_tokens=1024)


@dataclasses.dataclass(frozen=True)
class Shapes:
    rollout: tuple[tuple[str, int, int, int], ...]  # (name, B, P, G)
    score: tuple[int, int, int]  # B, P, G
    update: tuple[int, int, int]
    teacher_decode: tuple[int, int, int]  # B, P, gen bucket (teacher seeding)
    bandwidth_bytes: int
    reps: int
    hf_gen_reps: int


GPU_SHAPES = Shapes(rollout=(("b64", 64, 128, 256), ("b256", 256, 128, 128)),
                    score=(32, 256, 256), update=(64, 128, 256), teacher_decode=(64, 128, 32),
                    bandwidth_bytes=4 << 30, reps=3, hf_gen_reps=1)
SMOKE_SHAPES = Shapes(rollout=(("b64", 4, 16, 16), ("b256", 8, 16, 8)), score=(4, 16, 16),
                      update=(4, 16, 16), teacher_decode=(4, 16, 32), bandwidth_bytes=32 << 20,
                      reps=2, hf_gen_reps=1)

SMOKE_STUDENT = ModelConfig(
    model_type="qwen3", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=16, intermediate_size=128, rope_theta=1e6, tie_word_embeddings=True,
    max_position_embeddings=1024, eos_token_ids=(2,), pad_token_id=0)
SMOKE_TEACHER = ModelConfig(
    model_type="qwen3_moe", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, intermediate_size=128, rope_theta=1e6,
    max_position_embeddings=1024, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
    eos_token_ids=(2,), pad_token_id=0)


def _jax_flag(name: str) -> Any:
    try:
        return jax.config.read(name)
    except Exception:  # noqa: BLE001 - older/newer JAX spell it differently; informational only
        return os.environ.get(name.upper())


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================ helpers


def update_flops(cfg: ModelConfig, B: int, P: int, G: int, rank: int) -> dict[str, float]:
    """Model FLOPs of one LoRA update on B rows of P prompt + G completion tokens.

    Frozen base weights get no weight gradient, so each base matmul costs 2*n per token forward
    and 2*n backward (activation gradient only). Attention scores/values (causal pairs) cost
    4*L*Hq*hd per pair forward and twice that backward. Adapters (in -> r -> out) cost
    2*r*(in+out) forward and 4*r*(in+out) backward (activation + weight gradients). Log-probs
    unembed only the G completion positions. The layer recomputation of `remat` is not counted
    (it is hardware work, not model work).
    """
    T = P + G
    D, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_layers
    n_body = active_params(cfg) - D * V
    lin = 2.0 * n_body * B * T + 2.0 * D * V * B * G
    attn = 4.0 * L * cfg.num_heads * cfg.head_dim * B * T * (T + 1) / 2
    shapes = transformer.param_shapes(cfg)["layers"]
    lora_dims = sum(shapes[n].shape[-2] + shapes[n].shape[-1]
                    for n in dataclasses.replace(LORA, rank=rank).target_names(cfg))
    lora_fwd = 2.0 * rank * lora_dims * L * B * T
    return {"linear_fwd": lin, "attention_fwd": attn, "lora_fwd": lora_fwd,
            "model_flops": 2 * lin + 3 * attn + 3 * lora_fwd,
            "remat_recompute_flops": lin + attn + lora_fwd}


def kv_bytes(cfg: ModelConfig, B: int, ctx: float) -> float:
    """bf16 KV cache of B rows x ctx positions on one device (the memory planner's formula)."""
    return memplan.kv_cache_bytes(cfg, B, ctx, memplan.MeshShape(), 2)


def tree_bytes(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))


def delete_tree(tree: Any) -> None:
    for x in jax.tree_util.tree_leaves(tree):
        if isinstance(x, jax.Array):
            x.delete()


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, list[float], Any]:
    """(warm-up seconds: compile + first run, [run seconds], last output); block_until_ready."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    warm = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return warm, times, out


def device_peak_gib() -> float | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has stats
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**30


@jax.jit
def _copy_kernel(x: jax.Array) -> jax.Array:
    return x + jnp.ones((), x.dtype)  # one read and one write of every byte


def init_params_on_device(cfg: ModelConfig, seed: int, dtype: Any = jnp.bfloat16,
                          per_leaf: bool = True) -> Any:
    """Random params (norms 1, weights N(0, 0.02)) created on the device leaf by leaf.

    Never through host numpy, and never the whole fp32 tensor at once: stacked [L, ...] leaves
    are generated one layer at a time (`lax.map`), so the 30B-A3B teacher (61 GB in bf16) needs
    only one layer's fp32 temporary on top of its own bytes. per_leaf=False (the smoke test's
    tiny models) is one jitted `transformer.init_params` instead: one compile instead of many.
    """
    if not per_leaf:
        init = jax.jit(transformer.init_params, static_argnums=(0, 2))
        return jax.block_until_ready(init(cfg, jax.random.key(seed), dtype))
    shapes = transformer.param_shapes(cfg, dtype)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    key = jax.random.key(seed)
    leaves = []
    for i, (path, sds) in enumerate(flat):
        name = str(getattr(path[-1], "key", path[-1]))
        if name.endswith("norm"):
            leaves.append(_ones_leaf(sds.shape, sds.dtype))
        else:
            leaves.append(_normal_leaf(jax.random.fold_in(key, i), sds.shape, sds.dtype))
    return jax.block_until_ready(jax.tree_util.tree_unflatten(treedef, leaves))


def _ones_leaf_impl(shape: tuple[int, ...], dtype: Any) -> jax.Array:
    return jnp.ones(shape, dtype)


def _normal_leaf_impl(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    def one(k, s):
        return (0.02 * jax.random.normal(k, s, jnp.float32)).astype(dtype)

    if len(shape) >= 3:
        return jax.lax.map(lambda k: one(k, shape[1:]), jax.random.split(key, shape[0]))
    return one(key, shape)


_ones_leaf = jax.jit(_ones_leaf_impl, static_argnums=(0, 1))
_normal_leaf = jax.jit(_normal_leaf_impl, static_argnums=(1, 2))


def _rand_tokens(rng: np.random.Generator, V: int, *shape: int) -> jax.Array:
    return jnp.asarray(rng.integers(3, V, size=shape, dtype=np.int32))


# ============================================================================ JAX phases


def bench_bandwidth(n_bytes: int, reps: int) -> dict[str, Any]:
    x = jnp.zeros((n_bytes // 4,), jnp.float32)
    warm, times, out = timed(lambda: _copy_kernel(x), max(reps, 5))
    t = statistics.median(times)
    res = {"bytes": n_bytes, "warmup_s": warm, "times_s": times, "median_s": t,
           "copy_bandwidth_bytes_per_s": 2 * n_bytes / t,
           "definition": "(read + write bytes) / time of y = x + 1 on one float32 array"}
    delete_tree((x, out))
    return res


def bench_generate(cfg: ModelConfig, params: Any, lora: Any, B: int, P: int, G: int, reps: int,
                   seed: int = 0, moe_impl: str = "ragged") -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    prompt, mask = _rand_tokens(rng, cfg.vocab_size, B, P), jnp.ones((B, P), bool)
    key, rows = jax.random.key(seed), jnp.arange(B, dtype=jnp.int32)
    eos = (cfg.vocab_size,)  # never sampled: every row runs the full budget

    def call(new: int) -> Any:
        return sampling.generate_arrays(
            cfg, params, lora, prompt, mask, key, rows, sampling.SamplingParams.of(new),
            gen_len=G, eos_ids=eos, pad_id=0, moe_impl=moe_impl)

    warm, times, out = timed(lambda: call(G), reps)
    lengths = np.asarray(out.lengths)
    _, pre_times, _ = timed(lambda: call(0), reps)  # same executable: prefill (+ loop setup) only
    t, t_pre = statistics.median(times), statistics.median(pre_times)
    step = max(t - t_pre, 1e-12) / G
    return {"B": B, "P": P, "G": G, "lora": lora is not None, "moe_impl": moe_impl if cfg.is_moe
            else None, "warmup_s": warm, "times_s": times,
            "median_s": t, "prefill_median_s": t_pre, "decode_ms_per_step": 1e3 * step,
            "new_tokens_per_s": B * G / t, "decode_new_tokens_per_s": B / step,
            "min_length": int(lengths.min()), "ran_full_length": bool((lengths == G).all()),
            "device_peak_gib_so_far": device_peak_gib()}


def bench_score(cfg: ModelConfig, params: Any, B: int, P: int, G: int, reps: int,
                seed: int = 1, moe_impl: str = "ragged") -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    prompt, pmask = _rand_tokens(rng, cfg.vocab_size, B, P), jnp.ones((B, P), bool)
    comp, cmask = _rand_tokens(rng, cfg.vocab_size, B, G), jnp.ones((B, G), bool)
    warm, times, lp = timed(lambda: scoring.score(cfg, params, prompt, pmask, comp, cmask,
                                                  vocab_chunk=VOCAB_CHUNK, moe_impl=moe_impl), reps)
    t = statistics.median(times)
    return {"B": B, "P": P, "G": G, "moe_impl": moe_impl if cfg.is_moe else None,
            "warmup_s": warm, "times_s": times, "median_s": t,
            "tokens_per_s": B * (P + G) / t, "finite": bool(np.isfinite(np.asarray(lp)).all()),
            "device_peak_gib_so_far": device_peak_gib()}


def make_update(student: ModelConfig, teacher: ModelConfig, scale: float
                ) -> tuple[Callable, Any]:
    """The trainer's jitted update for an on-policy sampled-reverse-KL step, with the default
    optimizer (configs/base.py `optim`). Returns (update(lora, opt, base, batch, plan), optimizer)."""
    optim = update.OptimConfig()
    spec = update.UpdateSpec(
        student=student, teacher=teacher, scale=scale, has_on=True, has_off=False,
        has_anchor=False, on_loss="sampled_rkl", off_loss="nll", shift_off=True,
        vocab_chunk=VOCAB_CHUNK, remat=True, moe_impl="ragged", optim=optim, num_steps=0)
    fn = update.update_fn(spec)
    return (lambda lora, opt, base, batch, plan: fn(lora, opt, base, None, batch, plan),
            update.make_optimizer(optim, 1))


def update_batch(cfg: ModelConfig, B: int, P: int, G: int, seed: int = 2) -> tuple[dict, dict]:
    """A synthetic on-policy batch: the update's cost does not depend on where tokens came from."""
    rng = np.random.default_rng(seed)
    on = {"prompt": _rand_tokens(rng, cfg.vocab_size, B, P), "prompt_mask": jnp.ones((B, P), bool),
          "completion": _rand_tokens(rng, cfg.vocab_size, B, G),
          "loss_mask": jnp.ones((B, G), bool),
          "lp_old": jnp.asarray(-rng.uniform(0.5, 3.0, (B, G)), jnp.float32),
          "lp_teacher": jnp.asarray(-rng.uniform(0.5, 3.0, (B, G)), jnp.float32)}
    plan = update.plan_arrays(methods.ON_POLICY, kl_discount=0.0, jsd_beta=1.0)
    return {"on": on}, plan


def bench_update(student: ModelConfig, teacher: ModelConfig, params: Any, B: int, P: int, G: int,
                 reps: int, peak: float | None) -> dict[str, Any]:
    fn, optimizer = make_update(student, teacher, LORA.scale)
    lora = lora_lib.init_lora(student, LORA, jax.random.key(3), transformer.param_shapes(student))
    state = {"lora": lora.layers, "opt": jax.jit(optimizer.init)(lora.layers)}
    batch, plan = update_batch(student, B, P, G)
    aux_box: dict[str, Any] = {}

    def step():
        state["lora"], state["opt"], aux = fn(state["lora"], state["opt"], params, batch, plan)
        aux_box["aux"] = aux
        return state["lora"]

    warm, times, _ = timed(step, reps)
    t = statistics.median(times)
    fl = update_flops(student, B, P, G, LORA.rank)
    loss = float(aux_box["aux"]["loss/total"])
    res = {"B": B, "P": P, "G": G, "lora_rank": LORA.rank,
           "lora_targets": list(LORA.target_names(student)),
           "lora_params": int(sum(x.size for x in jax.tree_util.tree_leaves(state["lora"]))),
           "warmup_s": warm, "times_s": times, "median_s": t,
           "tokens_per_s": B * (P + G) / t, "trained_tokens_per_s": B * G / t,
           "model_flops": fl["model_flops"], "flops_breakdown": fl,
           "achieved_flops_per_s": fl["model_flops"] / t, "peak_flops_per_s": peak,
           "mfu": fl["model_flops"] / t / peak if peak else None,
           "hfu_with_remat": (fl["model_flops"] + fl["remat_recompute_flops"]) / t / peak
           if peak else None,
           "loss_finite": math.isfinite(loss), "device_peak_gib_so_far": device_peak_gib()}
    delete_tree((state, batch))
    return res


# ============================================================================ HF (parent side)


def run_hf_child(student: ModelConfig, teacher: ModelConfig, shapes: Shapes, smoke: bool,
                 phases: set[str], timeout: int) -> dict[str, Any]:
    jobs = []
    everything = not phases & {"rollout", "score", "update"}  # --only hf: the whole baseline
    if everything or "rollout" in phases:
        for name, B, P, G in shapes.rollout:
            jobs.append(dict(name=f"generate_{name}", kind="generate", model="student", B=B, P=P,
                             G=G, reps=shapes.hf_gen_reps))
    if everything or "score" in phases:
        B, P, G = shapes.score
        jobs += [dict(name=f"score_{role}", kind="score", model=role, B=B, P=P, G=G,
                      reps=shapes.reps) for role in ("student", "teacher")]
    spec = {"device": "cpu" if smoke else "cuda", "dtype": "bfloat16", "jobs": jobs,
            "student_hf": to_hf_config(student, "bfloat16"),
            "teacher_hf": to_hf_config(teacher, "bfloat16")}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "hf.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        env.pop("JAX_PLATFORMS", None)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(HF_BASELINE), str(spec_path),
                                   str(out_path)], env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"HF child timed out after {timeout} s (--hf-timeout)"}
        res = json.loads(out_path.read_text()) if out_path.exists() else {}
        res["wall_s"] = time.perf_counter() - t0
        if proc.returncode != 0 and "error" not in res:
            res["error"] = f"HF child exited with status {proc.returncode}"
    return res


# ============================================================================ derived numbers


def roofline(student: ModelConfig, weight_bytes: int, bw: float | None,
             roll: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, r in roll.items():
        if not isinstance(r, dict) or "error" in r or not bw:
            continue
        B, P, G = r["B"], r["P"], r["G"]
        ctx_mean = P + (G + 1) / 2  # keys read by the t-th new token: P + t + 1
        kv = kv_bytes(student, B, ctx_mean)
        floor_s = (weight_bytes + kv) / bw
        out[name] = {
            "weights_bytes": weight_bytes, "kv_bytes_mean_ctx": kv, "mean_ctx": ctx_mean,
            "kv_bytes_full_cache": kv_bytes(student, B, P + G),  # what our static cache reads
            "floor_ms_per_step": 1e3 * floor_s, "floor_new_tokens_per_s": B / floor_s,
            "ours_ms_per_step": r["decode_ms_per_step"],
            "pct_of_floor": 100.0 * floor_s * 1e3 / r["decode_ms_per_step"]}
    return out


def estimate(res: dict[str, Any], student: ModelConfig) -> dict[str, Any]:
    """Σ over 100 steps of (rollout + teacher seeding + teacher scoring + update) + evals."""
    roll = res.get("rollout", {})
    good = lambda d: isinstance(d, dict) and "error" not in d  # noqa: E731
    r = roll.get("b64_lora") if good(roll.get("b64_lora")) else roll.get("b64")
    td = res.get("teacher_decode")
    sc = res.get("score", {}).get("teacher_study") or res.get("score", {}).get("teacher")
    up = res.get("update")
    missing = [n for n, v in (("rollout b64", r), ("teacher decode", td), ("teacher score", sc),
                              ("update", up)) if not isinstance(v, dict) or "error" in v]
    if missing:
        return {"error": f"needs the measured {missing} (run rollout, score and update phases)"}
    # teacher scoring: measured at the study shape when --estimate ran it, else scaled by tokens
    study_tokens = STUDY["prompts_per_step"] * (STUDY["prompt_len"] + STUDY["max_new_tokens"])
    smoke = res["meta"]["smoke"]
    score_s = sc["median_s"]
    score_note = "measured at the study shape"
    if "teacher_study" not in res["score"] and not smoke:
        score_s *= study_tokens / (sc["B"] * (sc["P"] + sc["G"]))
        score_note = "scaled by token count from B=32x512"
    schedule = methods.get("teacher_seeded")  # the default schedule of configs/base.py
    steps = []
    for step in range(STUDY["steps"]):
        n = schedule(step).seed_tokens
        seed_s = td["prefill_median_s"] + n * td["decode_ms_per_step"] / 1e3 if n else 0.0
        steps.append({"seed_tokens": n, "rollout": r["median_s"], "seed": seed_s,
                      "score": score_s, "update": up["median_s"]})
    train_s = sum(s["rollout"] + s["seed"] + s["score"] + s["update"] for s in steps)
    # evals: greedy decode of eval_max_new_tokens at the eval batch; the per-step time is the
    # measured B=64 decode step scaled by bytes read (weights + KV at the mean context).
    n_evals = len({0, STUDY["steps"]} | set(range(STUDY["eval_every"], STUDY["steps"] + 1,
                                                  STUDY["eval_every"])))
    batches = math.ceil(STUDY["n_eval"] / STUDY["eval_batch"])
    W = res["meta"]["student_weight_bytes"]
    Bq, Pq, Gq = r["B"], r["P"], r["G"]
    Ge = STUDY["eval_max_new_tokens"] if not smoke else 4 * Gq
    step_s = r["decode_ms_per_step"] / 1e3 * (W + kv_bytes(student, Bq, Pq + Ge / 2)) / (
        W + kv_bytes(student, Bq, Pq + Gq / 2))
    eval_s = n_evals * batches * (r["prefill_median_s"] + Ge * step_s)
    total = train_s + eval_s
    per_phase = {k: sum(s[k] for s in steps) for k in ("rollout", "seed", "score", "update")}
    return {"settings": {**STUDY, **({"smoke_shapes": True, "eval_max_new_tokens": Ge,
                                      "prompts_per_step": Bq, "prompt_len": Pq,
                                      "max_new_tokens": Gq, "eval_batch": Bq} if smoke else {})},
            "rollout_source": "b64_lora" if good(roll.get("b64_lora")) else "b64",
            "score_source": score_note, "per_phase_s": per_phase, "train_s": train_s,
            "evals": n_evals, "eval_batches": batches, "eval_s": eval_s,
            "eval_note": "full-length greedy decode (no early EOS); decode step scaled by bytes",
            "total_s": total, "total_min": total / 60,
            "excludes": "model loading, compilation, checkpoints, host-side metrics"}


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    hf, out = res.get("hf", {}), {}

    def ok(d):
        return isinstance(d, dict) and bool(d) and "error" not in d and "skipped" not in d

    for name in ("b64", "b256"):
        ours, base = res.get("rollout", {}).get(name), hf.get(f"generate_{name}")
        if ok(ours) and ok(base):
            out[f"rollout_{name}_vs_hf"] = ours["new_tokens_per_s"] / base["new_tokens_per_s"]
    for role in ("student", "teacher"):
        ours, base = res.get("score", {}).get(role), hf.get(f"score_{role}")
        if ok(ours) and ok(base):
            out[f"score_{role}_vs_hf"] = ours["tokens_per_s"] / base["tokens_per_s"]
    rf = res.get("roofline", {}).get("b64")
    if rf:
        out["rollout_b64_pct_of_floor"] = rf["pct_of_floor"]
    up = res.get("update")
    if ok(up) and up.get("mfu") is not None:
        out["update_mfu_pct"] = 100 * up["mfu"]
    est = res.get("estimate")
    if ok(est):
        out["estimate_min"] = est["total_min"]
    return out


TARGETS = {  # key -> (threshold, direction, label)
    "rollout_b64_vs_hf": (15.0, ">=", ">= 15x HF"),
    "rollout_b64_pct_of_floor": (50.0, ">=", ">= 50% floor"),
    "score_student_vs_hf": (1.2, ">=", ">= 1.2x HF"),
    "score_teacher_vs_hf": (2.0, ">=", ">= 2x HF"),
    "update_mfu_pct": (35.0, ">=", ">= 35% MFU"),
    "estimate_min": (10.0, "<=", "<= 10 min"),
}


# ============================================================================ table


def _f(x: Any, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def table(res: dict[str, Any]) -> str:
    m, hf, rt = res["meta"], res.get("hf", {}), res.get("ratios", {})
    smoke = m["smoke"]
    lines = [
        "=" * 100,
        (f"cliffdistill throughput  |  {m['device_kind']} ({m['platform']})  |  jax {m['jax']}"
         f"  |  torch {hf.get('torch', '-')} / transformers {hf.get('transformers', '-')}"
         f"  |  {m['date']}"),
        f"student {m['student']}  teacher {m['teacher']}  |  bf16 random weights, EOS ignored"
        + ("  |  SMOKE: tiny models on CPU, numbers NOT comparable to GPU" if smoke else ""),
        "-" * 100,
        f"{'measurement':<44}{'ours':>14}{'HF':>12}{'ratio':>10}  {'target':<14}{'met':>4}",
    ]

    def met(key):
        if smoke or key not in rt:
            return "-"
        thr, d, _ = TARGETS[key]
        return "yes" if (rt[key] >= thr if d == ">=" else rt[key] <= thr) else "NO"

    def row(label, ours, base, key=None, fmt=",.0f"):
        ratio = rt.get(key) if key else None
        tgt = TARGETS[key][2] if key in TARGETS else ""
        lines.append(f"{label:<44}{_f(ours, fmt):>14}{_f(base, fmt):>12}"
                     f"{(_f(ratio, '.2f') + 'x') if ratio is not None else '-':>10}  "
                     f"{tgt:<14}{met(key) if key else '-':>4}")

    bw = res.get("bandwidth", {}).get("copy_bandwidth_bytes_per_s")
    lines.append(f"{'copy bandwidth (GB/s, read+write)':<44}{_f(bw and bw / 1e9, ',.1f'):>14}")
    roll = res.get("rollout", {})
    shape_of = {n: (B, P, G) for n, B, P, G in m["shapes"]["rollout"]}
    shape_of["b64_lora"] = shape_of.get("b64")
    for name in ("b64", "b256", "b64_lora"):
        r, h = roll.get(name), hf.get(f"generate_{name}")
        if not isinstance(r, dict) and not isinstance(h, dict):
            continue
        B, P, G = shape_of[name]
        lora = "+LoRA " if name == "b64_lora" else ""
        label = f"rollout {lora}B={B} P={P} G={G} new tok/s"
        for who, d in (("ours", r), ("HF", h)):
            if isinstance(d, dict) and "error" in d:
                lines.append(f"{label} {who}: ERROR {d['error']}"[:100])
        ours = r.get("new_tokens_per_s") if isinstance(r, dict) else None
        base = h.get("new_tokens_per_s") if isinstance(h, dict) else None
        row(label, ours, base, f"rollout_{name}_vs_hf" if name != "b64_lora" else None)
        rf = res.get("roofline", {}).get(name)
        if rf:
            lines.append(
                f"{'  decode ms/step  (floor ms/step)':<44}{_f(rf['ours_ms_per_step'], ',.3f'):>14}"
                f"{'(' + _f(rf['floor_ms_per_step'], ',.3f') + ')':>12}"
                f"{_f(rf['pct_of_floor'], '.1f') + '%':>10}  "
                f"{TARGETS['rollout_b64_pct_of_floor'][2] if name == 'b64' else '':<14}"
                f"{met('rollout_b64_pct_of_floor') if name == 'b64' else '-':>4}")
    for role in ("student", "teacher", "teacher_study"):
        s, h = res.get("score", {}).get(role), hf.get(f"score_{role}")
        if not isinstance(s, dict) and not isinstance(h, dict):
            continue
        B, P, G = m["shapes"]["update" if role == "teacher_study" else "score"]
        who = m["student"] if role == "student" else m["teacher"]
        label = f"score {who} B={B}x{P + G} tok/s" + (" (study)" if role == "teacher_study" else "")
        for name, d in (("ours", s), ("HF", h)):
            if isinstance(d, dict) and "error" in d:
                lines.append(f"{label} {name}: ERROR {d['error']}"[:100])
        ours = s.get("tokens_per_s") if isinstance(s, dict) else None
        base = h.get("tokens_per_s") if isinstance(h, dict) else None
        row(label, ours, base, f"score_{role}_vs_hf" if role != "teacher_study" else None)
    td = res.get("teacher_decode")
    if isinstance(td, dict) and "error" not in td:
        label = f"teacher decode B={td['B']} (seeding) ms/step"
        lines.append(f"{label:<44}"
                     f"{_f(td['decode_ms_per_step'], ',.3f'):>14}")
    up = res.get("update")
    if isinstance(up, dict):
        if "error" in up:
            lines.append(f"update: ERROR {up['error'][:80]}")
        else:
            row(f"LoRA r{up['lora_rank']} update B={up['B']}x{up['P'] + up['G']} tok/s",
                up["tokens_per_s"], None)
            lines.append(f"{'  MFU % (model FLOPs / peak)':<44}"
                         f"{_f(up['mfu'] and 100 * up['mfu'], '.1f'):>14}{'':>12}{'':>10}  "
                         f"{TARGETS['update_mfu_pct'][2]:<14}{met('update_mfu_pct'):>4}")
    est = res.get("estimate")
    if isinstance(est, dict):
        if "error" in est or "skipped" in est:
            lines.append(f"estimate: {est.get('error') or est['skipped']}"[:100])
        else:
            lines.append(f"{'estimate: 100-step teacher_seeded run (min)':<44}"
                         f"{_f(est['total_min'], ',.2f'):>14}{'':>12}{'':>10}  "
                         f"{TARGETS['estimate_min'][2]:<14}{met('estimate_min'):>4}")
            pp = est["per_phase_s"]
            lines.append(f"  = rollout {pp['rollout']:.1f}s + seeding {pp['seed']:.1f}s + score "
                         f"{pp['score']:.1f}s + update {pp['update']:.1f}s + evals "
                         f"{est['eval_s']:.1f}s")
    warm = {k: v for k, v in res.get("warmup_s", {}).items()}
    if warm:
        lines.append("warm-up (compile + first run, s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in warm.items()))
    if "error" in hf:
        lines.append(f"HF baseline: {hf['error'][:90]}")
    for k, v in res.get("errors", {}).items():
        lines.append(f"ERROR in {k}: {v[:90]}")
    lines.append("=" * 100)
    return "\n".join(lines)


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
