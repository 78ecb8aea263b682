"""Distillation losses (DESIGN §2 "Math").

Conventions shared by every function here:

* Inputs are per-token log-probs ``[B, T]`` or logits ``[B, T, V]`` (any float dtype); all
  math is done in float32 and every loss returns a float32 scalar.
* Losses are a **token mean over ``mask``**: ``sum(mask * per_token) / max(sum(mask), 1)``.
  ``mask`` is ``[B, T]`` (bool or 0/1); only student-written completion tokens should be 1.
  Values at masked-out positions never reach the result or its gradient (they may hold padding
  garbage such as ``-inf``).
* Everything is jit-able.  Weights that change from step to step (``beta``, ``discount``) may be
  traced arrays: nothing branches in Python on their value.

Losses:

* :func:`sampled_reverse_kl` -- on-policy loss (Tinker-style importance-weighted sampled reverse KL),
  with an optional KL discount and optional per-sequence weights (:func:`teacher_confidence_weights`
  for ``reward_weighted_gkd``); :func:`sampled_reverse_kl_stats` for metrics.
* :func:`dpo_loss` -- DPO on teacher-ranked pairs of student completions (``dpo_teacher``);
  :func:`preference_pairs` picks each prompt's best and worst completion by
  :func:`mean_token_logprob` of the teacher.
* :func:`generalized_jsd` -- full-vocab generalized JSD(beta) (GKD paper); beta=0 forward KL(T||S),
  beta=1 reverse KL(S||T).  :func:`generalized_jsd_chunked` computes the same value from hidden
  states and unembedding matrices without ever materialising ``[B, T, V]`` logits.
* :func:`off_policy_nll` -- NLL of teacher samples, targets shifted by one (``shift=False`` is the
  study's defect, kept only as an ablation); :func:`forward_kl` -- full-vocab off-policy option.
* :func:`kl_anchor` -- KL(pi_theta || pi_0), the caller multiplies by the anchor beta.
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ArrayLike = Union[jax.Array, np.ndarray, float]

_F32 = jnp.float32
# Clamp range for beta inside the 0 < beta < 1 branch of the JSD, so that log(beta) and
# log(1 - beta) stay finite (and their gradients NaN-free) even when beta is exactly 0 or 1
# and that branch is not the one selected.
_BETA_LO = float(np.finfo(np.float32).tiny)
_BETA_HI = float(1.0 - np.finfo(np.float32).epsneg)


# ----------------------------------------------------------------------------- helpers


def _masked_mean(values: jax.Array, mask: ArrayLike) -> jax.Array:
    """``sum(mask * values) / max(sum(mask), 1)`` in float32. values, mask: [B, T] -> scalar."""
    m = jnp.asarray(mask).astype(_F32)
    v = jnp.where(m > 0, values.astype(_F32), 0.0)  # padding garbage (inf/nan) never leaks
    return jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1.0)


def _weighted_masked_mean(values: jax.Array, mask: ArrayLike,
                          seq_weights: ArrayLike | None) -> jax.Array:
    """``sum(w_b * mask * values) / max(sum(mask), 1)``: a token mean whose rows are scaled by
    ``seq_weights`` [B] (no gradient; None is w = 1). values, mask: [B, T] -> scalar.

    The denominator stays the token count, so weights with mean 1 keep the loss's scale."""
    if seq_weights is None:
        return _masked_mean(values, mask)
    w = lax.stop_gradient(jnp.asarray(seq_weights).astype(_F32))[:, None]  # [B, 1]
    m = jnp.asarray(mask).astype(_F32)
    v = jnp.where(m > 0, values.astype(_F32), 0.0)
    return jnp.sum(w * v * m) / jnp.maximum(jnp.sum(m), 1.0)


def _kl_per_position(logp: jax.Array, logq: jax.Array) -> jax.Array:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last axis. [..., V] -> [...]."""
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def _log_softmax(logits: ArrayLike, temperature: ArrayLike = 1.0) -> jax.Array:
    x = jnp.asarray(logits).astype(_F32) / jnp.asarray(temperature, _F32)
    return jax.nn.log_softmax(x, axis=-1)


def _clamped_log_betas(beta: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(b, log b, log(1-b)) with b = clip(beta) for the interior branch of the JSD."""
    b = jnp.clip(jnp.asarray(beta, _F32), _BETA_LO, _BETA_HI)
    return b, jnp.log(b), jnp.log1p(-b)


def _select_jsd(beta: ArrayLike, fwd: jax.Array, rev: jax.Array, mid: jax.Array) -> jax.Array:
    """beta <= 0 -> forward KL, beta >= 1 -> reverse KL, otherwise the interior JSD (no Python if)."""
    beta = jnp.asarray(beta, _F32)
    return jnp.where(beta <= 0.0, fwd, jnp.where(beta >= 1.0, rev, mid))


# ----------------------------------------------------------------------------- log-probs


def token_logprobs(logits: ArrayLike, targets: ArrayLike) -> jax.Array:
    """log softmax(logits)[targets] in float32.

    logits [B, T, V], targets [B, T] int -> [B, T]; position t of the output scores
    ``targets[:, t]`` under ``logits[:, t]`` (no shifting here).  Computed as
    ``logit[target] - logsumexp(logits)`` so no second [B, T, V] array is built.
    """
    x = jnp.asarray(logits).astype(_F32)
    idx = jnp.asarray(targets).astype(jnp.int32)[..., None]
    picked = jnp.take_along_axis(x, idx, axis=-1)[..., 0]  # [B, T]
    return picked - jax.nn.logsumexp(x, axis=-1)


def shifted_token_logprobs(logits: ArrayLike, tokens: ArrayLike, shift: bool = True) -> jax.Array:
    """Per-token log-probs of ``tokens[:, 1:]`` under a causal LM's ``logits``.

    logits [B, T, V] (``logits[:, t]`` is the model's output after reading ``tokens[:, :t+1]``),
    tokens [B, T] -> [B, T-1].  Output column ``j`` always scores target token ``tokens[:, j+1]``,
    so a target mask is ``mask[:, 1:]`` in both modes.

    * ``shift=True`` (correct, default): ``logits[:, j]`` predicts ``tokens[:, j+1]`` -- the
      next-token objective.
    * ``shift=False`` -- **ABLATION ONLY, reproduces the study's off-policy defect**: the sequence is
      its own target, ``logits[:, j+1]`` is scored against ``tokens[:, j+1]``, i.e. the model sees
      the token it is asked to predict and learns to copy the current token.

    ``shift`` is a static Python bool (it changes which slices are taken).
    """
    logits = jnp.asarray(logits)
    tokens = jnp.asarray(tokens)
    pred = logits[:, :-1] if shift else logits[:, 1:]
    return token_logprobs(pred, tokens[:, 1:])


# ----------------------------------------------------------------------------- on-policy


def _discounted_advantage(d: jax.Array, m: jax.Array, discount: ArrayLike) -> jax.Array:
    """A_t = -sum_{s>=t, mask_s} gamma^{k(s)-k(t)} d_s, with k counting *masked* tokens.

    d = lp_old - lp_T with zeros at masked-out positions, m: float mask, both [B, T].
    Masked-out positions (teacher-seeded prefix, padding -- also padding in the middle of a row)
    are not steps of the student's trajectory: they contribute nothing and do not consume a
    discount factor.  gamma = 0 gives the per-token advantage A_t = -d_t.
    """
    gamma = jnp.asarray(discount, _F32)

    def step(carry, xs):  # carry: [B] discounted return of the tokens after t
        d_t, m_t = xs
        new = jnp.where(m_t > 0, d_t + gamma * carry, carry)
        return new, new

    _, ret = lax.scan(step, jnp.zeros(d.shape[:1], _F32), (d.T, m.T), reverse=True)
    return -ret.T * m


def sampled_reverse_kl(
    lp_student: ArrayLike,
    lp_behaviour: ArrayLike,
    lp_teacher: ArrayLike,
    mask: ArrayLike,
    discount: ArrayLike = 0.0,
    seq_weights: ArrayLike | None = None,
) -> jax.Array:
    """On-policy loss: importance-weighted sampled reverse KL (policy gradient with reward lp_T).

    lp_student [B, T]: log pi_theta(y_t | x, y_<t) (differentiated);
    lp_behaviour [B, T]: log pi_old(y_t | ...) recorded while sampling;
    lp_teacher [B, T]: log p_T(y_t | x~, y_<t) under the teacher's own prompt view;
    mask [B, T]: student-written completion tokens; discount: gamma (float or traced scalar).

    advantage ``A_t = -sum_{s>=t} gamma^(s-t) (lp_old_s - lp_T_s)`` over the row's masked tokens,
    under stop_gradient (gamma = 0: ``A_t = -(lp_old_t - lp_T_t)``); ratio
    ``r_t = exp(lp_theta_t - lp_old_t)``; loss ``-sum_t mask_t r_t A_t / N_tokens``.
    At r = 1 the gradient w.r.t. lp_student is ``-mask * A / N``, i.e. ``-mean(A_t grad log pi)``.

    ``seq_weights`` [B] (optional, no gradient) scales each row's terms: the loss becomes
    ``-sum_{b,t} w_b mask r A / N_tokens`` (``reward_weighted_gkd`` passes
    :func:`teacher_confidence_weights`); None is w = 1.
    """
    m = jnp.asarray(mask).astype(_F32)
    on = m > 0
    lp_s = jnp.asarray(lp_student).astype(_F32)
    lp_old = lax.stop_gradient(jnp.asarray(lp_behaviour).astype(_F32))
    lp_t = lax.stop_gradient(jnp.asarray(lp_teacher).astype(_F32))

    d = jnp.where(on, lp_old - lp_t, 0.0)  # [B, T] per-token sampled reverse KL
    if isinstance(discount, (int, float)) and discount == 0:
        adv = -d  # static fast path, identical to the scan with gamma = 0
    else:
        adv = _discounted_advantage(d, m, discount)
    adv = lax.stop_gradient(adv)
    log_ratio = jnp.where(on, lp_s - lp_old, 0.0)  # keeps exp() finite at padding
    ratio = jnp.exp(log_ratio)
    return -_weighted_masked_mean(ratio * adv, m, seq_weights)


def teacher_confidence_weights(lp_teacher: ArrayLike, mask: ArrayLike,
                               temperature: ArrayLike = 1.0) -> jax.Array:
    """Per-sequence weights [B] from the teacher's confidence, normalised within the batch.

    confidence ``c_b`` = mean teacher log-prob per student-written token of row b (the teacher's
    own prompt view); ``w = B * softmax(c / temperature)`` -- positive, mean 1 over the batch, so
    the loss keeps the scale of the unweighted one and only redistributes it towards completions
    the teacher finds likely. Rows without tokens get confidence 0 before the softmax (they add no
    loss terms anyway). Large temperature -> uniform weights (the plain on-policy loss).
    """
    conf = mean_token_logprob(lp_teacher, mask)  # [B]
    w = jax.nn.softmax(conf / jnp.asarray(temperature, _F32))
    return lax.stop_gradient(w * conf.shape[0])


def mean_token_logprob(lp: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Mean log-prob per masked token of each row: lp, mask [B, T] -> [B] (0 for a row without
    tokens). The teacher's confidence in a completion, independent of its length."""
    m = jnp.asarray(mask).astype(_F32)
    v = jnp.where(m > 0, jnp.asarray(lp).astype(_F32), 0.0)
    return jnp.sum(v * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)


def preference_pairs(scores: ArrayLike, num_tokens: ArrayLike, group: int
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each prompt's (best, worst) completion by score, for DPO.

    scores [N], num_tokens [N]: one row per completion, prompt-major in groups of ``group``
    consecutive rows (N = P * group); ``group`` is static. Returns (best [P], worst [P]) row
    indices into N and ``valid`` [P] bool. A row without tokens scores -inf (an empty answer is
    never preferred). ``valid`` is False for a tie -- the best score equals the worst, e.g.
    identical completions or all rows empty -- because such a pair states no preference; ties
    among the non-extreme rows do not matter. Among equal scores the first row wins (argmax /
    argmin), so the choice is deterministic.
    """
    s = jnp.where(jnp.asarray(num_tokens) > 0, jnp.asarray(scores, _F32), -jnp.inf)
    s = s.reshape(-1, group)  # [P, group]
    base = jnp.arange(s.shape[0]) * group
    best, worst = jnp.argmax(s, axis=-1), jnp.argmin(s, axis=-1)
    valid = jnp.max(s, axis=-1) > jnp.min(s, axis=-1)
    return base + best, base + worst, valid


def dpo_loss(lp_chosen: ArrayLike, lp_rejected: ArrayLike, ref_chosen: ArrayLike,
             ref_rejected: ArrayLike, mask_chosen: ArrayLike, mask_rejected: ArrayLike,
             beta: ArrayLike, valid: ArrayLike | None = None) -> jax.Array:
    """Direct preference optimisation on (chosen, rejected) completions of the same prompts.

    lp_* [B, T]: per-token log-probs under the policy (differentiated); ref_* [B, T]: under the
    reference policy (``dpo_teacher``: the LoRA-off base; no gradient); mask_* [B, T]:
    student-written tokens. With sequence log-probs ``S = sum_t mask lp``:
    ``loss = mean_b -log sigmoid(beta * ((S_c - R_c) - (S_r - R_r)))``, computed as softplus(-z).
    ``valid`` [B] (optional) keeps only those pairs: the mean runs over valid pairs, 0 when there
    is none (ties carry no preference, so they neither add log 2 nor dilute the others' gradient).
    """
    def seq(lp: ArrayLike, mask: ArrayLike) -> jax.Array:  # [B, T] -> [B]
        m = jnp.asarray(mask).astype(_F32)
        return jnp.sum(jnp.where(m > 0, jnp.asarray(lp).astype(_F32), 0.0) * m, axis=-1)

    ref_margin = lax.stop_gradient(seq(ref_chosen, mask_chosen) - seq(ref_rejected, mask_rejected))
    margin = seq(lp_chosen, mask_chosen) - seq(lp_rejected, mask_rejected)
    z = jnp.asarray(beta, _F32) * (margin - ref_margin)
    per_pair = jax.nn.softplus(-z)  # [B]
    if valid is None:
        return jnp.mean(per_pair)
    return _masked_mean(per_pair[None], jnp.asarray(valid)[None])


def sampled_reverse_kl_stats(
    lp_student: ArrayLike,
    lp_behaviour: ArrayLike,
    lp_teacher: ArrayLike,
    mask: ArrayLike,
) -> dict[str, jax.Array]:
    """Metrics for the on-policy loss (no gradient), all float32 scalars over masked tokens.

    * ``sampled_reverse_kl``: mean(lp_old - lp_T), the sampled estimate of KL(pi_old || p_T);
    * ``teacher_score``: mean(lp_T), the teacher's mean log-prob per student token;
    * ``ratio_mean`` / ``ratio_max`` / ``ratio_min``: importance ratio exp(lp_theta - lp_old)
      (1.0 when there are no tokens);
    * ``num_tokens``: sum(mask).
    """
    m = jnp.asarray(mask).astype(_F32)
    on = m > 0
    lp_s = lax.stop_gradient(jnp.asarray(lp_student).astype(_F32))
    lp_old = lax.stop_gradient(jnp.asarray(lp_behaviour).astype(_F32))
    lp_t = lax.stop_gradient(jnp.asarray(lp_teacher).astype(_F32))
    ratio = jnp.exp(jnp.where(on, lp_s - lp_old, 0.0))
    n = jnp.sum(m)
    any_tok = n > 0
    return {
        "sampled_reverse_kl": _masked_mean(lp_old - lp_t, m),
        "teacher_score": _masked_mean(lp_t, m),
        "ratio_mean": jnp.where(any_tok, _masked_mean(ratio, m), 1.0),
        "ratio_max": jnp.where(any_tok, jnp.max(jnp.where(on, ratio, -jnp.inf)), 1.0),
        "ratio_min": jnp.where(any_tok, jnp.min(jnp.where(on, ratio, jnp.inf)), 1.0),
        "num_tokens": n,
    }


# ----------------------------------------------------------------------------- full-vocab


def _jsd_per_position(logp_s: jax.Array, logp_t: jax.Array, beta: ArrayLike) -> jax.Array:
    """Generalized JSD(beta) per position from student/teacher log-probs [..., V] -> [...]."""
    fwd = _kl_per_position(logp_t, logp_s)  # KL(T || S)
    rev = _kl_per_position(logp_s, logp_t)  # KL(S || T)
    b, log_b, log_1mb = _clamped_log_betas(beta)
    log_m = jnp.logaddexp(log_b + logp_t, log_1mb + logp_s)  # log(b T + (1-b) S)
    mid = b * _kl_per_position(logp_t, log_m) + (1.0 - b) * _kl_per_position(logp_s, log_m)
    return _select_jsd(beta, fwd, rev, mid)


def generalized_jsd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    mask: ArrayLike,
    beta: ArrayLike,
    temperature: ArrayLike = 1.0,
) -> jax.Array:
    """Generalized Jensen-Shannon divergence JSD(beta) per position, token mean over ``mask``.

    student_logits [B, T, V], teacher_logits [B, T, V] (finite), mask [B, T], beta scalar
    (float or traced).  With S = softmax(student/temperature), T = softmax(teacher/temperature):

    * beta = 0: forward KL(T || S);
    * beta = 1: reverse KL(S || T);
    * 0 < beta < 1: ``beta KL(T || M) + (1 - beta) KL(S || M)``, ``M = beta T + (1 - beta) S``
      (log M via logaddexp).

    The case is chosen with ``jnp.where`` (beta may be traced); log(beta) and log(1 - beta) are
    clamped so gradients stay NaN-free at the endpoints.  Materialises [B, T, V]; use
    :func:`generalized_jsd_chunked` for large vocabularies.
    """
    logp_s = _log_softmax(student_logits, temperature)
    logp_t = _log_softmax(teacher_logits, temperature)
    return _masked_mean(_jsd_per_position(logp_s, logp_t, beta), mask)


def _chunk_logits(
    hidden: jax.Array, unembed: jax.Array, start: jax.Array, chunk: int, temperature: jax.Array,
    softcap: float | None = None,
) -> jax.Array:
    """hidden [B, T, D] @ unembed[:, start:start+chunk] -> [B, T, chunk] float32 logits, soft-capped
    as cap * tanh(x / cap) when the model caps its logits (Gemma 2), then divided by temperature."""
    w = lax.dynamic_slice_in_dim(unembed, start, chunk, axis=1)  # [D, chunk]
    x = jnp.einsum("btd,dc->btc", hidden, w, preferred_element_type=_F32).astype(_F32)
    if softcap is not None:
        x = softcap * jnp.tanh(x / softcap)
    return x / temperature


def generalized_jsd_chunked(
    student_hidden: ArrayLike,
    student_unembed: ArrayLike,
    teacher_hidden: ArrayLike,
    teacher_unembed: ArrayLike,
    mask: ArrayLike,
    beta: ArrayLike,
    chunk_size: int,
    temperature: ArrayLike = 1.0,
    seq_weights: ArrayLike | None = None,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
) -> jax.Array:
    """:func:`generalized_jsd` of ``student_hidden @ student_unembed`` vs ``teacher_hidden @
    teacher_unembed`` without materialising ``[B, T, V]`` logits (forward or backward).
    ``student_softcap`` / ``teacher_softcap``: each model's final-logit cap (Gemma 2), or None.

    student_hidden [B, T, Ds], student_unembed [Ds, V], teacher_hidden [B, T, Dt],
    teacher_unembed [Dt, V], mask [B, T], beta scalar (float or traced), chunk_size static int;
    ``seq_weights`` [B] (optional, no gradient) scales each row's terms as in
    :func:`sampled_reverse_kl` (``reward_weighted_gkd`` with ``loss.on_policy="jsd"``).

    The vocabulary is processed in ``ceil(V / chunk_size)`` chunks with ``lax.scan``:

    1. pass 1: online per-token logsumexp of both models (running max under stop_gradient,
       which leaves the value and gradient exact);
    2. pass 2: per-token sums of forward KL, reverse KL and the interior JSD terms.

    Each scan body is wrapped in ``jax.checkpoint`` so the backward pass recomputes a chunk's
    logits instead of storing them: peak extra memory is O(B * T * chunk_size).  Logits are
    ``hidden @ unembed`` with float32 accumulation.  When V is not divisible by chunk_size the
    last chunk is read from the end of the matrix and the columns it shares with the previous
    chunk are treated as ``-inf`` logits, i.e. they contribute exactly 0 (no padded copy of the
    unembedding is made).
    """
    h_s = jnp.asarray(student_hidden)
    h_t = jnp.asarray(teacher_hidden)
    w_s = jnp.asarray(student_unembed)
    w_t = jnp.asarray(teacher_unembed)
    vocab = w_s.shape[-1]
    if w_t.shape[-1] != vocab:
        raise ValueError(
            f"generalized_jsd_chunked: student_unembed has vocab {vocab} but teacher_unembed has "
            f"{w_t.shape[-1]}; distillation needs a shared tokenizer (same V)."
        )
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"generalized_jsd_chunked: chunk_size must be a positive int, got {chunk_size!r}.")
    chunk = int(min(chunk_size, vocab))
    num_chunks = -(-vocab // chunk)
    temp = jnp.asarray(temperature, _F32)
    bt = h_s.shape[:2]

    def chunk_view(i):
        """Start column of chunk i (clamped so the slice stays in range) and its valid columns."""
        nominal = i * chunk
        start = jnp.minimum(nominal, vocab - chunk)
        cols = start + jnp.arange(chunk)
        return start, cols >= nominal  # overlap with the previous chunk is excluded

    # ---- pass 1: per-token logsumexp of both models, online over chunks.
    @jax.checkpoint
    def lse_body(carry, i):
        (m_s, z_s), (m_t, z_t) = carry
        start, valid = chunk_view(i)
        out = []
        for h, w, cap, m, z in ((h_s, w_s, student_softcap, m_s, z_s),
                                (h_t, w_t, teacher_softcap, m_t, z_t)):
            x = jnp.where(valid, _chunk_logits(h, w, start, chunk, temp, cap), -jnp.inf)
            m_new = lax.stop_gradient(jnp.maximum(m, jnp.max(x, axis=-1)))
            z = z * lax.stop_gradient(jnp.exp(m - m_new)) + jnp.sum(jnp.exp(x - m_new[..., None]), axis=-1)
            out.append((m_new, z))
        return tuple(out), None

    init_mz = (jnp.full(bt, -jnp.inf, _F32), jnp.zeros(bt, _F32))
    ((m_s, z_s), (m_t, z_t)), _ = lax.scan(lse_body, (init_mz, init_mz), jnp.arange(num_chunks))
    lse_s = m_s + jnp.log(z_s)  # [B, T]
    lse_t = m_t + jnp.log(z_t)

    # ---- pass 2: divergence sums.
    b, log_b, log_1mb = _clamped_log_betas(beta)

    @jax.checkpoint
    def div_body(carry, i):
        fwd, rev, kl_tm, kl_sm = carry
        start, valid = chunk_view(i)
        # Invalid (overlap) columns get log-prob 0 *before* any arithmetic and are zeroed after,
        # so no inf/nan appears in the value or the backward pass.
        logp_s = jnp.where(valid, _chunk_logits(h_s, w_s, start, chunk, temp, student_softcap)
                           - lse_s[..., None], 0.0)
        logp_t = jnp.where(valid, _chunk_logits(h_t, w_t, start, chunk, temp, teacher_softcap)
                           - lse_t[..., None], 0.0)
        p_s = jnp.where(valid, jnp.exp(logp_s), 0.0)
        p_t = jnp.where(valid, jnp.exp(logp_t), 0.0)
        log_m = jnp.logaddexp(log_b + logp_t, log_1mb + logp_s)
        fwd = fwd + jnp.sum(p_t * (logp_t - logp_s), axis=-1)
        rev = rev + jnp.sum(p_s * (logp_s - logp_t), axis=-1)
        kl_tm = kl_tm + jnp.sum(p_t * (logp_t - log_m), axis=-1)
        kl_sm = kl_sm + jnp.sum(p_s * (logp_s - log_m), axis=-1)
        return (fwd, rev, kl_tm, kl_sm), None

    zeros = jnp.zeros(bt, _F32)
    (fwd, rev, kl_tm, kl_sm), _ = lax.scan(div_body, (zeros,) * 4, jnp.arange(num_chunks))
    mid = b * kl_tm + (1.0 - b) * kl_sm
    return _weighted_masked_mean(_select_jsd(beta, fwd, rev, mid), mask, seq_weights)


# ----------------------------------------------------------------------------- off-policy / anchor


def off_policy_nll(
    student_logits: ArrayLike, tokens: ArrayLike, mask: ArrayLike, shift: bool = True
) -> jax.Array:
    """Mean NLL of teacher-written target tokens under the student (off-policy distillation).

    student_logits [B, T, V] from running the student on ``tokens`` [B, T] (student prompt view
    followed by the teacher's completion); mask [B, T] marks *target* positions of ``tokens``
    (``mask[:, t] = 1`` iff token t is a completion token to be predicted).

    * ``shift=True`` (correct, default): token t is predicted by ``logits[:, t-1]``.
    * ``shift=False`` -- **ABLATION ONLY, the study's defect** ("sequence as its own target"):
      token t is scored under ``logits[:, t]``; the model learns to copy the current token.

    Token 0 has no predecessor, so ``mask[:, 0]`` is ignored in both modes (it is always a prompt
    token when prompts are non-empty); both modes score exactly the same target set.
    """
    lp = shifted_token_logprobs(student_logits, tokens, shift=shift)  # [B, T-1]
    return -_masked_mean(lp, jnp.asarray(mask)[:, 1:])


def forward_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, mask: ArrayLike, temperature: ArrayLike = 1.0
) -> jax.Array:
    """Full-vocab forward KL(T || S) per position, token mean (= generalized_jsd at beta=0).

    student_logits, teacher_logits [B, T, V] aligned position by position, mask [B, T].  The
    off-policy "forward KL to the teacher's full distribution" option.
    """
    logp_s = _log_softmax(student_logits, temperature)
    logp_t = _log_softmax(teacher_logits, temperature)
    return _masked_mean(_kl_per_position(logp_t, logp_s), mask)


def kl_anchor(student_logits: ArrayLike, ref_logits: ArrayLike, mask: ArrayLike) -> jax.Array:
    """KL(pi_theta || pi_0) per position over the full vocab, token mean over mask.

    student_logits, ref_logits [B, T, V] (ref = student with LoRA off, treated as constant via
    stop_gradient), mask [B, T].  This is :func:`generalized_jsd` at beta=1 (same per-position
    KL kernel, without computing the unused beta branches); the caller multiplies by the anchor
    beta.
    """
    logp_s = _log_softmax(student_logits)
    logp_0 = lax.stop_gradient(_log_softmax(ref_logits))
    return _masked_mean(_kl_per_position(logp_s, logp_0), mask)
