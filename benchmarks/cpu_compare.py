"""CPU comparison against HF transformers (torch CPU), one process, one mid-size model.

    python benchmarks/cpu_compare.py [--smoke] [--reps 3] [--out results.json]

A Qwen3-shaped dense model of ~27 M parameters (6 layers, d_model 512, 8 query / 2 KV heads of
64, MLP 1536, tied 16k vocabulary) and a Qwen3-MoE-shaped one (4 layers, d_model 256, 16
experts, top 4) are written once as HF checkpoints and loaded by both frameworks in fp32, so both
run the same weights. Each comparison is timed *interleaved*: after one warm-up (compile) call of each side, ours and
HF alternate A/B/A/B for `--reps` (>= 5 by default) repetitions, each call timed alone, so a
change in machine load hits both sides alike. Reported: the median and the spread (min, max) of
each side, the median of the per-pair ratios with their range, the 1-minute load average before
and after every comparison, and the thread settings of both frameworks. A start-up load above a
quarter of the cores is flagged `busy` in the JSON and warned about: ratios from a busy machine
are not results (other jobs slow the two frameworks unequally).

* rollout: our jitted sampler vs `model.generate` (T=1, no top-k/top-p, no EOS: every row runs
  the full budget), new tokens/s;
* scoring: per-token log-probs of a completion (ours: `scoring.score`; HF: forward with
  `logits_to_keep`, fp32 log-softmax, gather), tokens/s; MoE scoring under every `moe_impl`;
* update: one on-policy sampled-reverse-KL step with rank-16 LoRA on all seven projections and
  AdamW (ours under each `remat` policy; HF: the same loss with hand-written LoRA modules and
  torch AdamW), tokens/s;
* decode ms/step at a fixed live length (prompt 128, then 48 steps) for two cache capacities 4x
  apart: our sampler, and a greedy decode loop with live-prefix windows or the whole cache.
  HF `generate` runs once after a 4-token warm-up (it is the slowest call by far).

These are CPU figures: they guard against regressions and compare the two frameworks on the same
machine; they say nothing about GPU speed. Imports stay lean (numpy, jax, optax, torch,
transformers): no ml_collections or datasets.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliffdistill import models  # noqa: E402
from cliffdistill.engine import losses, sampling, scoring  # noqa: E402
from cliffdistill.models import lora as lora_lib  # noqa: E402
from cliffdistill.models import transformer  # noqa: E402
from cliffdistill.models.config import ModelConfig  # noqa: E402

LORA_RANK, LORA_ALPHA, LR = 16, 32.0, 3e-4
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Batch shapes of one benchmark mode (B rows; P prompt, G completion tokens)."""

    rollout: tuple[int, int, int]  # B, P, G
    score: tuple[int, int, int]
    update: tuple[int, int, int]
    decode: tuple[int, int, int, tuple[int, int]]  # B, P, steps, (capacity, 4 x capacity)


def dense_config(smoke: bool) -> ModelConfig:
    """Qwen3-like proportions: GQA 4:1, head_dim 64, MLP 3 x d_model, tied embeddings."""
    if smoke:
        return ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=192,
                           tie_word_embeddings=True, eos_token_ids=(1,), pad_token_id=0)
    return ModelConfig(model_type="qwen3", vocab_size=16384, hidden_size=512, num_layers=6,
                       num_heads=8, num_kv_heads=2, head_dim=64, intermediate_size=1536,
                       tie_word_embeddings=True, eos_token_ids=(1,), pad_token_id=0)


def moe_config(smoke: bool) -> ModelConfig:
    """Qwen3-MoE-like: many small experts, top-k routing, normalised top-k weights."""
    d, layers, vocab = (32, 2, 512) if smoke else (256, 4, 16384)
    return ModelConfig(model_type="qwen3_moe", vocab_size=vocab, hidden_size=d, num_layers=layers,
                       num_heads=4, num_kv_heads=2, head_dim=d // 4, intermediate_size=2 * d,
                       num_experts=8 if smoke else 16, num_experts_per_tok=2 if smoke else 4,
                       moe_intermediate_size=d, tie_word_embeddings=True, eos_token_ids=(1,),
                       pad_token_id=0)


def shapes(smoke: bool) -> Shapes:
    if smoke:
        return Shapes(rollout=(2, 8, 8), score=(2, 8, 8), update=(2, 8, 8), decode=(2, 16, 4, (32, 128)))
    return Shapes(rollout=(4, 64, 64), score=(4, 128, 128), update=(4, 64, 64),
                  decode=(4, 128, 48, (256, 1024)))


def log(msg: str) -> None:
    print(f"[cpu_compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_average() -> float:
    """1-minute load average (runnable + running tasks); nan where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def _spread(times: list[float]) -> dict[str, Any]:
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times)}


def interleaved(sides: dict[str, Callable[[], Any]], reps: int,
                warmups: dict[str, Callable[[], Any]] | None = None) -> dict[str, Any]:
    """Times each side `reps` times, alternating sides every call (A, B, A, B, ...), after one
    warm-up call of each (`warmups[name]` replaces it where a shorter call warms the same code).
    Each fn must block until its result exists. Returns per-side spreads plus the load average
    before and after."""
    load_before = load_average()
    warm = {}
    for name, fn in sides.items():
        t0 = time.perf_counter()
        ((warmups or {}).get(name) or fn)()
        warm[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {name: {"warmup_s": warm[name], **_spread(times[name])} for name in sides}
    out["load_before"], out["load_after"] = load_before, load_average()
    return out


def with_rate(timing: dict[str, Any], work: float, key: str) -> dict[str, Any]:
    """Adds `key` = work / median seconds (tokens/s) to one side's timing."""
    return {**timing, key: work / timing["median_s"]}


def pair_ratio(ours: dict[str, Any], hf: dict[str, Any]) -> dict[str, float]:
    """Speed ratio ours/HF: the median of the per-repetition ratios hf_t / ours_t (adjacent calls,
    so under the same load) and their range."""
    r = [h / o for o, h in zip(ours["times_s"], hf["times_s"])]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def compare(ours: Callable[[], Any], hf: Callable[[], Any], reps: int, work: float, key: str,
            hf_warmup: Callable[[], Any] | None = None) -> dict[str, Any]:
    """One ours-vs-HF comparison: interleaved timings, rates and the paired ratio."""
    t = interleaved({"ours": ours, "hf": hf}, reps, {"hf": hf_warmup} if hf_warmup else None)
    o, h = with_rate(t["ours"], work, key), with_rate(t["hf"], work, key)
    return {"ours": o, "hf": h, "ratio": pair_ratio(o, h),
            "load": [t["load_before"], t["load_after"]]}


def _tokens(rng: np.random.Generator, vocab: int, B: int, T: int) -> np.ndarray:
    return rng.integers(2, vocab, (B, T)).astype(np.int32)  # 0 pad, 1 EOS never drawn


# ============================================================================ ours (JAX)
# Each `ours_*` / `hf_*` builds a blocking zero-argument call; `run` times them.


def ours_rollout(cfg: ModelConfig, params: Any, B: int, P: int, G: int,
                 steps: int | None = None) -> Callable[[], Any]:
    """`sampling.generate_arrays` at T=1 with EOS outside the vocabulary; `steps` < G runs only
    that many decode steps in a G-bucket cache (max_new_tokens is an array: no recompile)."""
    prompt = jnp.asarray(_tokens(np.random.default_rng(0), cfg.vocab_size, B, P))
    n = G if steps is None else steps
    return lambda: jax.block_until_ready(sampling.generate_arrays(
        cfg, params, None, prompt, jnp.ones((B, P), bool), jax.random.key(0),
        jnp.arange(B, dtype=jnp.int32), sampling.SamplingParams.of(n), gen_len=G,
        eos_ids=(cfg.vocab_size,), pad_id=0))


def decode_ms(full: Callable[[], Any], prefill_only: Callable[[], Any], steps: int,
              reps: int) -> float:
    """ms per decode step: (median of a `steps`-step call - median of a prefill-only call) / steps,
    the two calls interleaved."""
    t = interleaved({"full": full, "prefill": prefill_only}, reps)
    return 1e3 * (t["full"]["median_s"] - t["prefill"]["median_s"]) / steps


def ours_decode_loop(cfg: ModelConfig, params: Any, B: int, P: int, S: int, live: bool
                     ) -> Callable[[int], Any]:
    """n -> a blocking greedy decode loop of n steps (jitted fori_loop, no sampling) in an S-slot
    cache: `decode_step_live` (the sampler's live-prefix windows) or `decode_step` (the whole
    cache, what the sampler read before)."""
    prompt = jnp.asarray(_tokens(np.random.default_rng(0), cfg.vocab_size, B, P))
    mask = jnp.ones((B, P), bool)
    step = (functools.partial(transformer.decode_step_live, windows=transformer.decode_windows(P, S))
            if live else transformer.decode_step)

    @jax.jit
    def run(n):
        logits, cache = transformer.prefill(cfg, params, prompt, mask, S)

        def body(t, carry):
            logits, cache = carry
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            return step(cfg, params, tok, P + t + jnp.zeros((B,), jnp.int32), cache)

        return jax.lax.fori_loop(0, n, body, (logits, cache))[0]

    return lambda n: jax.block_until_ready(run(jnp.int32(n)))


def ours_score(cfg: ModelConfig, params: Any, B: int, P: int, G: int,
               moe_impl: str = "auto") -> Callable[[], Any]:
    rng = np.random.default_rng(1)
    args = (jnp.asarray(_tokens(rng, cfg.vocab_size, B, P)), jnp.ones((B, P), bool),
            jnp.asarray(_tokens(rng, cfg.vocab_size, B, G)), jnp.ones((B, G), bool))
    return lambda: jax.block_until_ready(scoring.score(cfg, params, *args, moe_impl=moe_impl))


def update_batch(vocab: int, B: int, P: int, G: int) -> dict[str, np.ndarray]:
    """A synthetic on-policy batch: the update's cost does not depend on where tokens came from."""
    rng = np.random.default_rng(2)
    return {"prompt": _tokens(rng, vocab, B, P), "completion": _tokens(rng, vocab, B, G),
            "lp_old": -rng.uniform(0.5, 3.0, (B, G)).astype(np.float32),
            "lp_teacher": -rng.uniform(0.5, 3.0, (B, G)).astype(np.float32)}


def ours_update(cfg: ModelConfig, params: Any, batch: dict[str, np.ndarray], remat: str
                ) -> Callable[[], Any]:
    """One AdamW step on rank-16 LoRA adapters of the sampled reverse KL (as the trainer's)."""
    import optax

    B, P = batch["prompt"].shape
    G = batch["completion"].shape[1]
    lcfg = lora_lib.LoraConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
    lora = lora_lib.init_lora(cfg, lcfg, jax.random.key(0), params)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(LR, weight_decay=0.0))
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    mask = jnp.ones((B, G), bool)

    def loss_fn(layers):
        h = scoring.completion_hidden(cfg, params, b["prompt"], jnp.ones((B, P), bool),
                                      b["completion"], lora.replace(layers=layers), remat=remat)
        lp = scoring.chunked_token_logprobs(h, transformer.unembed_matrix(cfg, params),
                                            b["completion"], 16384)
        return losses.sampled_reverse_kl(lp, b["lp_old"], b["lp_teacher"], mask)

    @jax.jit
    def update(layers, opt_state):
        grads = jax.grad(loss_fn)(layers)
        updates, opt_state = optimizer.update(grads, opt_state, layers)
        return optax.apply_updates(layers, updates), opt_state

    state = {"layers": lora.layers, "opt": optimizer.init(lora.layers)}

    def step():
        state["layers"], state["opt"] = jax.block_until_ready(update(state["layers"], state["opt"]))

    return step


# ============================================================================ HF (torch CPU)


def hf_load(path: Path) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()


def hf_rollout(model: Any, B: int, P: int, new: int) -> Callable[[], Any]:
    import torch

    ids = torch.as_tensor(_tokens(np.random.default_rng(0), model.config.vocab_size, B, P),
                          dtype=torch.long)

    def run():
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                           temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                           min_new_tokens=new, pad_token_id=0, eos_token_id=1)

    return run


def _hf_logprobs(model: Any, ids: Any, G: int) -> Any:
    """log p(completion) [B, G] fp32: positions P-1 .. P+G-2 predict the completion."""
    import torch

    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=G + 1).logits
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return lp.gather(-1, ids[:, -G:, None])[..., 0]


def hf_score(model: Any, B: int, P: int, G: int) -> Callable[[], Any]:
    import torch

    rng = np.random.default_rng(1)
    ids = torch.as_tensor(np.concatenate([_tokens(rng, model.config.vocab_size, B, P),
                                          _tokens(rng, model.config.vocab_size, B, G)], 1),
                          dtype=torch.long)

    def run():
        with torch.inference_mode():
            return _hf_logprobs(model, ids, G)

    return run


def _add_torch_lora(model: Any, rank: int, scale: float) -> list[Any]:
    """Wraps every target nn.Linear of the decoder in `base(x) + scale * (x @ a) @ b` (a ~ N(0,
    1/in), b = 0, as ours) with the base frozen. Returns the adapter parameters."""
    import torch

    class LoraLinear(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear):
            super().__init__()
            self.base = base
            self.a = torch.nn.Parameter(torch.randn(base.in_features, rank) / math.sqrt(base.in_features))
            self.b = torch.nn.Parameter(torch.zeros(rank, base.out_features))

        def forward(self, x):
            return self.base(x) + scale * ((x @ self.a) @ self.b)

    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in TARGETS:
                if isinstance(getattr(parent, name, None), torch.nn.Linear):
                    wrapped = LoraLinear(getattr(parent, name))
                    setattr(parent, name, wrapped)
                    adapters += [wrapped.a, wrapped.b]
    return adapters


def hf_update(model: Any, batch: dict[str, np.ndarray]) -> Callable[[], Any]:
    """The same sampled-reverse-KL LoRA step in torch: forward, backward, clip, AdamW."""
    import torch

    adapters = _add_torch_lora(model, LORA_RANK, LORA_ALPHA / LORA_RANK)
    opt = torch.optim.AdamW(adapters, lr=LR, weight_decay=0.0)
    ids = torch.as_tensor(np.concatenate([batch["prompt"], batch["completion"]], 1), dtype=torch.long)
    G = batch["completion"].shape[1]
    lp_old, lp_t = torch.as_tensor(batch["lp_old"]), torch.as_tensor(batch["lp_teacher"])
    model.train()

    def step():
        lp = _hf_logprobs(model, ids, G)
        loss = -(torch.exp(lp - lp_old) * (lp_t - lp_old)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapters, 1.0)
        opt.step()

    return step


# ============================================================================ the run


def machine_state() -> dict[str, Any]:
    """What bends CPU timings: cores, load, and each framework's thread settings."""
    import torch

    env = {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
           if k in os.environ}
    return {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "jax_devices": jax.device_count(), "env": env}


def busy(load: float, cores: int | None) -> bool:
    """A machine with more than a quarter of its cores already in use: ratios are not results."""
    return load > 0.25 * (cores or 1)


def run(smoke: bool, reps: int) -> dict[str, Any]:
    import torch
    import transformers

    sh = shapes(smoke)
    state = machine_state()
    res: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} JAX CPU device",
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__},
        "backend": jax.default_backend(), "smoke": smoke, "reps": reps, "dtype": "float32",
        "timing": "interleaved A/B per repetition after one warm-up each; median and min/max",
        "state_before": state, "busy": busy(state["load_average"][0], state["cpu_count"])}
    if res["busy"]:
        log(f"WARNING: load average {state['load_average'][0]:.2f} on {state['cpu_count']} cores: "
            "the machine is busy; these ratios are not results")
    with tempfile.TemporaryDirectory() as tmp:
        dense, moe = Path(tmp) / "dense", Path(tmp) / "moe"
        for cfg, path, seed in ((dense_config(smoke), dense, 0), (moe_config(smoke), moe, 1)):
            models.save_hf(cfg, models.init_params(cfg, jax.random.key(seed)), path)
        cfg, params = models.load_hf(dense, dtype=jnp.float32)
        res["model"] = {"params": transformer.count_params(params), "layers": cfg.num_layers,
                        "d_model": cfg.hidden_size, "heads": [cfg.num_heads, cfg.num_kv_heads],
                        "vocab": cfg.vocab_size}
        hf = hf_load(dense)

        log(f"dense model: {res['model']}")
        B, P, G = sh.rollout
        log(f"rollout B={B} P={P} G={G}")
        res["rollout"] = {"shape": sh.rollout, **compare(
            ours_rollout(cfg, params, B, P, G), hf_rollout(hf, B, P, G), reps, B * G,
            "new_tokens_per_s", hf_warmup=hf_rollout(hf, B, P, 4))}  # no compile: 4 tokens warm it
        B, P, G = sh.score
        log(f"scoring B={B} P={P} G={G}")
        res["score"] = {"shape": sh.score, **compare(
            ours_score(cfg, params, B, P, G), hf_score(hf, B, P, G), reps, B * (P + G),
            "tokens_per_s")}

        batch = update_batch(cfg.vocab_size, *sh.update)
        B, P, G = sh.update
        hf_step = hf_update(hf, batch)
        res["update"] = {"shape": sh.update}
        for remat in ("none", "dots", "full"):
            log(f"update {sh.update}, remat={remat}")
            res["update"][remat] = compare(ours_update(cfg, params, batch, remat), hf_step, reps,
                                           B * (P + G), "tokens_per_s")
        del hf

        B, P, steps, caps = sh.decode
        log(f"decode: B={B}, P={P}, {steps} steps, capacities {caps}")
        loops = {live: [ours_decode_loop(cfg, params, B, P, S, live) for S in caps]
                 for live in (True, False)}
        res["decode"] = {
            "B": B, "P": P, "steps": steps, "capacities": caps,
            "sampler_ms": [decode_ms(ours_rollout(cfg, params, B, P, S - P, steps),
                                     ours_rollout(cfg, params, B, P, S - P, 0), steps, reps)
                           for S in caps],
            "live_prefix_ms": [decode_ms(functools.partial(f, steps), functools.partial(f, 0),
                                         steps, reps) for f in loops[True]],
            "whole_cache_ms": [decode_ms(functools.partial(f, steps), functools.partial(f, 0),
                                         steps, reps) for f in loops[False]]}

        mcfg, mparams = models.load_hf(moe, dtype=jnp.float32)
        B, P, G = sh.score
        hf_m = hf_score(hf_load(moe), B, P, G)
        res["moe_score"] = {"shape": sh.score, "experts": [mcfg.num_experts, mcfg.num_experts_per_tok],
                            "auto": transformer.resolve_moe_impl("auto")}
        for impl in ("ragged", "grouped", "dense"):
            log(f"MoE scoring, moe_impl={impl}")
            res["moe_score"][impl] = compare(ours_score(mcfg, mparams, B, P, G, impl), hf_m, reps,
                                             B * (P + G), "tokens_per_s")
    res["state_after"] = machine_state()
    return res


def _row(name: str, c: dict[str, Any], key: str) -> str:
    o, h, r = c["ours"], c["hf"], c["ratio"]
    return (f"| {name} | {o[key]:,.0f} | {h[key]:,.0f} | {r['median']:.2f}x "
            f"({r['min']:.2f}-{r['max']:.2f}) | {c['load'][0]:.2f} / {c['load'][1]:.2f} |")


def table(res: dict[str, Any]) -> str:
    """Markdown table: ours | HF | ours/HF (median of paired ratios, range) | load, per phase; then
    the decode capacity check."""
    r, s, u, d, m = (res[k] for k in ("rollout", "score", "update", "decode", "moe_score"))
    out = ["| measurement | ours | HF (torch CPU) | ours / HF (range) | load before / after |",
           "|---|---|---|---|---|",
           _row("rollout B={} ({} + {} new), new tok/s".format(*r["shape"]), r, "new_tokens_per_s"),
           _row("scoring B={} x ({} + {}), tok/s".format(*s["shape"]), s, "tokens_per_s")]
    for remat in ("none", "dots", "full"):
        out.append(_row("LoRA update B={} x ({} + {}), remat={}, tok/s".format(*u["shape"], remat),
                        u[remat], "tokens_per_s"))
    for impl in ("ragged", "grouped", "dense"):
        out.append(_row(f"MoE scoring ({m['experts'][0]} experts, top {m['experts'][1]}), "
                        f"moe_impl={impl}, tok/s", m[impl], "tokens_per_s"))
    c1, c2 = d["capacities"]
    out += ["", f"Decode ms/step, B={d['B']}, live context {d['P']}..{d['P'] + d['steps']}:", "",
            f"| decode | capacity {c1} | capacity {c2} | {c2} / {c1} |", "|---|---|---|---|"]
    for key, name in (("sampler_ms", "sampler (`generate_arrays`, T=1 sampling)"),
                      ("live_prefix_ms", "greedy loop, live-prefix windows (`decode_step_live`)"),
                      ("whole_cache_ms", "greedy loop, whole cache (`decode_step`)")):
        a, b = d[key]
        out.append(f"| {name} | {a:.2f} | {b:.2f} | {_ratio(b, a):.2f} |")
    if res["busy"]:
        out += ["", "**busy machine** (load average "
                f"{res['state_before']['load_average'][0]:.2f} on {res['state_before']['cpu_count']}"
                " cores at the start): these ratios are not results."]
    return "\n".join(out)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and shapes (tests)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args.smoke, args.reps)
    res["wall_s"] = time.perf_counter() - t0
    print(table(res))
    print(f"\nwall {res['wall_s']:.0f} s; {res['versions']}; {res['machine']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
