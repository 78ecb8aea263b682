"""Jitted rollout: prefill + a `lax.while_loop` decode over a static-shape KV cache.

Decode reads only a live prefix of the cache: each step attends over the smallest of a few static
windows (powers of two, then S; `transformer.decode_windows`) that holds every written slot,
picked by `lax.switch` inside the loop, so its cost grows with the live context, not with S.

Shapes and what recompiles:
* prompts are left-padded to a power-of-two bucket P, the generation budget to a bucket G; the
  cache holds S = P + G slots. Only P, G (and the model/eos config) are static;
* temperature, top-p, top-k, `max_new_tokens` (<= G) — a `SamplingParams` — and the teacher-seed
  length are arrays, so a schedule that changes them every step never recompiles; the static
  options (buckets, eos/pad ids, MoE implementation) are keyword-only.

Entry points: `generate` (lists of ids, one call), `generate_batched` (all prompts of a split in
fixed-shape batches: evaluation and the off-policy teacher samples), `teacher_seeded_arrays`
(the teacher writes a prefix, the student continues) and `generate_arrays`, the jitted core.

Randomness: the sample of row r at completion position t uses `fold_in(fold_in(key, row_id[r]), t)`.
It depends only on the row's id and position, never on which other rows share the batch or how
the batch is sharded, so the same prompt with the same (key, row id) yields the same completion
alone or in any batch.

`logprobs` are the sampling model's log-probabilities of each emitted token at temperature 1
without top-p/top-k filtering: the behaviour policy of the on-policy importance ratio when sampling
at T=1 (the distillation default), and exactly what `scoring.score` recomputes for the same tokens.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cliffdistill.data.prompts import bucket_length, pad_left
from cliffdistill.models import transformer
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraParams
from cliffdistill.models.sharding import constrain, put_batch, to_host


class GenerateOutput(NamedTuple):
    tokens: jax.Array  # [B, G] int32 completion, pad_id after the end
    mask: jax.Array  # [B, G] bool: real completion tokens (EOS included)
    student_mask: jax.Array  # [B, G] bool: tokens this model sampled (not a forced/teacher prefix)
    logprobs: jax.Array  # [B, G] f32: log p(token) at T=1, 0 where ~mask
    lengths: jax.Array  # [B] int32 completion lengths
    finished: jax.Array  # [B] bool: ended with an EOS token
    truncated: jax.Array  # [B] bool: hit max_new_tokens without EOS


def _row_keys(key: jax.Array, row_ids: jax.Array, t: jax.Array) -> jax.Array:
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), t))(row_ids)


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus) on the top-k-renormalised distribution.

    logits [B, V] fp32; temperature/top_k/top_p [B]. top_k <= 0 and top_p >= 1 disable a filter.
    Filtered-out entries get -inf. Ties at a threshold are kept.
    """
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]

    def filtered(x):
        V = x.shape[-1]
        srt = jnp.sort(x, axis=-1)[:, ::-1]  # descending
        k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
        kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)
        in_k = jnp.arange(V)[None] < k[:, None]  # [B, V] in sorted order
        probs = jax.nn.softmax(jnp.where(in_k, srt, -jnp.inf), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted entry
        keep_sorted = in_k & (before < top_p[:, None])
        n_keep = jnp.maximum(jnp.sum(keep_sorted, axis=-1), 1)
        threshold = jnp.maximum(kth, jnp.take_along_axis(srt, (n_keep - 1)[:, None], axis=-1))
        return jnp.where(x >= threshold, x, -jnp.inf)

    needed = jnp.any((top_k > 0) | (top_p < 1.0))
    return jax.lax.cond(needed, filtered, lambda x: x, scaled)  # skip the [B, V] sort when unused


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array) -> jax.Array:
    """One token per row; temperature 0 is greedy. logits [B, V] fp32, keys [B] -> [B] int32."""
    filtered = filter_logits(logits, temperature, top_k, top_p)
    sampled = jax.vmap(jax.random.categorical)(keys, filtered)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


class SamplingParams(NamedTuple):
    """Per-call sampling knobs, all arrays (a pytree): changing a value never recompiles.

    Scalars apply to every row; [B] arrays set them per row. temperature 0 is greedy; top_k <= 0
    and top_p >= 1 disable those filters; max_new_tokens is capped by the static bucket G.
    """

    temperature: jax.Array  # f32
    top_k: jax.Array  # int32
    top_p: jax.Array  # f32
    max_new_tokens: jax.Array  # int32

    @classmethod
    def of(cls, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> SamplingParams:
        return cls(jnp.asarray(temperature, jnp.float32), jnp.asarray(top_k, jnp.int32),
                   jnp.asarray(top_p, jnp.float32), jnp.asarray(max_new_tokens, jnp.int32))

    @classmethod
    def greedy(cls, max_new_tokens: int) -> SamplingParams:
        return cls.of(max_new_tokens, temperature=0.0)


class _LoopState(NamedTuple):
    t: jax.Array
    logits: jax.Array  # [B, V] next-token logits
    cache: transformer.KVCache
    tokens: jax.Array
    logprobs: jax.Array
    written: jax.Array  # [B, G] bool
    done: jax.Array  # [B] bool


@functools.partial(jax.jit, static_argnames=("cfg", "gen_len", "eos_ids", "pad_id", "moe_impl"))
def generate_arrays(cfg: ModelConfig, params: Any, lora: LoraParams | None, prompt: jax.Array,
                    prompt_mask: jax.Array, key: jax.Array, row_ids: jax.Array,
                    sp: SamplingParams, forced: jax.Array | None = None,
                    forced_len: jax.Array | None = None, *, gen_len: int,
                    eos_ids: tuple[int, ...], pad_id: int, moe_impl: str = "ragged"
                    ) -> GenerateOutput:
    """The jitted core. prompt/prompt_mask [B, P] (left-padded); gen_len = G (static bucket).

    forced [B, F] / forced_len [B]: the first forced_len[r] completion tokens of row r are taken
    from `forced` instead of sampled (teacher seeding); they are fed through this model's cache
    like any token but are marked `student_mask=False`.
    """
    B, P = prompt.shape
    S = P + gen_len
    bcast = lambda x, dt: jnp.broadcast_to(jnp.asarray(x, dt), (B,))  # noqa: E731
    temperature, top_p = bcast(sp.temperature, jnp.float32), bcast(sp.top_p, jnp.float32)
    top_k = bcast(sp.top_k, jnp.int32)
    max_new = jnp.minimum(jnp.asarray(sp.max_new_tokens, jnp.int32), gen_len)
    if forced is None:
        forced = jnp.zeros((B, 1), jnp.int32)
        forced_len = jnp.zeros((B,), jnp.int32)
    eos = jnp.asarray(eos_ids, jnp.int32)
    prompt_len = jnp.sum(prompt_mask, axis=-1).astype(jnp.int32)

    logits, cache = transformer.prefill(cfg, params, prompt, prompt_mask, S, lora, moe_impl=moe_impl)
    state = _LoopState(
        t=jnp.asarray(0, jnp.int32), logits=logits, cache=cache,
        tokens=jnp.full((B, gen_len), pad_id, jnp.int32),
        logprobs=jnp.zeros((B, gen_len), jnp.float32),
        written=jnp.zeros((B, gen_len), bool), done=jnp.zeros((B,), bool))

    # Live-prefix decode: step t attends over the smallest static window holding its P + t
    # written slots (one switch branch per window), so its cost follows the live context, not S.
    windows = transformer.decode_windows(P, S)

    def cond(s: _LoopState) -> jax.Array:
        return (s.t < max_new) & ~jnp.all(s.done)

    def body(s: _LoopState) -> _LoopState:
        sampled = sample_tokens(s.logits, _row_keys(key, row_ids, s.t), temperature, top_k, top_p)
        is_forced = s.t < forced_len
        f_idx = jnp.minimum(s.t, forced.shape[1] - 1)
        tok = jnp.where(is_forced, forced[:, f_idx], sampled)
        tok = jnp.where(s.done, pad_id, tok)
        lp = jnp.take_along_axis(jax.nn.log_softmax(s.logits), tok[:, None], axis=-1)[:, 0]
        live = ~s.done
        tokens = s.tokens.at[:, s.t].set(tok)
        logprobs = s.logprobs.at[:, s.t].set(jnp.where(live, lp, 0.0))
        written = s.written.at[:, s.t].set(live & ~is_forced)
        done = s.done | jnp.isin(tok, eos)
        logits, cache = transformer.decode_step_live(cfg, params, tok, prompt_len + s.t, s.cache,
                                                     lora, windows=windows, moe_impl=moe_impl)
        logits = constrain(logits, ("batch", None))
        return _LoopState(s.t + 1, logits, cache, tokens, logprobs, written, done)

    s = jax.lax.while_loop(cond, body, state)
    positions = jnp.arange(gen_len)[None]
    ended = jnp.isin(s.tokens, eos) & (positions < s.t)
    # length = index of the first EOS + 1, else the number of steps run
    first_eos = jnp.where(jnp.any(ended, axis=-1), jnp.argmax(ended, axis=-1) + 1, s.t)
    mask = positions < first_eos[:, None]
    finished = jnp.any(ended, axis=-1)
    return GenerateOutput(
        tokens=jnp.where(mask, s.tokens, pad_id), mask=mask, student_mask=s.written & mask,
        logprobs=jnp.where(mask, s.logprobs, 0.0), lengths=first_eos.astype(jnp.int32),
        finished=finished, truncated=~finished)


def _eos_ids(cfg: ModelConfig, eos_ids: Sequence[int] | None) -> tuple[int, ...]:
    ids = tuple(eos_ids) if eos_ids is not None else cfg.eos_token_ids
    if not ids:
        raise ValueError("no EOS token ids: set eos_token_id in the model's config.json or pass eos_ids")
    return tuple(int(i) for i in ids)


def _pad_id(cfg: ModelConfig, pad_id: int | None) -> int:
    if pad_id is not None:
        return int(pad_id)
    return int(cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_ids[0])


def prepare_prompts(prompts: Sequence[Sequence[int]] | np.ndarray, pad_id: int,
                    prompt_mask: np.ndarray | None = None, max_prompt_len: int | None = None,
                    min_bucket: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Lists of token ids -> left-padded [B, P] tokens and mask with P a power-of-two bucket.

    Arrays are taken as already left-padded (mask required unless there is no padding).
    """
    if isinstance(prompts, (np.ndarray, jax.Array)):
        tokens = np.asarray(prompts, np.int32)
        mask = np.ones(tokens.shape, bool) if prompt_mask is None else np.asarray(prompt_mask, bool)
        return tokens, mask
    longest = max(len(p) for p in prompts)
    length = bucket_length(longest, min_bucket)
    if max_prompt_len is not None and longest > max_prompt_len:
        raise ValueError(f"a prompt has {longest} tokens but max_prompt_len={max_prompt_len}; "
                         "raise the config field `max_prompt_len` (the KV cache prompt budget)")
    return pad_left(prompts, pad_id, length)


def generate(cfg: ModelConfig, params: Any, prompts: Sequence[Sequence[int]] | np.ndarray,
             key: jax.Array, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, *, prompt_mask: np.ndarray | None = None,
             lora: LoraParams | None = None, n_samples: int = 1,
             row_ids: np.ndarray | None = None, eos_ids: Sequence[int] | None = None,
             pad_id: int | None = None, gen_bucket: int | None = None,
             max_prompt_len: int | None = None, moe_impl: str = "ragged") -> GenerateOutput:
    """Samples completions for a batch of prompts (lists of ids, or a left-padded array + mask).

    n_samples > 1 repeats each prompt (group sampling); rows are ordered prompt-major and their
    default row ids are `prompt_index * n_samples + sample_index`.
    """
    pad = _pad_id(cfg, pad_id)
    tokens, mask = prepare_prompts(prompts, pad, prompt_mask, max_prompt_len)
    if n_samples > 1:
        tokens, mask = np.repeat(tokens, n_samples, axis=0), np.repeat(mask, n_samples, axis=0)
    B = tokens.shape[0]
    row_ids = np.arange(B, dtype=np.int32) if row_ids is None else np.asarray(row_ids, np.int32)
    gen_len = gen_bucket or bucket_length(max_new_tokens, 1)
    if max_new_tokens > gen_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the generation bucket {gen_len}")
    sp = SamplingParams.of(max_new_tokens, temperature, top_k, top_p)
    return generate_arrays(cfg, params, lora, jnp.asarray(tokens), jnp.asarray(mask), key,
                           jnp.asarray(row_ids), sp, gen_len=gen_len,
                           eos_ids=_eos_ids(cfg, eos_ids), pad_id=pad, moe_impl=moe_impl)


def generate_batched(cfg: ModelConfig, params: Any, lora: LoraParams | None, prompts: np.ndarray,
                     prompt_mask: np.ndarray, key: jax.Array, sp: SamplingParams, *,
                     batch_size: int, gen_len: int, eos_ids: tuple[int, ...], pad_id: int,
                     mesh: jax.sharding.Mesh | None = None, moe_impl: str = "ragged",
                     progress: Callable[[int, int], Any] | None = None) -> GenerateOutput:
    """Completions of all N prompts [N, P] (host numpy), `batch_size` rows per call.

    Row i samples with row id i, so its completion does not depend on the batching. The last
    batch is padded with copies of the last prompt (results dropped) so every call has the same
    shape and the jitted sampler compiles once. Returns a GenerateOutput of host numpy [N, ...].
    """
    N = prompts.shape[0]
    parts = []
    for start in range(0, N, batch_size):
        idx = np.minimum(np.arange(start, start + batch_size), N - 1)
        out = generate_arrays(
            cfg, params, lora, put_batch(prompts[idx], mesh), put_batch(prompt_mask[idx], mesh),
            key, put_batch(idx.astype(np.int32), mesh), sp, gen_len=gen_len, eos_ids=eos_ids,
            pad_id=pad_id, moe_impl=moe_impl)
        keep = min(batch_size, N - start)
        parts.append(GenerateOutput(*(to_host(x)[:keep] for x in out)))
        if progress is not None:
            progress(start + keep, N)
    return GenerateOutput(*(np.concatenate(xs) for xs in zip(*parts)))


_TEACHER_STREAM = 0x7EAC4E5  # distinct random stream for the teacher's seed tokens


@functools.partial(jax.jit, static_argnames=("student_cfg", "teacher_cfg", "gen_len", "seed_len",
                                             "eos_ids", "pad_id", "moe_impl"))
def teacher_seeded_arrays(student_cfg: ModelConfig, student_params: Any,
                          student_lora: LoraParams | None, teacher_cfg: ModelConfig,
                          teacher_params: Any, teacher_lora: LoraParams | None,
                          student_prompt: jax.Array, student_mask: jax.Array,
                          teacher_prompt: jax.Array, teacher_mask: jax.Array, key: jax.Array,
                          row_ids: jax.Array, seed_tokens: jax.Array, sp: SamplingParams, *,
                          gen_len: int, seed_len: int, eos_ids: tuple[int, ...], pad_id: int,
                          moe_impl: str = "ragged") -> GenerateOutput:
    """The teacher writes the first `seed_tokens` (<= seed_len) completion tokens from its own
    prompt view, then the student continues from its prompt + that prefix.

    Both run as one jitted program; with seed_tokens == 0 the teacher pass is skipped (lax.cond)
    and the result equals plain student sampling.
    """
    k_teacher = jax.random.fold_in(key, _TEACHER_STREAM)  # the student keeps `key` itself
    n = jnp.minimum(jnp.asarray(seed_tokens, jnp.int32), jnp.minimum(seed_len, sp.max_new_tokens))

    def teacher_prefix(_):
        out = generate_arrays(teacher_cfg, teacher_params, teacher_lora, teacher_prompt,
                              teacher_mask, k_teacher, row_ids, sp._replace(max_new_tokens=n),
                              gen_len=seed_len, eos_ids=eos_ids, pad_id=pad_id, moe_impl=moe_impl)
        return out.tokens, out.lengths

    B = student_prompt.shape[0]
    no_prefix = lambda _: (jnp.full((B, seed_len), pad_id, jnp.int32),  # noqa: E731
                           jnp.zeros((B,), jnp.int32))
    forced, forced_len = jax.lax.cond(n > 0, teacher_prefix, no_prefix, None)
    return generate_arrays(student_cfg, student_params, student_lora, student_prompt, student_mask,
                           key, row_ids, sp, forced, forced_len, gen_len=gen_len, eos_ids=eos_ids, pad_id=pad_id,
                           moe_impl=moe_impl)
