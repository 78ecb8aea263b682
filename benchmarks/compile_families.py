"""Compile time of a heterogeneous-layer model against a homogeneous one of the same size.

    python benchmarks/compile_families.py [--layers 26] [--reps 3] [--out results.json]

A 26-layer toy Gemma 3 (five sliding layers per full one, per-layer RoPE tables, (1 + w) norms,
four norms per layer, q/k norms, GeGLU) and a Llama of the same sizes (d_model 64, 4 query / 2
KV heads of 16, MLP 128, vocabulary 512) are each compiled from scratch for two programs: the
forward pass (logits of [4, 64] tokens) and the gradient of a sampled-token NLL with respect to
the params. Layers are scanned, so a heterogeneous stack must compile to one layer body, not
26: this measures that it does. Compilation is timed with `jax.jit(...).lower(...).compile()`
after clearing JAX's caches, the two models alternated A/B `--reps` times; the 1-minute load
average is recorded before and after. CPU figures: compile time on other backends differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from cliffdistill.models import config as mconfig
from cliffdistill.models import transformer


def toy_configs(layers: int) -> dict[str, mconfig.ModelConfig]:
    common = dict(vocab_size=512, hidden_size=64, num_layers=layers, num_heads=4, num_kv_heads=2,
                  head_dim=16, intermediate_size=128, max_position_embeddings=4096)
    gemma = mconfig.ModelConfig(
        model_type="gemma3_text", **common, hidden_act="gelu_pytorch_tanh", rope_theta=1e6,
        rope_local_theta=1e4, rope_scaling=mconfig.RopeScaling(factor=8.0, rope_type="linear"),
        query_pre_attn_scalar=16.0, sliding_window=16, layer_types=mconfig.gemma_layer_types(layers, 6),
        tie_word_embeddings=True)
    llama = mconfig.ModelConfig(model_type="llama", **common)
    return {"gemma3_text": gemma, "llama": llama}


def compile_seconds(cfg: mconfig.ModelConfig, program: str) -> float:
    params = transformer.param_shapes(cfg)
    tokens = jax.ShapeDtypeStruct((4, 64), jnp.int32)
    if program == "forward":
        fn = lambda p, t: transformer.apply(cfg, p, t)  # noqa: E731
    else:
        def fn(p, t):
            logits = transformer.apply(cfg, p, t[:, :-1])
            lp = jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, 1:, None], -1)
            return -jnp.mean(lp)
        fn = jax.grad(fn)
    jax.clear_caches()
    start = time.perf_counter()
    jax.jit(fn).lower(params, tokens).compile()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=26)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfgs = toy_configs(args.layers)
    result = {"device": jax.devices()[0].device_kind, "platform": platform.platform(),
              "jax": jax.__version__, "layers": args.layers, "cores": os.cpu_count(),
              "load_before": os.getloadavg()[0], "programs": {}}
    for program in ("forward", "grad"):
        times: dict[str, list[float]] = {name: [] for name in cfgs}
        for _ in range(args.reps):
            for name, cfg in cfgs.items():  # interleaved A/B
                times[name].append(compile_seconds(cfg, program))
        med = {name: statistics.median(t) for name, t in times.items()}
        result["programs"][program] = {
            "median_s": med, "all_s": times, "ratio_gemma3_over_llama": med["gemma3_text"] / med["llama"]}
        print(f"{program}: " + ", ".join(f"{n} {m:.2f} s" for n, m in med.items())
              + f" (ratio {med['gemma3_text'] / med['llama']:.2f})")
    result["load_after"] = os.getloadavg()[0]
    print(f"load {result['load_before']:.2f} -> {result['load_after']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
