"""Does training R runs in one compiled step pay on this machine? Stacked vs one run at a time.

    python benchmarks/stacked_runs.py [--runs 3,5] [--reps 5] [--shapes toy_size,toy_context,mid]
                                      [--out results.json]

The study's rigour wants more seeds per method; runs of one method differ only in their seed, so
they could share compiled steps: LoRA and optimizer state stacked on a leading run axis. What
each phase of a step would become, measured against R separate calls of today's code:

* update: R calls of the trainer's jitted update (`engine.update.update_fn`, an on-policy
  sampled-reverse-KL step + AdamW), each with its own adapters, optimizer state and batch, vs one
  call of the same function `jax.vmap`-ed over the run axis. The stacked result is checked
  against the R separate results (max abs difference of the adapters after the step).
* teacher scoring: R calls on B rows vs one call on R*B rows -- exactly what stacking does for
  the teacher, which has no adapters.
* rollout: R calls of the sampler on B rows vs one call on R*B rows with one set of adapters.
  This is an upper bound on what stacking can save (a stacked rollout also applies R different
  adapters), not a stacked rollout.

Timing is interleaved: after one warm-up (compile) call of each side, separate and stacked
alternate for `--reps` repetitions, each timed alone; reported are medians, the ratio of the
medians (separate / stacked: above 1 means stacking is faster) and the 1-minute load average
before and after. A start-up load above a quarter of the cores is flagged `busy`: ratios from a
busy machine are not results. Imports stay lean (numpy, jax, optax): no ml_collections.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliffdistill.engine import methods, sampling, scoring, update  # noqa: E402
from cliffdistill.models import lora as lora_lib  # noqa: E402
from cliffdistill.models import transformer  # noqa: E402
from cliffdistill.models.config import ModelConfig  # noqa: E402

LORA = lora_lib.LoraConfig(rank=8, alpha=16.0)  # the toy's adapters (study/toy_config.py)
# (B, P, G): the toy's rollout batch, a typical student prompt, a trimmed completion width
BATCH = (32, 48, 64)
TEACHER_PROMPT = 160  # the context teacher's prompt carries two solved examples

_BASE = dict(model_type="qwen3", num_layers=2, head_dim=16, rope_theta=1e4,
             tie_word_embeddings=True, max_position_embeddings=1024, eos_token_ids=(1,),
             pad_token_id=0)
SHAPES: dict[str, ModelConfig] = {
    # the size setup's student, and the toy teacher (the context setup's student and teacher)
    "toy_size": ModelConfig(vocab_size=247, hidden_size=32, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, **_BASE),
    "toy_context": ModelConfig(vocab_size=247, hidden_size=64, num_heads=4, num_kv_heads=2,
                               intermediate_size=192, **_BASE),
    # a CPU mid-size model, to see whether stacking starts to pay as the model grows
    "mid": ModelConfig(vocab_size=8192, hidden_size=256, num_heads=8, num_kv_heads=2,
                       intermediate_size=768, **{**_BASE, "num_layers": 4, "head_dim": 32}),
}


def load_average() -> float:
    return os.getloadavg()[0]


def interleaved(separate: Callable[[], Any], stacked: Callable[[], Any], reps: int
                ) -> dict[str, Any]:
    """Medians of both sides, timed alternately after one warm-up call each."""
    jax.block_until_ready(separate())
    jax.block_until_ready(stacked())
    t_sep, t_stk = [], []
    before = load_average()
    for _ in range(reps):
        for fn, out in ((separate, t_sep), (stacked, t_stk)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t0)
    sep, stk = statistics.median(t_sep), statistics.median(t_stk)
    return {"separate_s": sep, "stacked_s": stk, "speedup": sep / stk,
            "separate_times_s": t_sep, "stacked_times_s": t_stk,
            "load_before": before, "load_after": load_average()}


def random_tokens(rng: np.random.Generator, cfg: ModelConfig, *shape: int) -> jax.Array:
    return jnp.asarray(rng.integers(2, cfg.vocab_size, shape), jnp.int32)


def on_policy_batch(cfg: ModelConfig, rng: np.random.Generator, B: int, P: int, G: int) -> dict:
    return {"prompt": random_tokens(rng, cfg, B, P), "prompt_mask": jnp.ones((B, P), bool),
            "completion": random_tokens(rng, cfg, B, G), "loss_mask": jnp.ones((B, G), bool),
            "lp_old": jnp.asarray(-rng.uniform(0.5, 3.0, (B, G)), jnp.float32),
            "lp_teacher": jnp.asarray(-rng.uniform(0.5, 3.0, (B, G)), jnp.float32)}


def stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def bench_update(cfg: ModelConfig, params: Any, R: int, reps: int) -> dict[str, Any]:
    B, P, G = BATCH
    optim = update.OptimConfig()
    spec = update.UpdateSpec(
        student=cfg, teacher=cfg, scale=LORA.scale, has_on=True, has_off=False, has_anchor=False,
        on_loss="sampled_rkl", off_loss="nll", shift_off=True, vocab_chunk=16384, remat="full",
        moe_impl="ragged", optim=optim, num_steps=0)
    step = update.update_fn(spec)
    optimizer = update.make_optimizer(optim, 1)
    plan = update.plan_arrays(methods.ON_POLICY, kl_discount=0.0, jsd_beta=1.0, dpo_beta=0.1,
                              confidence_temperature=1.0)
    rng = np.random.default_rng(0)
    shapes = transformer.param_shapes(cfg)
    # b != 0 so that the step's result depends on every adapter (a fresh b = 0 would hide a
    # run axis mixed up in the a-gradients' partner)
    loras = [jax.tree.map(lambda x: x + 0.01, lora_lib.init_lora(cfg, LORA, jax.random.key(r),
                                                                   shapes).layers)
             for r in range(R)]
    batches = [{"on": on_policy_batch(cfg, rng, B, P, G)} for _ in range(R)]
    opts = [optimizer.init(x) for x in loras]
    run_all = jax.jit(jax.vmap(lambda lo, op, b: step(lo, op, params, None, b, plan)))
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731  (the update donates its inputs)

    # the check first, from the same inputs: run r of the stacked step vs run r alone
    alone = [step(copy(lo), copy(op), params, None, b, plan)[0]
             for lo, op, b in zip(loras, opts, batches)]
    together = run_all(stack(loras), stack(opts), stack(batches))[0]
    diff = max(float(jnp.max(jnp.abs(a - t[r])))
               for r, tree in enumerate(alone)
               for a, t in zip(jax.tree.leaves(tree), jax.tree.leaves(together)))

    # then the timing, each side training on (its state carried from call to call, as a run does)
    sep_state = [[lo, op] for lo, op in zip(loras, opts)]
    stk_state = [stack(loras), stack(opts)]
    stk_batch = stack(batches)

    def separate() -> list:
        for st, b in zip(sep_state, batches):
            st[0], st[1], _ = step(st[0], st[1], params, None, b, plan)
        return [st[0] for st in sep_state]

    def stacked() -> Any:
        stk_state[0], stk_state[1], _ = run_all(stk_state[0], stk_state[1], stk_batch)
        return stk_state[0]

    return {**interleaved(separate, stacked, reps), "max_abs_diff_vs_separate": diff}


def bench_scoring(cfg: ModelConfig, params: Any, R: int, reps: int) -> dict[str, Any]:
    B, _, G = BATCH
    rng = np.random.default_rng(1)
    prompts = [random_tokens(rng, cfg, B, TEACHER_PROMPT) for _ in range(R)]
    comps = [random_tokens(rng, cfg, B, G) for _ in range(R)]
    pm, cm = jnp.ones((B, TEACHER_PROMPT), bool), jnp.ones((B, G), bool)
    score = jax.jit(lambda p, m, c, k: scoring.score(cfg, params, p, m, c, k))
    all_p, all_c = jnp.concatenate(prompts), jnp.concatenate(comps)
    all_pm, all_cm = jnp.concatenate([pm] * R), jnp.concatenate([cm] * R)
    return interleaved(lambda: [score(p, pm, c, cm) for p, c in zip(prompts, comps)],
                       lambda: score(all_p, all_pm, all_c, all_cm), reps)


def bench_rollout(cfg: ModelConfig, params: Any, R: int, reps: int) -> dict[str, Any]:
    B, P, G = BATCH
    rng = np.random.default_rng(2)
    lora = lora_lib.init_lora(cfg, LORA, jax.random.key(0), transformer.param_shapes(cfg))
    sp = sampling.SamplingParams.of(G)
    eos = (cfg.vocab_size + 1,)  # outside the vocabulary: every row runs the whole budget

    def gen(prompt: jax.Array) -> Any:
        n = prompt.shape[0]
        return sampling.generate_arrays(cfg, params, lora, prompt, jnp.ones(prompt.shape, bool),
                                        jax.random.key(3), jnp.arange(n, dtype=jnp.int32), sp,
                                        gen_len=G, eos_ids=eos, pad_id=0).tokens

    prompts = [random_tokens(rng, cfg, B, P) for _ in range(R)]
    together = jnp.concatenate(prompts)
    return interleaved(lambda: [gen(p) for p in prompts], lambda: gen(together), reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="3,5", help="stack sizes R")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", default="toy_size,toy_context,mid")
    ap.add_argument("--phases", default="update,scoring,rollout")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    start_load = load_average()
    out: dict[str, Any] = {
        "meta": {"date": time.strftime("%Y-%m-%d"), "platform": platform.platform(),
                 "cpus": cores, "backend": jax.default_backend(), "jax": jax.__version__,
                 "batch_BPG": BATCH, "teacher_prompt": TEACHER_PROMPT, "lora_rank": LORA.rank,
                 "start_load": start_load, "busy": start_load > cores / 4},
        "results": []}
    if out["meta"]["busy"]:
        print(f"warning: load average {start_load:.2f} on {cores} cores: ratios from a busy "
              "machine are not results", file=sys.stderr)
    benches = {"update": bench_update, "scoring": bench_scoring, "rollout": bench_rollout}
    for name in a.shapes.split(","):
        cfg = SHAPES[name]
        params = jax.jit(transformer.init_params, static_argnums=0)(cfg, jax.random.key(7))
        for R in (int(r) for r in a.runs.split(",")):
            for phase in a.phases.split(","):
                r = {"shape": name, "runs": R, "phase": phase,
                     **benches[phase](cfg, params, R, a.reps)}
                out["results"].append(r)
                extra = (f"  max|diff| {r['max_abs_diff_vs_separate']:.1e}"
                         if "max_abs_diff_vs_separate" in r else "")
                print(f"{name:12s} R={R} {phase:8s} separate {r['separate_s'] * 1e3:8.1f} ms  "
                      f"stacked {r['stacked_s'] * 1e3:8.1f} ms  speed-up {r['speedup']:.2f}x  "
                      f"load {r['load_before']:.2f}->{r['load_after']:.2f}{extra}", flush=True)
                if a.out:
                    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
