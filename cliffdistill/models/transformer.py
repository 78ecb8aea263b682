"""One decoder for Llama 3.x, Mistral, Mixtral, Qwen2/2.5, Qwen3, Qwen3-MoE, Gemma 2 and Gemma 3, as
pure functions over a param pytree. Families differ only by config fields (q/k norms, q/k/v biases,
MoE, per-layer sliding windows and RoPE tables, Gemma's norms, scaled embeddings, GeGLU and
soft-capping), which switch blocks of the one layer function.

Layers are stacked on a leading axis and run with `lax.scan`, so compile time does not grow with
depth. Three entry points share one layer function:

* `forward_hidden` / `apply`: the whole sequence at once (training, scoring, prefill);
* `prefill`: `forward_hidden` that also returns every layer's keys/values as a KV cache;
* `decode_step`: one new token per row against that cache.

Padding convention (see docs/ARCHITECTURE.md): prompts are left-padded, `mask` marks real tokens,
positions are `cumsum(mask) - 1`, and pad keys never receive attention. A pad *query* attends to
nothing real; its output is garbage that no caller reads (we use a finite `-1e30` bias instead of
`-inf` so such rows stay NaN-free).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cliffdistill.models import sharding
from cliffdistill.models.config import FULL_WINDOW, ModelConfig, rope_inv_freq
from cliffdistill.models.lora import LoraParams

Params = dict[str, Any]
_MASK_BIAS = -1e30


# --------------------------------------------------------------------------- parameters


def param_shapes(cfg: ModelConfig, dtype: Any = jnp.float32) -> Params:
    """Shape/dtype pytree of the params (no allocation)."""
    return jax.eval_shape(functools.partial(init_params, cfg, dtype=dtype), jax.random.key(0))


def init_params(cfg: ModelConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Random params with HF's init (normal(0, 0.02), norms at one). Used for tests and toy models."""
    L, D, hd = cfg.num_layers, cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_heads * hd, cfg.num_kv_heads * hd
    keys = iter(jax.random.split(key, 16))

    def normal(shape):
        return (0.02 * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)

    # A Gemma norm scales by (1 + w): its identity weight is 0, as HF initialises it.
    unit = lambda shape: (jnp.zeros if cfg.is_gemma else jnp.ones)(shape, dtype)  # noqa: E731
    layers: Params = {
        "attn_norm": unit((L, D)),
        "mlp_norm": unit((L, D)),
        "q_proj": normal((L, D, q_out)),
        "k_proj": normal((L, D, kv_out)),
        "v_proj": normal((L, D, kv_out)),
        "o_proj": normal((L, q_out, D)),
    }
    if cfg.is_gemma:
        layers.update(post_attn_norm=unit((L, D)), post_mlp_norm=unit((L, D)))
    if cfg.qk_norm:
        layers["q_norm"] = unit((L, hd))
        layers["k_norm"] = unit((L, hd))
    if cfg.qkv_bias:
        layers.update(q_bias=normal((L, q_out)), k_bias=normal((L, kv_out)),
                      v_bias=normal((L, kv_out)))
    if cfg.is_moe:
        E, F = cfg.num_experts, cfg.moe_intermediate_size
        layers.update(router=normal((L, D, E)), gate_proj=normal((L, E, D, F)),
                      up_proj=normal((L, E, D, F)), down_proj=normal((L, E, F, D)))
    else:
        F = cfg.intermediate_size
        layers.update(gate_proj=normal((L, D, F)), up_proj=normal((L, D, F)),
                      down_proj=normal((L, F, D)))
    params: Params = {"embed": normal((cfg.vocab_size, D)), "final_norm": unit((D,)), "layers": layers}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = normal((D, cfg.vocab_size))
    return params


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# --------------------------------------------------------------------------- building blocks


def rms_norm(x: jax.Array, w: jax.Array, eps: float, gemma: bool = False) -> jax.Array:
    """RMSNorm in fp32. Llama/Qwen/Mistral (as HF): cast back to the activation dtype, then times
    w. Gemma (`gemma=True`, as HF): times (1 + w) in fp32, then cast -- the two differ in bf16."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if gemma:
        return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w * y.astype(x.dtype)


def _norm(cfg: ModelConfig, x: jax.Array, w: jax.Array) -> jax.Array:
    return rms_norm(x, w, cfg.rms_norm_eps, cfg.is_gemma)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """Gemma's soft-capping cap * tanh(x / cap) (identity when cap is None)."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def embed(cfg: ModelConfig, params: Params, tokens: jax.Array) -> jax.Array:
    """Token embeddings [..., D]; Gemma scales them by sqrt(D) rounded to the weight dtype (HF
    multiplies by the scale cast to the embedding dtype: 55.4256 is 55.5 in bf16)."""
    x = params["embed"][tokens]
    if cfg.is_gemma:
        x = x * jnp.asarray(cfg.hidden_size ** 0.5, x.dtype)
    return x


def rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding, HF "rotate half" layout. x: [B, T, H, hd], positions: [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _proj(x: jax.Array, w: jax.Array, lora: dict | None, scale: float,
          bias: jax.Array | None = None) -> jax.Array:
    """x @ w (+ scale * x @ a @ b when an adapter is present) (+ bias). x: [..., in], w: [in, out]."""
    y = x @ w if lora is None else lora_proj(x, w, lora["a"], lora["b"], scale)
    return y if bias is None else y + bias


def lora_forward(x: jax.Array, w: jax.Array, a: jax.Array, b: jax.Array, scale: float
                  ) -> tuple[jax.Array, jax.Array]:
    """(y [..., out], x @ a [..., r]): the adapted projection and its rank-r activation."""
    xa = x @ a.astype(x.dtype)
    y = x @ w
    return y + (scale * (xa @ b.astype(x.dtype))).astype(y.dtype), xa


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lora_proj(x: jax.Array, w: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    return lora_forward(x, w, a, b, scale)[0]


def _lora_proj_fwd(x, w, a, b, scale):
    y, xa = lora_forward(x, w, a, b, scale)
    return y, (x, w, a, b, xa)


def _lora_proj_bwd(scale, res, dy):
    """The gradient autodiff would give, with the adapter's weight gradients written as
    contractions over the token axes of activations in their natural layout.

    Why: left to autodiff, XLA on CPU computes db = xa^T @ dy by first writing the large
    cotangent dy [N, out] transposed (fused with the elementwise gradient that produces it) for
    every adapted projection; in a LoRA update that copy costs as much as a fifth of the step
    (docs/PERFORMANCE.md). Expressed as einsums over `...` here, both operands stay row-major and
    only the small [r, out] / [in, r] results are produced. dw is exact too, and dead code
    (removed by XLA) whenever the base weights are frozen.
    """
    x, w, a, b, xa = res
    dxab = (scale * dy).astype(x.dtype)  # [..., out] cotangent of xa @ b
    dxa = dxab @ b.astype(x.dtype).T  # [..., r]
    dx = dy.astype(x.dtype) @ w.T + dxa @ a.astype(x.dtype).T
    da = jnp.einsum("...i,...r->ir", x, dxa).astype(a.dtype)
    db = jnp.einsum("...r,...o->ro", xa, dxab).astype(b.dtype)
    dw = jnp.einsum("...i,...o->io", x, dy.astype(x.dtype)).astype(w.dtype)
    return dx, dw, da, db


lora_proj.defvjp(_lora_proj_fwd, _lora_proj_bwd)


class LayerCache(NamedTuple):
    """One layer's decode view of the KV cache: k, v [B, W, Hkv, hd]; valid [B, W] (slot holds a
    real token inside this layer's attention window). W is the decode window (a prefix of the
    cache covering every written slot)."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array


def attention_impl(cfg: ModelConfig, dtype: Any) -> str:
    """Resolves `cfg.attention_impl` for activations of `dtype`.

    "auto" picks cuDNN flash attention on GPU, but only for bf16/fp16: cuDNN has no fp32 kernel,
    and fp32 is what tests and the CPU reference use. Everywhere else XLA's implementation.
    """
    if cfg.attention_impl != "auto":
        return cfg.attention_impl
    if cfg.attn_logit_softcapping is not None:  # no fused kernel soft-caps scores
        return "xla"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and half else "xla"


def window_mask(q_slots: jax.Array, k_slots: jax.Array, window: jax.Array) -> jax.Array:
    """Causal sliding-window mask [Tq, Tk]: slot i sees j when i - window < j <= i (HF's
    `sliding_window_overlay` and causal mask). q_slots [Tq], k_slots [Tk]; window scalar."""
    diff = q_slots[:, None] - k_slots[None, :]
    return (diff >= 0) & (diff < window)


def capped_attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, scale: float,
                      cap: float) -> jax.Array:
    """Attention with soft-capped scores (Gemma 2), as HF's eager path computes it: scores
    q.k * scale in fp32, cap * tanh(scores / cap), then the mask, softmax in fp32 cast to the
    activation dtype. q [B, Tq, Hq, hd], k/v [B, Tk, Hkv, hd], allowed [B|1, 1, Tq, Tk] (causality
    included) -> [B, Tq, Hq, hd]. Materialises [B, H, Tq, Tk] scores (query blocks bound them)."""
    B, Tq, Hq, hd = q.shape
    Hkv = k.shape[2]
    qg = q.reshape(B, Tq, Hkv, Hq // Hkv, hd)
    s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * scale
    s = jnp.where(allowed[:, :, None], softcap(s, cap), _MASK_BIAS)  # [B, Hkv, g, Tq, Tk]
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgqs,bskd->bqkgd", p, v).reshape(B, Tq, Hq, hd)


def _attend(cfg: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array | None,
            causal: bool, impl: str) -> jax.Array:
    """`jax.nn.dot_product_attention` with the config's score scale, or the soft-capped XLA path.
    `causal` adds the causal mask on top of `allowed` ([B|1, 1, Tq, Tk] or None)."""
    if cfg.attn_logit_softcapping is None:
        return jax.nn.dot_product_attention(q, k, v, mask=allowed, scale=cfg.attn_scale,
                                            is_causal=causal, implementation=impl)
    if causal:
        T = q.shape[1]
        tril = window_mask(jnp.arange(T), jnp.arange(T), T)[None, None]
        allowed = tril if allowed is None else allowed & tril
    return capped_attention(q, k, v, allowed, cfg.attn_scale, cfg.attn_logit_softcapping)


def causal_attention(cfg: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array,
                      mask: jax.Array | None, window: jax.Array | None = None) -> jax.Array:
    """Causal self-attention of a whole sequence with `jax.nn.dot_product_attention` (GQA native).

    q [B, T, Hq, hd], k/v [B, T, Hkv, hd], mask [B, T] real tokens (left padding) -> [B, T, Hq, hd].
    Pad keys are masked; a pad query sees no real key and its output is garbage nobody reads.
    `window` (scalar, traced: it is a scanned per-layer input) restricts each query to the last
    `window` slots; None (a config without sliding layers) keeps the plain causal mask. Slots are
    array indices, which left padding makes equal to position differences of real tokens.
    Under XLA a sequence longer than `cfg.attention_block` runs in query blocks under `lax.map`,
    each rematerialised in the backward pass, so [B, H, T, T] fp32 scores never exist at once
    (a 10-shot teacher prompt); cuDNN's flash kernel never materialises them, so it needs no blocks.
    """
    B, T = q.shape[:2]
    impl = attention_impl(cfg, q.dtype)
    keys_ok = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, T]
    if impl == "cudnn" or T <= cfg.attention_block:
        if window is not None:
            in_window = window_mask(jnp.arange(T), jnp.arange(T), window)[None, None]  # [1, 1, T, T]
            keys_ok = in_window if keys_ok is None else keys_ok & in_window
        return _attend(cfg, q, k, v, keys_ok, True, impl)

    # The largest power of two dividing both attention_block and T: blocks tile T exactly.
    blk = min(cfg.attention_block & -cfg.attention_block, T & -T)

    def attend(q_blk: jax.Array, start: jax.Array) -> jax.Array:
        """Queries [start, start + blk) against all T keys; the causal mask is offset by start."""
        allowed = window_mask(start + jnp.arange(blk), jnp.arange(T),
                              T if window is None else window)[None, None]
        allowed = allowed if keys_ok is None else allowed & keys_ok  # [B|1, 1, blk, T]
        return _attend(cfg, q_blk, k, v, allowed, False, "xla")

    q_blocks = jnp.moveaxis(q.reshape(B, T // blk, blk, *q.shape[2:]), 1, 0)  # [n, B, blk, Hq, hd]
    out = jax.lax.map(lambda a: jax.checkpoint(attend)(*a), (q_blocks, jnp.arange(T // blk) * blk))
    return jnp.moveaxis(out, 0, 1).reshape(q.shape)


def _decode_attention(cfg: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array,
                      cache: LayerCache) -> jax.Array:
    """One new token per row against its cache window plus itself.

    q [B, 1, Hq, hd], k/v [B, 1, Hkv, hd] (this token), cache window [B, W, ...] -> [B, 1, Hq, hd].
    The token's own key is scored separately instead of being written into the window first, so
    the cache is only read here (the caller writes k/v once per step for all layers). Plain
    einsums: at T == 1 this is a batched GEMV, bound by reading the window, which the window keeps
    proportional to the live context.
    """
    B, _, Hq, hd = q.shape
    Hkv = k.shape[2]
    q = q.reshape(B, 1, Hkv, Hq // Hkv, hd)
    scores = lambda s: softcap(s * cfg.attn_scale, cfg.attn_logit_softcapping)  # noqa: E731
    s_cache = jnp.einsum("btkgd,bskd->bkgts", q, cache.k, preferred_element_type=jnp.float32)
    s_cache = jnp.where(cache.valid[:, None, None, None, :], scores(s_cache), _MASK_BIAS)
    s_self = jnp.einsum("btkgd,btkd->bkgt", q, k, preferred_element_type=jnp.float32)[..., None]
    p = jax.nn.softmax(jnp.concatenate([s_cache, scores(s_self)], axis=-1), axis=-1)
    p_cache, p_self = p[..., :-1].astype(v.dtype), p[..., -1:].astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", p_cache, cache.v)
    out = out + jnp.einsum("bkgts,btkd->btkgd", p_self, v)
    return out.reshape(B, 1, Hq, hd)


def _attention(cfg: ModelConfig, lp: Params, ll: Params, x: jax.Array, positions: jax.Array,
               mask: jax.Array | None, cache: LayerCache | None, scale: float,
               inv_freq: jax.Array, window: jax.Array | None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Self-attention. Returns the output [B, T, D] and this call's new (k, v) [B, T, Hkv, hd].

    Without a cache the T tokens attend causally among themselves (pad keys masked by `mask`).
    With a cache (decode, T == 1) the token attends to the cache window's valid slots and itself.
    """
    B, T, _ = x.shape
    Hq, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    get = lambda name: ll.get(name) if ll else None  # noqa: E731
    q = _proj(x, lp["q_proj"], get("q_proj"), scale, lp.get("q_bias")).reshape(B, T, Hq, hd)
    k = _proj(x, lp["k_proj"], get("k_proj"), scale, lp.get("k_bias")).reshape(B, T, Hkv, hd)
    v = _proj(x, lp["v_proj"], get("v_proj"), scale, lp.get("v_bias")).reshape(B, T, Hkv, hd)
    if cfg.qk_norm:
        q = _norm(cfg, q, lp["q_norm"])
        k = _norm(cfg, k, lp["k_norm"])
    q = rope(q, positions, inv_freq)
    k = rope(k, positions, inv_freq)
    if cache is None:
        out = causal_attention(cfg, q, k, v, mask, window)
    else:
        out = _decode_attention(cfg, q, k, v, cache)
    out = out.reshape(B, T, Hq * hd)
    return _proj(out, lp["o_proj"], get("o_proj"), scale), (k, v)


def activation(cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """The gated MLP's activation: SiLU, or Gemma's GeGLU gelu with the tanh approximation
    (`gelu_pytorch_tanh`)."""
    return jax.nn.silu(x) if cfg.hidden_act == "silu" else jax.nn.gelu(x, approximate=True)


def _dense_mlp(cfg: ModelConfig, lp: Params, ll: Params, x: jax.Array, scale: float) -> jax.Array:
    get = lambda name: ll.get(name) if ll else None  # noqa: E731
    h = activation(cfg, _proj(x, lp["gate_proj"], get("gate_proj"), scale)) * _proj(
        x, lp["up_proj"], get("up_proj"), scale)
    return _proj(h, lp["down_proj"], get("down_proj"), scale)


def route(cfg: ModelConfig, lp: Params, xf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Softmax router (fp32) and top-k. xf: [N, D] -> weights [N, k] (activation dtype), experts [N, k]."""
    logits = (xf @ lp["router"]).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    top_w, top_e = jax.lax.top_k(probs, cfg.num_experts_per_tok)
    if cfg.norm_topk_prob:
        top_w = top_w / jnp.sum(top_w, axis=-1, keepdims=True)
    return top_w.astype(xf.dtype), top_e


def _moe_dense(cfg: ModelConfig, lp: Params, ll: Params, x: jax.Array, scale: float) -> jax.Array:
    """Reference MoE: every expert on every token, combined with the routing weights. For tests."""
    B, T, D = x.shape
    xf = x.reshape(B * T, D)
    top_w, top_e = route(cfg, lp, xf)
    combine = jnp.zeros((B * T, cfg.num_experts), xf.dtype)
    combine = combine.at[jnp.arange(B * T)[:, None], top_e].add(top_w)  # [N, E]

    names = ("gate_proj", "up_proj", "down_proj")

    def expert(e):
        le = {k: {ab: w[e] for ab, w in ll[k].items()} for k in names if ll and k in ll}
        pe = {k: lp[k][e] for k in names}
        return _dense_mlp(cfg, pe, le, xf, scale)  # [N, D]

    outs = jax.lax.map(expert, jnp.arange(cfg.num_experts))  # [E, N, D]
    return jnp.einsum("ne,end->nd", combine, outs).reshape(B, T, D)


def _ragged_proj(x: jax.Array, w: jax.Array, lora: dict | None, group_sizes: jax.Array,
                 scale: float) -> jax.Array:
    """Grouped matmul: rows of x (sorted by expert) times their expert's weight. w: [E, in, out]."""
    y = jax.lax.ragged_dot(x, w, group_sizes)
    if lora is not None:
        h = jax.lax.ragged_dot(x, lora["a"].astype(x.dtype), group_sizes)
        y = y + scale * jax.lax.ragged_dot(h, lora["b"].astype(x.dtype), group_sizes)
    return y


def _moe_ragged(cfg: ModelConfig, lp: Params, ll: Params, x: jax.Array, scale: float) -> jax.Array:
    """MoE with tokens sorted by expert and `lax.ragged_dot`: only the k chosen experts run."""
    B, T, D = x.shape
    N, K = B * T, cfg.num_experts_per_tok
    xf = x.reshape(N, D)
    top_w, top_e = route(cfg, lp, xf)
    flat_e = top_e.reshape(N * K)
    order = jnp.argsort(flat_e, stable=True)  # assignment slots sorted by expert
    token = order // K  # which token each sorted slot belongs to
    xs = xf[token]  # [N*K, D]
    group_sizes = jnp.bincount(flat_e, length=cfg.num_experts).astype(jnp.int32)
    get = lambda name: ll.get(name) if ll else None  # noqa: E731
    g = _ragged_proj(xs, lp["gate_proj"], get("gate_proj"), group_sizes, scale)
    u = _ragged_proj(xs, lp["up_proj"], get("up_proj"), group_sizes, scale)
    y = _ragged_proj(activation(cfg, g) * u, lp["down_proj"], get("down_proj"), group_sizes, scale)
    y = y * top_w.reshape(N * K)[order][:, None]
    return jnp.zeros_like(xf).at[token].add(y).reshape(B, T, D)


def _grouped_proj(x: jax.Array, w: jax.Array, lora: dict | None, scale: float) -> jax.Array:
    """Per-expert matmul of a capacity buffer. x [E, C, in], w [E, in, out] -> [E, C, out]."""
    y = jnp.einsum("eci,eio->eco", x, w)
    if lora is not None:
        h = jnp.einsum("eci,eir->ecr", x, lora["a"].astype(x.dtype))
        y = y + scale * jnp.einsum("ecr,ero->eco", h, lora["b"].astype(x.dtype))
    return y


def moe_capacity(cfg: ModelConfig, n_tokens: int) -> int:
    """Slots per expert per round: ceil(factor * N * k / E), at most N (an expert gets each token
    at most once, so C = N never overflows), rounded up to a multiple of 8 for the matmul tiles."""
    mean = n_tokens * cfg.num_experts_per_tok / cfg.num_experts
    c = int(np.ceil(cfg.moe_capacity_factor * mean))
    return min(n_tokens, -(-c // 8) * 8)


def _moe_grouped(cfg: ModelConfig, lp: Params, ll: Params, x: jax.Array, scale: float) -> jax.Array:
    """MoE as capacity-based grouped einsums: no dependence on how `ragged_dot` is lowered.

    Assignments (token, expert) are sorted by expert and numbered within their expert (rank).
    Round r gathers the assignments with rank in [r*C, (r+1)*C) into an [E, C, D] buffer (empty
    slots point at a zero row), runs the expert MLP as three batched einsums and scatter-adds the
    weighted outputs back to the tokens. Nothing is dropped: an expert with more than C
    assignments is finished in later rounds. The rounds are a `lax.scan` of static length
    ceil(N / C) whose rounds past the needed count are skipped by `lax.cond`, so a balanced batch
    costs one round (E * C rows, about `moe_capacity_factor` times the routed FLOPs) and a skewed
    one costs what it needs; the scan keeps the path differentiable (expert LoRA).
    """
    B, T, D = x.shape
    N, K, E = B * T, cfg.num_experts_per_tok, cfg.num_experts
    C = moe_capacity(cfg, N)
    xf = x.reshape(N, D)
    top_w, top_e = route(cfg, lp, xf)
    flat_e = top_e.reshape(N * K)
    order = jnp.argsort(flat_e, stable=True)  # assignment slots sorted by expert
    expert = flat_e[order]  # [N*K]
    token = order // K
    weight = top_w.reshape(N * K)[order]
    group_sizes = jnp.bincount(flat_e, length=E)
    rank = jnp.arange(N * K) - (jnp.cumsum(group_sizes) - group_sizes)[expert]  # within its expert
    n_rounds = -(-N // C)
    needed = (jnp.max(group_sizes) + C - 1) // C
    x_pad = jnp.concatenate([xf, jnp.zeros((1, D), xf.dtype)])  # row N: the empty slot's input
    get = lambda name: ll.get(name) if ll else None  # noqa: E731

    def one_round(r: jax.Array) -> jax.Array:
        """[N + 1, D] output of the assignments of round r (row N collects the empty slots)."""
        here = rank // C == r
        dest = jnp.where(here, expert * C + rank % C, E * C)  # out of range: dropped by the scatter
        slot_token = jnp.full((E * C,), N, jnp.int32).at[dest].set(token, mode="drop")
        slot_w = jnp.zeros((E * C,), xf.dtype).at[dest].set(weight, mode="drop")
        xs = x_pad[slot_token].reshape(E, C, D)
        g = _grouped_proj(xs, lp["gate_proj"], get("gate_proj"), scale)
        u = _grouped_proj(xs, lp["up_proj"], get("up_proj"), scale)
        y = _grouped_proj(activation(cfg, g) * u, lp["down_proj"], get("down_proj"), scale)
        y = y.reshape(E * C, D) * slot_w[:, None]
        return jnp.zeros((N + 1, D), y.dtype).at[slot_token].add(y)

    def body(acc: jax.Array, r: jax.Array) -> tuple[jax.Array, None]:
        y = jax.lax.cond(r < needed, one_round, lambda _: jnp.zeros_like(acc), r)
        return acc + y, None

    out, _ = jax.lax.scan(body, jnp.zeros((N + 1, D), xf.dtype), jnp.arange(n_rounds))
    return out[:N].reshape(B, T, D)


MOE_IMPLS = ("auto", "ragged", "grouped", "dense")


def resolve_moe_impl(moe_impl: str) -> str:
    """"auto" is `ragged_dot` on TPU (a native grouped matmul there) and the grouped einsums
    elsewhere: XLA may lower `ragged_dot` on GPU to a zero-padded dense dot (openxla/xla#45999),
    and on CPU it is expanded the same way."""
    if moe_impl not in MOE_IMPLS:
        raise ValueError(f"moe_impl={moe_impl!r}; expected one of {MOE_IMPLS}")
    if moe_impl != "auto":
        return moe_impl
    return "ragged" if jax.default_backend() == "tpu" else "grouped"


_MOE_PATHS = {"ragged": _moe_ragged, "grouped": _moe_grouped, "dense": _moe_dense}


def _layer(cfg: ModelConfig, x: jax.Array, lp: Params, ll: Params, positions: jax.Array,
           mask: jax.Array | None, cache: LayerCache | None, scale: float, moe_impl: str,
           inv_freq: jax.Array, window: jax.Array | None = None
           ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    h, kv = _attention(cfg, lp, ll, _norm(cfg, x, lp["attn_norm"]), positions, mask, cache, scale,
                       inv_freq, window)
    if cfg.is_gemma:  # Gemma also normalises each block's output before the residual add
        h = _norm(cfg, h, lp["post_attn_norm"])
    x = x + h
    y = _norm(cfg, x, lp["mlp_norm"])
    if cfg.is_moe:
        y = _MOE_PATHS[resolve_moe_impl(moe_impl)](cfg, lp, ll, y, scale)
    else:
        y = _dense_mlp(cfg, lp, ll, y, scale)
    if cfg.is_gemma:
        y = _norm(cfg, y, lp["post_mlp_norm"])
    x = sharding.constrain(x + y, ("batch", None, None))
    return x, kv


def _scan_layers(cfg: ModelConfig, body, x, xs):
    """`lax.scan` over the stacked layers; shallow stacks (<= 4 layers: toy and test models) are
    unrolled, because XLA:CPU's backward pass through a rolled scan runs 2-3x slower than the
    unrolled graph. Deep stacks stay rolled, so compile time does not grow with depth."""
    return jax.lax.scan(body, x, xs, unroll=cfg.num_layers <= 4)


def _inv_freq(cfg: ModelConfig) -> jax.Array:
    return jnp.asarray(np.asarray(rope_inv_freq(cfg), np.float32))


def layer_inv_freqs(cfg: ModelConfig) -> jax.Array | None:
    """Per-layer RoPE tables [L, hd/2], scanned with the layer params, when sliding and full
    layers use different bases (Gemma 3: local base unscaled, global base with its scaling);
    None when one table serves every layer (it is then a constant of the layer body)."""
    if not cfg.per_layer_rope:
        return None
    types = cfg.layer_types
    return jnp.asarray(np.asarray([rope_inv_freq(cfg, t) for t in types], np.float32))


def _layer_windows(cfg: ModelConfig) -> jax.Array | None:
    """Per-layer attention windows [L] int32, scanned with the layer params (one compiled layer
    body for full and sliding layers); None when no layer is windowed (plain causal masks)."""
    return jnp.asarray(cfg.layer_windows(), jnp.int32) if cfg.has_sliding_layers else None


def _lora_parts(lora: LoraParams | None) -> tuple[Params | None, float]:
    if lora is None:
        return None, 0.0
    return lora.layers, lora.scale


# --------------------------------------------------------------------------- whole-sequence forward


def default_positions(mask: jax.Array) -> jax.Array:
    """Positions of left-padded rows: 0 at the first real token. mask: [B, T] bool -> [B, T] int32."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


REMAT_POLICIES = ("none", "dots", "full")


def remat_policy(remat: bool | str) -> str:
    """Normalises the `remat` setting: True/False are the historical spellings of "full"/"none"."""
    if isinstance(remat, bool):
        return "full" if remat else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}; expected one of {REMAT_POLICIES} (or a bool)")
    return remat


def _checkpoint_layer(body: Any, remat: bool | str) -> Any:
    """Wraps the per-layer scan body for the backward pass.

    "none": every intermediate of every layer is kept (fastest, most memory);
    "dots": the outputs of the weight matmuls (q/k/v/o, gate/up/down, LoRA `x @ a` and its
            up-projection) are saved and the rest (norms, RoPE, attention, activations) recomputed:
            `dots_with_no_batch_dims_saveable` matches exactly the matmuls without batch
            dimensions, so attention's [B, H, T, S] scores are never saved;
    "full": only each layer's input is saved and the whole layer is recomputed (least memory,
            one more forward pass of FLOPs).
    """
    policy = remat_policy(remat)
    if policy == "none":
        return body
    saveable = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == "dots"
                else jax.checkpoint_policies.nothing_saveable)
    return jax.checkpoint(body, policy=saveable)


def forward_hidden(cfg: ModelConfig, params: Params, tokens: jax.Array, lora: LoraParams | None = None,
                   *, mask: jax.Array | None = None, positions: jax.Array | None = None,
                   remat: bool | str = "none", moe_impl: str = "ragged",
                   return_kv: bool = False) -> Any:
    """Final-norm hidden states [B, T, D] of tokens [B, T] (and, with `return_kv`, k/v [L, B, T, Hkv, hd]).

    `remat` ("none" | "dots" | "full", see `_checkpoint_layer`) only matters under differentiation.
    """
    if positions is None:
        positions = (default_positions(mask) if mask is not None
                     else jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
    layers_lora, scale = _lora_parts(lora)
    x = embed(cfg, params, tokens)
    x = sharding.constrain(x, ("batch", None, None))
    inv_freq = _inv_freq(cfg)

    def body(x, layer):
        lp, ll, window, layer_inv = layer
        inv = inv_freq if layer_inv is None else layer_inv
        return _layer(cfg, x, lp, ll, positions, mask, None, scale, moe_impl, inv, window)

    x, kv = _scan_layers(cfg, _checkpoint_layer(body, remat), x,
                         (params["layers"], layers_lora, _layer_windows(cfg), layer_inv_freqs(cfg)))
    h = _norm(cfg, x, params["final_norm"])
    return (h, kv) if return_kv else h


def unembed_matrix(cfg: ModelConfig, params: Params) -> jax.Array:
    """[D, V]: the tied embedding transposed, or `lm_head`, cut to the tokenizer's
    `cfg.logit_vocab_size` columns, so padded embedding rows get no logit at all (not a -inf
    one: every loss and the sampler then see only real tokens, whatever the padding)."""
    w = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    return w if w.shape[-1] == cfg.logit_vocab_size else w[:, :cfg.logit_vocab_size]


def unembed(cfg: ModelConfig, params: Params, h: jax.Array) -> jax.Array:
    """Logits in fp32: h [..., D] -> [..., V] (soft-capped when the config says so). The chunked
    log-softmax paths (scoring, losses) apply the same `cfg.final_logit_softcapping` per chunk."""
    logits = jnp.einsum("...d,dv->...v", h, unembed_matrix(cfg, params),
                        preferred_element_type=jnp.float32)
    return softcap(logits, cfg.final_logit_softcapping)


def apply(cfg: ModelConfig, params: Params, tokens: jax.Array, lora: LoraParams | None = None,
          *, mask: jax.Array | None = None, positions: jax.Array | None = None,
          moe_impl: str = "ragged") -> jax.Array:
    """Logits [B, T, V] (fp32) of tokens [B, T]. `lora=None` is the exact base model."""
    h = forward_hidden(cfg, params, tokens, lora, mask=mask, positions=positions, moe_impl=moe_impl)
    return unembed(cfg, params, h)


# --------------------------------------------------------------------------- KV cache


class KVCache(NamedTuple):
    """Cache for a batch: k, v [L, B, S, Hkv, hd]; valid [B, S]; next write slot `index` (scalar).

    Slot `s` of every row holds the token written at step `s` of this batch: left-padded prompts
    occupy [0, P) (pads invalid), generated tokens [P, P + t). All rows share `index`, which is
    what left padding buys: one dynamic_update_slice per step for the whole batch.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array


def prefill(cfg: ModelConfig, params: Params, tokens: jax.Array, mask: jax.Array, cache_len: int,
            lora: LoraParams | None = None, *, moe_impl: str = "ragged") -> tuple[jax.Array, KVCache]:
    """Runs the prompt [B, P] and returns the last position's logits [B, V] and a cache of length S."""
    B, P = tokens.shape
    if cache_len < P:
        raise ValueError(f"cache_len={cache_len} is shorter than the prompt length {P}")
    h, (k, v) = forward_hidden(cfg, params, tokens, lora, mask=mask, moe_impl=moe_impl, return_kv=True)
    pad = [(0, 0), (0, 0), (0, cache_len - P), (0, 0), (0, 0)]
    cache = KVCache(k=jnp.pad(k, pad), v=jnp.pad(v, pad),
                    valid=jnp.pad(mask.astype(bool), [(0, 0), (0, cache_len - P)]),
                    index=jnp.asarray(P, jnp.int32))
    return unembed(cfg, params, h[:, -1]), cache


def decode_windows(prompt_len: int, cache_len: int) -> tuple[int, ...]:
    """The static cache prefixes decode attends over: powers of two from the first one that holds
    the prompt, then the whole cache. E.g. P=128, S=384 -> (128, 256, 384).

    Step t needs the P + t written slots, so it uses the smallest window >= P + t (see
    `decode_window_index`); a step then reads at most twice its live context instead of all S
    slots, and the window chosen for a live length does not depend on the cache capacity. Each
    window is one branch of a `lax.switch`: a handful of static shapes, compiled once.
    """
    w = 1 << max(prompt_len - 1, 0).bit_length()  # smallest power of two >= prompt_len
    windows = []
    while w < cache_len:
        windows.append(w)
        w *= 2
    return tuple(windows) + (cache_len,)


def decode_window_index(windows: tuple[int, ...], index: jax.Array) -> jax.Array:
    """Branch of the smallest window holding the `index` slots written so far (scalar int32)."""
    return jnp.searchsorted(jnp.asarray(windows, jnp.int32), index).astype(jnp.int32)


def decode_forward(cfg: ModelConfig, params: Params, token: jax.Array, position: jax.Array,
                   cache: KVCache, lora: LoraParams | None = None, *, window: int | None = None,
                   moe_impl: str = "ragged") -> tuple[jax.Array, jax.Array, jax.Array]:
    """One token per row (token, position: [B]) against the first `window` cache slots.

    Returns logits [B, V] and the token's k, v [L, B, 1, Hkv, hd]; the cache is only read (write
    the new k/v with `write_kv`). Every written slot must lie inside the window (cache.index <=
    window); slots past it are never read, which is what makes decode cost follow the live
    context. Each layer slices what it reads straight out of the [L, B, S, ...] cache: a full
    layer the whole `window` prefix; a sliding layer, once the prefix is longer than its
    attention window, only the `sliding_window - 1` slots before the new token (a windowed read:
    its cost follows the window, not the context; the cache itself stays linear, not a ring
    buffer). A model mixing both kinds picks the read per layer with `lax.cond` on the scanned
    window, so one compiled layer body still serves every layer.
    """
    L, B, S, Hkv, hd = cache.k.shape
    W = S if window is None else window
    layers_lora, scale = _lora_parts(lora)
    x = embed(cfg, params, token[:, None])  # [B, 1, D]
    inv_freq = _inv_freq(cfg)
    positions = position[:, None]
    # Slots a sliding layer can see besides the new token itself (at slot cache.index).
    recent = (cfg.sliding_window or 0) - 1
    windowed_reads = cfg.has_sliding_layers and 0 < recent < W
    all_sliding = set(cfg.layer_types) == {"sliding_attention"}

    def read(l: jax.Array, start: jax.Array, size: int) -> tuple[jax.Array, jax.Array, jax.Array,
                                                                  jax.Array]:
        """Layer l's k, v [B, size, Hkv, hd], valid [B, size] and slot ids [size] from `start`."""
        k_l = jax.lax.dynamic_slice(cache.k, (l, 0, start, 0, 0), (1, B, size, Hkv, hd))[0]
        v_l = jax.lax.dynamic_slice(cache.v, (l, 0, start, 0, 0), (1, B, size, Hkv, hd))[0]
        ok = jax.lax.dynamic_slice(cache.valid, (0, start), (B, size))
        return k_l, v_l, ok, start + jnp.arange(size)

    def body(x, layer):
        lp, ll, l, window, layer_inv = layer
        inv = inv_freq if layer_inv is None else layer_inv

        def run(x, start, size):
            k_l, v_l, ok, slots = read(l, start, size)
            # The new token sits at slot cache.index: keep slots j > index - window.
            seen = ok if window is None else ok & window_mask(cache.index[None], slots, window)
            return _layer(cfg, x, lp, ll, positions, None, LayerCache(k_l, v_l, seen), scale,
                          moe_impl, inv)

        full = lambda x: run(x, jnp.int32(0), W)  # noqa: E731
        if not windowed_reads:
            return full(x)
        recent_only = lambda x: run(x, jnp.maximum(cache.index - recent, 0), recent)  # noqa: E731
        if all_sliding:
            return recent_only(x)
        return jax.lax.cond(window < FULL_WINDOW, recent_only, full, x)

    x, (k_new, v_new) = _scan_layers(cfg, body, x, (params["layers"], layers_lora, jnp.arange(L),
                                                    _layer_windows(cfg), layer_inv_freqs(cfg)))
    h = _norm(cfg, x[:, 0], params["final_norm"])
    return unembed(cfg, params, h), k_new, v_new


def write_kv(cache: KVCache, k_new: jax.Array, v_new: jax.Array) -> KVCache:
    """Writes one step's k/v [L, B, 1, Hkv, hd] at slot `cache.index` of every row and advances it."""
    i = cache.index
    B = cache.valid.shape[0]
    return KVCache(
        k=jax.lax.dynamic_update_slice_in_dim(cache.k, k_new, i, axis=2),
        v=jax.lax.dynamic_update_slice_in_dim(cache.v, v_new, i, axis=2),
        valid=jax.lax.dynamic_update_slice_in_dim(cache.valid, jnp.ones((B, 1), bool), i, axis=1),
        index=i + 1,
    )


def decode_step_live(cfg: ModelConfig, params: Params, token: jax.Array, position: jax.Array,
                     cache: KVCache, lora: LoraParams | None = None, *, windows: tuple[int, ...],
                     moe_impl: str = "ragged") -> tuple[jax.Array, KVCache]:
    """`decode_step` that reads only a live prefix of the cache: attention over the smallest of
    `windows` (static, from `decode_windows`) holding every written slot, picked by `lax.switch`.

    The switch branches only read the cache and return the new k/v; the write happens after the
    switch, so the loop carrying the cache can update it in place instead of copying it per step.
    """
    branches = [functools.partial(decode_forward, cfg, params, lora=lora, window=w,
                                  moe_impl=moe_impl) for w in windows]
    logits, k_new, v_new = jax.lax.switch(decode_window_index(windows, cache.index), branches,
                                          token, position, cache)
    return logits, write_kv(cache, k_new, v_new)


def decode_step(cfg: ModelConfig, params: Params, token: jax.Array, position: jax.Array,
                cache: KVCache, lora: LoraParams | None = None, *,
                moe_impl: str = "ragged") -> tuple[jax.Array, KVCache]:
    """Feeds one token per row (token, position: [B]) and returns logits [B, V] and the updated
    cache. Attends over the whole cache; the sampler's loop uses `decode_step_live`."""
    logits, k_new, v_new = decode_forward(cfg, params, token, position, cache, lora,
                                          moe_impl=moe_impl)
    return logits, write_kv(cache, k_new, v_new)
