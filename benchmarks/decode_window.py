"""Decode step cost on sliding-window layers: windowed reads against a full-attention model.

    python benchmarks/decode_window.py [--live 4000] [--window 128] [--reps 20]

A Mistral-shaped toy (every layer sliding; 4 layers, d_model 256, 8 query / 2 KV heads of 32,
batch 8, cache 4096 slots) runs one jitted `decode_forward` step at `--live` written slots; the
same model with no window (full attention, which reads the whole live prefix on every layer, as a
sliding layer did before windowed reads) is the baseline. The two are timed interleaved A/B
(`--reps` calls each after one warm-up); the 1-minute load average is recorded before and after.
CPU figures: on an accelerator a decode step is also bound by the bytes it reads, so the ratio
of reads (live / window) is the expected ceiling, not a measured GPU number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from cliffdistill.models import config as mconfig
from cliffdistill.models import transformer


def step_fn(cfg: mconfig.ModelConfig):
    return jax.jit(lambda p, tok, pos, cache: transformer.decode_forward(cfg, p, tok, pos, cache)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live", type=int, default=4000)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--cache", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    L, B, S = 4, 8, args.cache
    sliding = mconfig.ModelConfig(
        model_type="mistral", vocab_size=512, hidden_size=256, num_layers=L, num_heads=8,
        num_kv_heads=2, head_dim=32, intermediate_size=512, max_position_embeddings=S,
        sliding_window=args.window, layer_types=("sliding_attention",) * L)
    full = sliding.replace(sliding_window=None, layer_types=())
    params = transformer.init_params(sliding, jax.random.key(0))
    key = jax.random.key(1)
    shape = (L, B, S, 2, 32)
    cache = transformer.KVCache(k=jax.random.normal(key, shape), v=jax.random.normal(key, shape),
                                valid=jnp.arange(S)[None].repeat(B, 0) < args.live,
                                index=jnp.asarray(args.live, jnp.int32))
    tok, pos = jnp.zeros((B,), jnp.int32), jnp.full((B,), args.live, jnp.int32)
    fns = {"windowed (sliding)": step_fn(sliding), "full prefix (no window)": step_fn(full)}
    load0 = os.getloadavg()[0]
    for f in fns.values():
        f(params, tok, pos, cache).block_until_ready()
    times = {n: [] for n in fns}
    for _ in range(args.reps):
        for name, f in fns.items():
            t = time.perf_counter()
            f(params, tok, pos, cache).block_until_ready()
            times[name].append(time.perf_counter() - t)
    med = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "live": args.live,
           "window": args.window, "cache": S, "median_ms": med, "load_before": load0,
           "load_after": os.getloadavg()[0]}
    for n, m in med.items():
        print(f"{n}: {m:.2f} ms/step")
    print(f"ratio {med['full prefix (no window)'] / med['windowed (sliding)']:.1f}x; load "
          f"{load0:.2f} -> {res['load_after']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
