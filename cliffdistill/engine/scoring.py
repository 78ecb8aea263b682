"""Per-token log-probs of a completion under a model that sees *its own* prompt view.

The completion's token ids are placed right after the model's left-padded prompt (student:
question; teacher: few-shot context + question), so the same ids are scored under every view and
nothing is ever re-tokenized. Because prompts are left-padded to P columns, completion token t of
every row sits at column P + t and is predicted by the hidden state at column P + t - 1.

Log-softmax over the vocabulary runs in chunks (`vocab_chunk`) with an online logsumexp, so a
`[B, G, 151936]` fp32 array never exists, in the forward or (thanks to `jax.checkpoint`) the
backward pass.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from cliffdistill.models import transformer
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraParams


def completion_hidden(cfg: ModelConfig, params: Any, prompt: jax.Array, prompt_mask: jax.Array,
                      completion: jax.Array, lora: LoraParams | None = None, *,
                      remat: bool | str = False, moe_impl: str = "ragged", shift: bool = True) -> jax.Array:
    """Hidden states [B, G, D] that predict completion tokens [B, G] after prompt [B, P].

    shift=False is the study's off-policy defect, kept only as an ablation: token t is "predicted"
    from its own position, where the model already sees it, so training teaches copying.
    """
    P, G = prompt.shape[1], completion.shape[1]
    tokens = jnp.concatenate([prompt, completion], axis=1)
    # Completion padding sits after the real tokens, so causality keeps it from affecting them.
    mask = jnp.concatenate([prompt_mask, jnp.ones(completion.shape, bool)], axis=1)
    h = transformer.forward_hidden(cfg, params, tokens, lora, mask=mask, remat=remat,
                                   moe_impl=moe_impl)
    start = P - 1 if shift else P
    return h[:, start:start + G]


def chunked_token_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array,
                           vocab_chunk: int, softcap: float | None = None) -> jax.Array:
    """log softmax(h @ w)[targets] without materialising the logits. h [B,T,D], w [D,V] -> [B,T] fp32.
    `softcap`: the model's final-logit cap (Gemma 2), applied to each chunk's logits."""
    V = w.shape[1]
    chunk = min(vocab_chunk, V)
    n = math.ceil(V / chunk)
    w_chunks = jnp.pad(w, ((0, 0), (0, n * chunk - V))).reshape(w.shape[0], n, chunk)
    w_chunks = jnp.moveaxis(w_chunks, 1, 0)  # [n, D, chunk]
    starts = jnp.arange(n) * chunk

    @jax.checkpoint
    def body(carry, xs):
        m, s, tgt = carry
        wc, start = xs
        logits = transformer.softcap(
            jnp.einsum("btd,dv->btv", h, wc, preferred_element_type=jnp.float32), softcap)
        ids = start + jnp.arange(chunk)
        logits = jnp.where(ids < V, logits, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[..., None]), axis=-1)
        local = targets - start
        hit = (local >= 0) & (local < chunk)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, chunk - 1)[..., None], axis=-1)[..., 0]
        return (m_new, s, tgt + jnp.where(hit, picked, 0.0)), None

    B, T = targets.shape
    init = (jnp.full((B, T), -jnp.inf, jnp.float32), jnp.zeros((B, T), jnp.float32),
            jnp.zeros((B, T), jnp.float32))
    (m, s, tgt), _ = jax.lax.scan(body, init, (w_chunks, starts))
    return tgt - (m + jnp.log(s))


def score_hidden(cfg: ModelConfig, params: Any, h: jax.Array, completion: jax.Array,
                 completion_mask: jax.Array, vocab_chunk: int = 16384) -> jax.Array:
    """Log-probs [B, G] of completion tokens from `completion_hidden`; 0 where ~completion_mask."""
    lp = chunked_token_logprobs(h, transformer.unembed_matrix(cfg, params), completion, vocab_chunk,
                                cfg.final_logit_softcapping)
    return jnp.where(completion_mask, lp, 0.0)


@functools.partial(jax.jit, static_argnames=("cfg", "vocab_chunk", "moe_impl"))
def score(cfg: ModelConfig, params: Any, prompt: jax.Array, prompt_mask: jax.Array,
          completion: jax.Array, completion_mask: jax.Array, lora: LoraParams | None = None, *,
          vocab_chunk: int = 16384, moe_impl: str = "ragged") -> jax.Array:
    """log p(completion_t | prompt, completion_<t) [B, G] fp32 under (cfg, params, lora)."""
    h = completion_hidden(cfg, params, prompt, prompt_mask, completion, lora, moe_impl=moe_impl)
    return score_hidden(cfg, params, h, completion, completion_mask, vocab_chunk)


@functools.partial(jax.jit, static_argnames=("cfg", "moe_impl"))
def score_choices(cfg: ModelConfig, params: Any, prompt: jax.Array, prompt_mask: jax.Array,
                  choices: jax.Array, choice_mask: jax.Array, lora: LoraParams | None = None, *,
                  moe_impl: str = "ragged") -> jax.Array:
    """log p(choices[b, c, t] | prompt[b], choices[b, c, <t]) [B, C, G] fp32, 0 where ~choice_mask,
    with each prompt run once for all C of its continuations.

    The prompt [B, P] (left-padded) is prefilled into a KV cache once; the cache is repeated for
    the row's C continuations [B, C, G] (right-padded), which are then decoded against it one
    token at a time: prefill logits score token 0, decode step t scores token t + 1. This is the
    sampler's cache path, so it equals a full forward over prompt + continuation (the cached
    decode = full forward tests), while the shared context is computed once instead of C times.
    """
    B, C, G = choices.shape
    P = prompt.shape[1]
    logits0, cache = transformer.prefill(cfg, params, prompt, prompt_mask, P + G - 1, lora,
                                         moe_impl=moe_impl)  # [B, V]
    rows = lambda a, axis: jnp.repeat(a, C, axis=axis)  # noqa: E731  B -> B * C rows
    cache = transformer.KVCache(rows(cache.k, 1), rows(cache.v, 1), rows(cache.valid, 0),
                                cache.index)
    flat = choices.reshape(B * C, G)
    lp0 = jnp.take_along_axis(jax.nn.log_softmax(rows(logits0, 0)), flat[:, :1], axis=-1)
    start = rows(jnp.sum(prompt_mask, axis=-1).astype(jnp.int32), 0)  # position of token 0

    def step(cache, xs):
        token, target, t = xs  # [BC], [BC], scalar
        logits, cache = transformer.decode_step(cfg, params, token, start + t, cache, lora,
                                                moe_impl=moe_impl)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), target[:, None], axis=-1)[:, 0]
        return cache, lp

    _, rest = jax.lax.scan(step, cache, (flat[:, :-1].T, flat[:, 1:].T, jnp.arange(G - 1)))
    lp = jnp.concatenate([lp0, rest.T], axis=1).reshape(B, C, G)
    return jnp.where(choice_mask, lp, 0.0)
