"""The measurements of benchmarks/throughput.py: shapes and presets, timing helpers, and the jitted
phases (copy bandwidth, rollout, scoring, the trainer's LoRA update) plus the parent side of the
HF child process. Every function returns a JSON-ready dict; throughput.py runs and records them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cliffdistill.engine import methods, sampling, scoring, update
from cliffdistill.models import lora as lora_lib
from cliffdistill.models import transformer
from cliffdistill.models.config import ModelConfig, to_hf_config
from cliffdistill.models.flops import active_params

HF_BASELINE = Path(__file__).resolve().with_name("hf_baseline.py")  # the HF child process

# ============================================================================ settings

LORA = lora_lib.LoraConfig(rank=32, alpha=32.0)
VOCAB_CHUNK = 16384  # configs/base.py loss.vocab_chunk


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
    plan = update.plan_arrays(methods.ON_POLICY, kl_discount=0.0, jsd_beta=1.0, dpo_beta=0.1,
                              confidence_temperature=1.0)
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
