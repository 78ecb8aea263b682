"""One decoder for Llama 3.x, Qwen3 and Qwen3-MoE, as pure functions over a param pytree.

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
from cliffdistill.models.config import ModelConfig, rope_inv_freq
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

    ones = lambda shape: jnp.ones(shape, dtype)  # noqa: E731
    layers: Params = {
        "attn_norm": ones((L, D)),
        "mlp_norm": ones((L, D)),
        "q_proj": normal((L, D, q_out)),
        "k_proj": normal((L, D, kv_out)),
        "v_proj": normal((L, D, kv_out)),
        "o_proj": normal((L, q_out, D)),
    }
    if cfg.qk_norm:
        layers["q_norm"] = ones((L, hd))
        layers["k_norm"] = ones((L, hd))
    if cfg.is_moe:
        E, F = cfg.num_experts, cfg.moe_intermediate_size
        layers.update(router=normal((L, D, E)), gate_proj=normal((L, E, D, F)),
                      up_proj=normal((L, E, D, F)), down_proj=normal((L, E, F, D)))
    else:
        F = cfg.intermediate_size
        layers.update(gate_proj=normal((L, D, F)), up_proj=normal((L, D, F)),
                      down_proj=normal((L, F, D)))
    params: Params = {"embed": normal((cfg.vocab_size, D)), "final_norm": ones((D,)), "layers": layers}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = normal((D, cfg.vocab_size))
    return params


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# --------------------------------------------------------------------------- building blocks


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in fp32, cast back to the activation dtype before the weight (as HF does)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * y.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding, HF "rotate half" layout. x: [B, T, H, hd], positions: [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _proj(x: jax.Array, w: jax.Array, lora: dict | None, scale: float) -> jax.Array:
    """x @ w (+ scale * x @ a @ b when an adapter is present). x: [..., in], w: [in, out]."""
    y = x @ w
    if lora is not None:
        y = y + (scale * ((x @ lora["a"].astype(x.dtype)) @ lora["b"].astype(x.dtype))).astype(y.dtype)
    return y


class LayerCache(NamedTuple):
    """One layer's KV cache for decode: k, v [B, S, Hkv, hd]; valid [B, S] (slot holds a real token)."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array


def _attention(cfg: ModelConfig, lp: Params, ll: Params, x: jax.Array, positions: jax.Array,
               mask: jax.Array | None, cache: LayerCache | None, scale: float,
               inv_freq: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Self-attention. Returns the output [B, T, D] and this call's new (k, v) [B, T, Hkv, hd].

    Without a cache the T tokens attend causally among themselves (pad keys masked by `mask`).
    With a cache (decode, T == 1) the token attends to the cache's valid slots and to itself; the
    caller writes the returned k/v into the cache afterwards, so the cache is only read here.
    """
    B, T, _ = x.shape
    Hq, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = Hq // Hkv
    get = lambda name: ll.get(name) if ll else None  # noqa: E731
    q = _proj(x, lp["q_proj"], get("q_proj"), scale).reshape(B, T, Hq, hd)
    k = _proj(x, lp["k_proj"], get("k_proj"), scale).reshape(B, T, Hkv, hd)
    v = _proj(x, lp["v_proj"], get("v_proj"), scale).reshape(B, T, Hkv, hd)
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    q = rope(q, positions, inv_freq).reshape(B, T, Hkv, G, hd)
    k = rope(k, positions, inv_freq)
    inv_sqrt = 1.0 / np.sqrt(hd)

    def scores(q, keys):  # q [B, Tq, Hkv, G, hd], keys [B, S, Hkv, hd] -> [B, Hkv, G, Tq, S] fp32
        s = jnp.einsum("btkgd,bskd->bkgts", q, keys, preferred_element_type=jnp.float32)
        return s * inv_sqrt

    if cache is None:
        def attend(q_blk, start):
            """Queries [start, start + Tq) against all T keys: causal, pad keys masked."""
            allowed = (start + jnp.arange(q_blk.shape[1]))[:, None] >= jnp.arange(T)[None]
            allowed = allowed[None] if mask is None else allowed[None] & mask[:, None, :]
            s = jnp.where(allowed[:, None, None], scores(q_blk, k), _MASK_BIAS)
            p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
            return jnp.einsum("bkgts,bskd->btkgd", p, v)

        blk = min(cfg.attention_block, T & -T)  # the largest power of two dividing T, capped
        if T <= cfg.attention_block:
            out = attend(q, 0)
        else:
            # Long sequences (a 10-shot teacher prompt): query blocks under lax.map, each
            # rematerialised in the backward pass, so [B, H, T, T] scores never exist at once.
            q_blocks = jnp.moveaxis(q.reshape(B, T // blk, blk, Hkv, G, hd), 1, 0)
            out = jax.lax.map(lambda a: jax.checkpoint(attend)(*a),
                              (q_blocks, jnp.arange(T // blk) * blk))
            out = jnp.moveaxis(out, 0, 1).reshape(B, T, Hkv, G, hd)
    else:
        s_cache = jnp.where(cache.valid[:, None, None, None, :], scores(q, cache.k), _MASK_BIAS)
        s_self = jnp.einsum("btkgd,btkd->bkgt", q, k, preferred_element_type=jnp.float32)[..., None]
        p = jax.nn.softmax(jnp.concatenate([s_cache, s_self * inv_sqrt], axis=-1), axis=-1)
        p_cache, p_self = p[..., :-1].astype(v.dtype), p[..., -1:].astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", p_cache, cache.v)
        out = out + jnp.einsum("bkgts,btkd->btkgd", p_self, v)
    out = out.reshape(B, T, Hq * hd)
    return _proj(out, lp["o_proj"], get("o_proj"), scale), (k, v)


def _dense_mlp(lp: Params, ll: Params, x: jax.Array, scale: float) -> jax.Array:
    get = lambda name: ll.get(name) if ll else None  # noqa: E731
    h = jax.nn.silu(_proj(x, lp["gate_proj"], get("gate_proj"), scale)) * _proj(
        x, lp["up_proj"], get("up_proj"), scale)
    return _proj(h, lp["down_proj"], get("down_proj"), scale)


def _route(cfg: ModelConfig, lp: Params, xf: jax.Array) -> tuple[jax.Array, jax.Array]:
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
    top_w, top_e = _route(cfg, lp, xf)
    combine = jnp.zeros((B * T, cfg.num_experts), xf.dtype)
    combine = combine.at[jnp.arange(B * T)[:, None], top_e].add(top_w)  # [N, E]

    names = ("gate_proj", "up_proj", "down_proj")

    def expert(e):
        le = {k: {ab: w[e] for ab, w in ll[k].items()} for k in names if ll and k in ll}
        pe = {k: lp[k][e] for k in names}
        return _dense_mlp(pe, le, xf, scale)  # [N, D]

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
    top_w, top_e = _route(cfg, lp, xf)
    flat_e = top_e.reshape(N * K)
    order = jnp.argsort(flat_e, stable=True)  # assignment slots sorted by expert
    token = order // K  # which token each sorted slot belongs to
    xs = xf[token]  # [N*K, D]
    group_sizes = jnp.bincount(flat_e, length=cfg.num_experts).astype(jnp.int32)
    get = lambda name: ll.get(name) if ll else None  # noqa: E731
    g = _ragged_proj(xs, lp["gate_proj"], get("gate_proj"), group_sizes, scale)
    u = _ragged_proj(xs, lp["up_proj"], get("up_proj"), group_sizes, scale)
    y = _ragged_proj(jax.nn.silu(g) * u, lp["down_proj"], get("down_proj"), group_sizes, scale)
    y = y * top_w.reshape(N * K)[order][:, None]
    return jnp.zeros_like(xf).at[token].add(y).reshape(B, T, D)


def _layer(cfg: ModelConfig, x: jax.Array, lp: Params, ll: Params, positions: jax.Array,
           mask: jax.Array | None, cache: LayerCache | None, scale: float, moe_impl: str,
           inv_freq: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    h, kv = _attention(cfg, lp, ll, rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps), positions, mask,
                       cache, scale, inv_freq)
    x = x + h
    y = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
    if not cfg.is_moe:
        y = _dense_mlp(lp, ll, y, scale)
    elif moe_impl == "ragged":
        y = _moe_ragged(cfg, lp, ll, y, scale)
    elif moe_impl == "dense":
        y = _moe_dense(cfg, lp, ll, y, scale)
    else:
        raise ValueError(f"moe_impl={moe_impl!r}; expected 'ragged' or 'dense'")
    x = sharding.constrain(x + y, ("batch", None, None))
    return x, kv


def _scan_layers(cfg: ModelConfig, body, x, xs):
    """`lax.scan` over the stacked layers; shallow stacks (<= 4 layers: toy and test models) are
    unrolled, because XLA:CPU's backward pass through a rolled scan runs 2-3x slower than the
    unrolled graph. Deep stacks stay rolled, so compile time does not grow with depth."""
    return jax.lax.scan(body, x, xs, unroll=cfg.num_layers <= 4)


def _inv_freq(cfg: ModelConfig) -> jax.Array:
    return jnp.asarray(np.asarray(rope_inv_freq(cfg), np.float32))


def _lora_parts(lora: LoraParams | None) -> tuple[Params | None, float]:
    if lora is None:
        return None, 0.0
    return lora.layers, lora.scale


# --------------------------------------------------------------------------- whole-sequence forward


def default_positions(mask: jax.Array) -> jax.Array:
    """Positions of left-padded rows: 0 at the first real token. mask: [B, T] bool -> [B, T] int32."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def forward_hidden(cfg: ModelConfig, params: Params, tokens: jax.Array, lora: LoraParams | None = None,
                   *, mask: jax.Array | None = None, positions: jax.Array | None = None,
                   remat: bool = False, moe_impl: str = "ragged",
                   return_kv: bool = False) -> Any:
    """Final-norm hidden states [B, T, D] of tokens [B, T] (and, with `return_kv`, k/v [L, B, T, Hkv, hd])."""
    if positions is None:
        positions = (default_positions(mask) if mask is not None
                     else jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
    layers_lora, scale = _lora_parts(lora)
    x = params["embed"][tokens]
    x = sharding.constrain(x, ("batch", None, None))
    inv_freq = _inv_freq(cfg)

    def body(x, layer):
        lp, ll = layer
        return _layer(cfg, x, lp, ll, positions, mask, None, scale, moe_impl, inv_freq)

    if remat:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    x, kv = _scan_layers(cfg, body, x, (params["layers"], layers_lora))
    h = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return (h, kv) if return_kv else h


def unembed_matrix(cfg: ModelConfig, params: Params) -> jax.Array:
    """[D, V]: the tied embedding transposed, or `lm_head`."""
    return params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]


def unembed(cfg: ModelConfig, params: Params, h: jax.Array) -> jax.Array:
    """Logits in fp32: h [..., D] -> [..., V]."""
    return jnp.einsum("...d,dv->...v", h, unembed_matrix(cfg, params),
                      preferred_element_type=jnp.float32)


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


def decode_step(cfg: ModelConfig, params: Params, token: jax.Array, position: jax.Array,
                cache: KVCache, lora: LoraParams | None = None, *,
                moe_impl: str = "ragged") -> tuple[jax.Array, KVCache]:
    """Feeds one token per row (token, position: [B]) and returns logits [B, V] and the updated cache."""
    layers_lora, scale = _lora_parts(lora)
    x = params["embed"][token[:, None]]  # [B, 1, D]
    inv_freq = _inv_freq(cfg)
    positions = position[:, None]

    def body(x, layer):
        lp, ll, k_l, v_l = layer
        return _layer(cfg, x, lp, ll, positions, None, LayerCache(k_l, v_l, cache.valid), scale,
                      moe_impl, inv_freq)

    x, (k_new, v_new) = _scan_layers(cfg, body, x, (params["layers"], layers_lora, cache.k, cache.v))
    i = cache.index
    cache = KVCache(
        k=jax.lax.dynamic_update_slice_in_dim(cache.k, k_new, i, axis=2),
        v=jax.lax.dynamic_update_slice_in_dim(cache.v, v_new, i, axis=2),
        valid=jax.lax.dynamic_update_slice_in_dim(cache.valid, jnp.ones((token.shape[0], 1), bool), i,
                                                  axis=1),
        index=i + 1,
    )
    h = rms_norm(x[:, 0], params["final_norm"], cfg.rms_norm_eps)
    return unembed(cfg, params, h), cache
