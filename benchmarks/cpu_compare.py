"""CPU comparison against HF transformers (torch CPU), one process, one mid-size model.

    python benchmarks/cpu_compare.py [--smoke] [--reps 3] [--out results.json]

A Qwen3-shaped dense model of ~27 M parameters (6 layers, d_model 512, 8 query / 2 KV heads of
64, MLP 1536, tied 16k vocabulary) and a Qwen3-MoE-shaped one (4 layers, d_model 256, 16
experts, top 4) are written once as HF checkpoints and loaded by both frameworks in fp32, so both
run the same weights. Timed, each as the best (minimum) of `--reps` runs after a warm-up
(compile) run: the development machine is shared, and other jobs only ever add time:

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
import platform
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


def best_time(fn: Callable[[], Any], reps: int,
              warmup: Callable[[], Any] | None = None) -> tuple[float, float]:
    """(warm-up seconds incl. compile, best seconds of `reps` further runs); fn must block.
    `warmup` replaces the first call of fn where a shorter call warms up the same code."""
    t0 = time.perf_counter()
    (warmup or fn)()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return warm, min(times)


def _tokens(rng: np.random.Generator, vocab: int, B: int, T: int) -> np.ndarray:
    return rng.integers(2, vocab, (B, T)).astype(np.int32)  # 0 pad, 1 EOS never drawn


# ============================================================================ ours (JAX)


def ours_rollout(cfg: ModelConfig, params: Any, B: int, P: int, G: int, reps: int,
                 steps: int | None = None) -> dict[str, float]:
    """`sampling.generate_arrays` at T=1 with EOS outside the vocabulary; `steps` < G runs only
    that many decode steps in a G-bucket cache (max_new_tokens is an array: no recompile)."""
    prompt = jnp.asarray(_tokens(np.random.default_rng(0), cfg.vocab_size, B, P))

    def run(n: int) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(sampling.generate_arrays(
            cfg, params, None, prompt, jnp.ones((B, P), bool), jax.random.key(0),
            jnp.arange(B, dtype=jnp.int32), sampling.SamplingParams.of(n), gen_len=G,
            eos_ids=(cfg.vocab_size,), pad_id=0))

    n = G if steps is None else steps
    warm, t = best_time(run(n), reps)
    _, t0 = best_time(run(0), reps)  # prefill only
    return {"warmup_s": warm, "best_s": t, "prefill_s": t0, "new_tokens_per_s": B * n / t,
            "decode_ms_per_step": 1e3 * (t - t0) / n}


def ours_decode_loop(cfg: ModelConfig, params: Any, B: int, P: int, S: int, steps: int,
                     reps: int, live: bool) -> float:
    """ms/step of a greedy decode loop (jitted fori_loop, no sampling) in an S-slot cache:
    `decode_step_live` (the sampler's live-prefix windows) or `decode_step` (the whole cache,
    what the sampler read before)."""
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

    _, t = best_time(lambda: jax.block_until_ready(run(jnp.int32(steps))), reps)
    _, t0 = best_time(lambda: jax.block_until_ready(run(jnp.int32(0))), reps)
    return 1e3 * (t - t0) / steps


def ours_score(cfg: ModelConfig, params: Any, B: int, P: int, G: int, reps: int,
               moe_impl: str = "auto") -> dict[str, float]:
    rng = np.random.default_rng(1)
    args = (jnp.asarray(_tokens(rng, cfg.vocab_size, B, P)), jnp.ones((B, P), bool),
            jnp.asarray(_tokens(rng, cfg.vocab_size, B, G)), jnp.ones((B, G), bool))
    warm, t = best_time(lambda: jax.block_until_ready(
        scoring.score(cfg, params, *args, moe_impl=moe_impl)), reps)
    return {"warmup_s": warm, "best_s": t, "tokens_per_s": B * (P + G) / t}


def update_batch(vocab: int, B: int, P: int, G: int) -> dict[str, np.ndarray]:
    """A synthetic on-policy batch: the update's cost does not depend on where tokens came from."""
    rng = np.random.default_rng(2)
    return {"prompt": _tokens(rng, vocab, B, P), "completion": _tokens(rng, vocab, B, G),
            "lp_old": -rng.uniform(0.5, 3.0, (B, G)).astype(np.float32),
            "lp_teacher": -rng.uniform(0.5, 3.0, (B, G)).astype(np.float32)}


def ours_update(cfg: ModelConfig, params: Any, batch: dict[str, np.ndarray], reps: int,
                remat: str) -> dict[str, float]:
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

    warm, t = best_time(step, reps)
    return {"warmup_s": warm, "best_s": t, "tokens_per_s": B * (P + G) / t}


# ============================================================================ HF (torch CPU)


def hf_load(path: Path) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()


def hf_rollout(model: Any, B: int, P: int, G: int, reps: int) -> dict[str, float]:
    import torch

    ids = torch.as_tensor(_tokens(np.random.default_rng(0), model.config.vocab_size, B, P),
                          dtype=torch.long)

    def run(new: int = G):
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                           temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                           min_new_tokens=new, pad_token_id=0, eos_token_id=1)

    warm, t = best_time(run, reps, warmup=lambda: run(4))  # no compile to warm: 4 tokens do
    return {"warmup_s": warm, "best_s": t, "new_tokens_per_s": B * G / t}


def _hf_logprobs(model: Any, ids: Any, G: int) -> Any:
    """log p(completion) [B, G] fp32: positions P-1 .. P+G-2 predict the completion."""
    import torch

    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=G + 1).logits
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return lp.gather(-1, ids[:, -G:, None])[..., 0]


def hf_score(model: Any, B: int, P: int, G: int, reps: int) -> dict[str, float]:
    import torch

    rng = np.random.default_rng(1)
    ids = torch.as_tensor(np.concatenate([_tokens(rng, model.config.vocab_size, B, P),
                                          _tokens(rng, model.config.vocab_size, B, G)], 1),
                          dtype=torch.long)

    def run():
        with torch.inference_mode():
            return _hf_logprobs(model, ids, G)

    warm, t = best_time(run, reps)
    return {"warmup_s": warm, "best_s": t, "tokens_per_s": B * (P + G) / t}


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


def hf_update(model: Any, batch: dict[str, np.ndarray], reps: int) -> dict[str, float]:
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

    warm, t = best_time(step, reps)
    B, T = ids.shape
    return {"warmup_s": warm, "best_s": t, "tokens_per_s": B * T / t}


# ============================================================================ the run


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run(smoke: bool, reps: int) -> dict[str, Any]:
    import torch
    import transformers

    sh = shapes(smoke)
    res: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} JAX CPU device",
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__},
        "backend": jax.default_backend(), "smoke": smoke, "reps": reps,
        "dtype": "float32", "torch_threads": torch.get_num_threads()}
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
        res["rollout"] = {"shape": sh.rollout, "ours": ours_rollout(cfg, params, B, P, G, reps),
                          "hf": hf_rollout(hf, B, P, G, 1)}
        B, P, G = sh.score
        log(f"scoring B={B} P={P} G={G}")
        hf_s = hf_score(hf, B, P, G, reps)
        res["score"] = {"shape": sh.score, "ours": ours_score(cfg, params, B, P, G, reps), "hf": hf_s}

        batch = update_batch(cfg.vocab_size, *sh.update)
        log(f"update {sh.update}")
        res["update"] = {"shape": sh.update,
                         "ours": {r: ours_update(cfg, params, batch, reps, r)
                                  for r in ("none", "dots", "full")},
                         "hf": hf_update(hf, batch, reps)}
        del hf

        B, P, steps, caps = sh.decode
        log(f"decode: B={B}, P={P}, {steps} steps, capacities {caps}")
        res["decode"] = {
            "B": B, "P": P, "steps": steps, "capacities": caps,
            "sampler_ms": [ours_rollout(cfg, params, B, P, S - P, reps, steps)["decode_ms_per_step"]
                           for S in caps],
            "live_prefix_ms": [ours_decode_loop(cfg, params, B, P, S, steps, reps, True)
                               for S in caps],
            "whole_cache_ms": [ours_decode_loop(cfg, params, B, P, S, steps, reps, False)
                               for S in caps]}

        mcfg, mparams = models.load_hf(moe, dtype=jnp.float32)
        log("MoE scoring")
        B, P, G = sh.score
        hf_m = hf_score(hf_load(moe), B, P, G, reps)
        res["moe_score"] = {"shape": sh.score, "experts": [mcfg.num_experts, mcfg.num_experts_per_tok],
                            "ours": {impl: ours_score(mcfg, mparams, B, P, G, reps, impl)
                                     for impl in ("ragged", "grouped", "dense")},
                            "hf": hf_m, "auto": transformer.resolve_moe_impl("auto")}
    return res


def table(res: dict[str, Any]) -> str:
    """Markdown table: ours | HF | ours/HF per phase, then the decode capacity check."""
    r, s, u, d, m = (res[k] for k in ("rollout", "score", "update", "decode", "moe_score"))
    rows = [("rollout B={} ({} + {} new), new tok/s".format(*r["shape"]),
             r["ours"]["new_tokens_per_s"], r["hf"]["new_tokens_per_s"]),
            ("scoring B={} x ({} + {}), tok/s".format(*s["shape"]),
             s["ours"]["tokens_per_s"], s["hf"]["tokens_per_s"])]
    for remat, v in u["ours"].items():
        rows.append(("LoRA update B={} x ({} + {}), remat={}, tok/s".format(*u["shape"], remat),
                     v["tokens_per_s"], u["hf"]["tokens_per_s"]))
    for impl, v in m["ours"].items():
        rows.append((f"MoE scoring ({m['experts'][0]} experts, top {m['experts'][1]}), "
                     f"moe_impl={impl}, tok/s", v["tokens_per_s"], m["hf"]["tokens_per_s"]))
    out = ["| measurement | ours | HF (torch CPU) | ours / HF |", "|---|---|---|---|"]
    out += [f"| {name} | {a:,.0f} | {b:,.0f} | {_ratio(a, b):.2f}x |" for name, a, b in rows]
    c1, c2 = d["capacities"]
    out += ["", f"Decode ms/step, B={d['B']}, live context {d['P']}..{d['P'] + d['steps']}:", "",
            f"| decode | capacity {c1} | capacity {c2} | {c2} / {c1} |", "|---|---|---|---|"]
    for key, name in (("sampler_ms", "sampler (`generate_arrays`, T=1 sampling)"),
                      ("live_prefix_ms", "greedy loop, live-prefix windows (`decode_step_live`)"),
                      ("whole_cache_ms", "greedy loop, whole cache (`decode_step`)")):
        a, b = d[key]
        out.append(f"| {name} | {a:.2f} | {b:.2f} | {_ratio(b, a):.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and shapes (tests)")
    ap.add_argument("--reps", type=int, default=3)
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
