"""cliffdistill.losses against independent float64 NumPy computations.

The oracles below are written with explicit loops / plain NumPy from the definitions in
DESIGN §2, not from the JAX code.  JAX runs in float32 (the losses cast to float32 by design),
so tolerances are 1e-5 on O(1) quantities.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliffdistill.engine import losses

TOL = dict(rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- NumPy oracles


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kl(logp, logq):
    """KL(p || q) over the last axis, float64."""
    return (np.exp(logp) * (logp - logq)).sum(-1)


def np_masked_mean(v, mask):
    mask = np.asarray(mask, np.float64)
    return float((v * mask).sum() / max(mask.sum(), 1.0))


def np_jsd(s_logits, t_logits, mask, beta, temperature=1.0, seq_weights=None):
    ls = np_log_softmax(np.asarray(s_logits, np.float64) / temperature)
    lt = np_log_softmax(np.asarray(t_logits, np.float64) / temperature)
    if beta == 0:
        per = np_kl(lt, ls)
    elif beta == 1:
        per = np_kl(ls, lt)
    else:
        s, t = np.exp(ls), np.exp(lt)
        mix = beta * t + (1 - beta) * s
        per = beta * (t * (np.log(t) - np.log(mix))).sum(-1) + (1 - beta) * (
            s * (np.log(s) - np.log(mix))
        ).sum(-1)
    if seq_weights is not None:  # rows scaled, denominator still the token count
        per = per * np.asarray(seq_weights, np.float64)[:, None]
    return np_masked_mean(per, mask)


def np_advantage(lp_old, lp_t, mask, gamma):
    """A_t = -sum over later *masked* tokens s of gamma^(#masked tokens strictly between) d_s."""
    B, T = lp_old.shape
    adv = np.zeros((B, T))
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        for i, t in enumerate(idx):
            total = 0.0
            for j, s in enumerate(idx[i:]):
                total += gamma**j * (lp_old[b, s] - lp_t[b, s])
            adv[b, t] = -total
    return adv


def np_sampled_reverse_kl(lp_s, lp_old, lp_t, mask, gamma=0.0):
    adv = np_advantage(lp_old, lp_t, mask, gamma)
    ratio = np.where(mask, np.exp(np.where(mask, lp_s - lp_old, 0.0)), 0.0)
    n = max(mask.sum(), 1)
    return float(-(mask * ratio * adv).sum() / n), adv


# ----------------------------------------------------------------------------- fixtures


def _logprobs(rng, shape):
    return -rng.gamma(2.0, 1.0, size=shape).astype(np.float32)  # negative log-probs


def _rl_inputs(seed=0, B=3, T=9):
    rng = np.random.default_rng(seed)
    lp_old = _logprobs(rng, (B, T))
    lp_s = (lp_old + 0.3 * rng.standard_normal((B, T))).astype(np.float32)
    lp_t = _logprobs(rng, (B, T))
    mask = np.ones((B, T), bool)
    mask[0, :2] = False  # teacher-seeded prefix
    mask[0, 4] = False  # a hole in the middle
    mask[0, -1] = False  # right padding
    mask[1, 5:] = False  # right padding
    mask[2, 3:5] = False  # hole in the middle
    # garbage at masked positions must not reach the loss
    lp_s[~mask] = -np.inf
    lp_t[1, 6] = np.nan
    return lp_s, lp_old, lp_t, mask


# ----------------------------------------------------------------------------- on-policy


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 1.0])
def test_sampled_reverse_kl_matches_numpy(gamma):
    lp_s, lp_old, lp_t, mask = _rl_inputs()
    want, _ = np_sampled_reverse_kl(lp_s, lp_old, lp_t, mask, gamma)
    got = losses.sampled_reverse_kl(lp_s, lp_old, lp_t, mask, discount=gamma)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), want, **TOL)
    # traced discount through jit gives the same value
    jitted = jax.jit(losses.sampled_reverse_kl)(lp_s, lp_old, lp_t, mask, jnp.float32(gamma))
    np.testing.assert_allclose(float(jitted), want, **TOL)


def test_discount_changes_the_loss():
    lp_s, lp_old, lp_t, mask = _rl_inputs(seed=3)
    a = float(losses.sampled_reverse_kl(lp_s, lp_old, lp_t, mask, discount=0.0))
    b = float(losses.sampled_reverse_kl(lp_s, lp_old, lp_t, mask, discount=0.9))
    assert abs(a - b) > 1e-3


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_on_policy_gradient_at_ratio_one(gamma):
    """At lp_student == lp_behaviour, d loss / d lp_student = -mask * A / N."""
    _, lp_old, lp_t, mask = _rl_inputs(seed=1)
    lp_t = np.where(mask, lp_t, 0.0).astype(np.float32)
    _, adv = np_sampled_reverse_kl(lp_old, lp_old, lp_t, mask, gamma)
    want = -mask.astype(np.float64) * adv / mask.sum()
    grad = jax.grad(losses.sampled_reverse_kl, argnums=(0, 1, 2))(
        jnp.asarray(lp_old), jnp.asarray(lp_old), jnp.asarray(lp_t), mask, gamma
    )
    np.testing.assert_allclose(np.asarray(grad[0]), want, **TOL)
    # advantage is under stop_gradient: no gradient to behaviour or teacher log-probs
    assert np.all(np.asarray(grad[1]) == 0) and np.all(np.asarray(grad[2]) == 0)


def test_sampled_reverse_kl_empty_mask_and_bf16():
    lp_s, lp_old, lp_t, mask = _rl_inputs()
    zero = losses.sampled_reverse_kl(lp_s, lp_old, lp_t, np.zeros_like(mask))
    assert float(zero) == 0.0
    lp_s = np.where(mask, lp_s, 0.0)
    lp_t = np.where(mask, lp_t, 0.0)
    out = losses.sampled_reverse_kl(*(jnp.asarray(x, jnp.bfloat16) for x in (lp_s, lp_old, lp_t)), mask)
    assert out.dtype == jnp.float32


def test_sampled_reverse_kl_stats():
    lp_s, lp_old, lp_t, mask = _rl_inputs(seed=2)
    st = losses.sampled_reverse_kl_stats(lp_s, lp_old, lp_t, mask)
    m = mask
    ratio = np.exp(lp_s[m].astype(np.float64) - lp_old[m])
    np.testing.assert_allclose(float(st["sampled_reverse_kl"]), np.mean(lp_old[m] - lp_t[m].astype(np.float64)), **TOL)
    np.testing.assert_allclose(float(st["teacher_score"]), np.mean(lp_t[m].astype(np.float64)), **TOL)
    np.testing.assert_allclose(float(st["ratio_mean"]), ratio.mean(), **TOL)
    np.testing.assert_allclose(float(st["ratio_max"]), ratio.max(), **TOL)
    np.testing.assert_allclose(float(st["ratio_min"]), ratio.min(), **TOL)
    assert float(st["num_tokens"]) == m.sum()


# ----------------------------------------------------------------------------- generalized JSD


def _logits(seed, B=2, T=5, V=37, scale=2.0):
    rng = np.random.default_rng(seed)
    s = (scale * rng.standard_normal((B, T, V))).astype(np.float32)
    t = (scale * rng.standard_normal((B, T, V))).astype(np.float32)
    mask = rng.random((B, T)) > 0.3
    mask[0, 0] = True
    return s, t, mask


BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)
_jsd_jit = jax.jit(losses.generalized_jsd)


def test_generalized_jsd_matches_numpy():
    s, t, mask = _logits(0)
    for beta in BETAS:
        want = np_jsd(s, t, mask, beta)
        got = _jsd_jit(s, t, mask, jnp.float32(beta))  # traced beta: one compile for all
        assert got.dtype == jnp.float32 and got.shape == ()
        np.testing.assert_allclose(float(got), want, **TOL, err_msg=f"beta={beta}")
    # a plain Python float beta (not traced) works too
    np.testing.assert_allclose(float(losses.generalized_jsd(s, t, mask, 0.1)), np_jsd(s, t, mask, 0.1), **TOL)


def test_generalized_jsd_endpoints_are_kl_and_temperature():
    s, t, mask = _logits(1)
    ls, lt = np_log_softmax(s), np_log_softmax(t)
    fwd = np_masked_mean(np_kl(lt, ls), mask)  # KL(T || S)
    rev = np_masked_mean(np_kl(ls, lt), mask)  # KL(S || T)
    assert abs(fwd - rev) > 1e-2  # the two endpoints are distinguishable on this data
    np.testing.assert_allclose(float(losses.generalized_jsd(s, t, mask, 0.0)), fwd, **TOL)
    np.testing.assert_allclose(float(losses.generalized_jsd(s, t, mask, 1.0)), rev, **TOL)
    np.testing.assert_allclose(float(losses.forward_kl(s, t, mask)), fwd, **TOL)
    np.testing.assert_allclose(
        float(losses.generalized_jsd(s, t, mask, 0.5, temperature=2.0)), np_jsd(s, t, mask, 0.5, 2.0), **TOL
    )


def test_generalized_jsd_properties():
    s, t, mask = _logits(2)
    for beta in (0.1, 0.5, 0.9):
        v = float(losses.generalized_jsd(s, t, mask, beta))
        assert v > 0
        # mixture divergence is bounded by the entropy-like bound  -log(beta), -log(1 - beta) terms
        assert v <= -(beta * np.log(beta) + (1 - beta) * np.log(1 - beta)) + 1e-6
        # swapping the roles of S and T and beta <-> 1 - beta gives the same value
        np.testing.assert_allclose(v, float(losses.generalized_jsd(t, s, mask, 1 - beta)), **TOL)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert abs(float(losses.generalized_jsd(s, s, mask, beta))) < 1e-6


def test_generalized_jsd_grad_is_finite_with_traced_beta():
    s, t, mask = _logits(3)
    grad = jax.jit(jax.grad(losses.generalized_jsd, argnums=(0, 1, 3)))
    for beta in BETAS:
        g = grad(s, t, mask, jnp.float32(beta))
        for x in g:
            assert np.all(np.isfinite(np.asarray(x))), f"beta={beta}"
        assert np.abs(np.asarray(g[0])).max() > 0


# ----------------------------------------------------------------------------- chunked JSD


def _hidden(seed, B=3, T=4, Ds=6, Dt=7, V=37):
    rng = np.random.default_rng(seed)
    hs = rng.standard_normal((B, T, Ds)).astype(np.float32)
    ws = (rng.standard_normal((Ds, V)) / np.sqrt(Ds) * 2).astype(np.float32)
    ht = rng.standard_normal((B, T, Dt)).astype(np.float32)
    wt = (rng.standard_normal((Dt, V)) / np.sqrt(Dt) * 2).astype(np.float32)
    mask = rng.random((B, T)) > 0.25
    mask[0, 0] = True
    return hs, ws, ht, wt, mask


@pytest.mark.parametrize("chunk", [8, 64])  # V=37 = 4*8 + 5: last chunk partial; 64 > V: one chunk
def test_chunked_jsd_matches_dense_value_and_grad(chunk):
    hs, ws, ht, wt, mask = _hidden(0)

    def dense(hs, ws, beta):
        return losses.generalized_jsd(hs @ ws, ht @ wt, mask, beta)

    def chunked(hs, ws, beta):
        return losses.generalized_jsd_chunked(hs, ws, ht, wt, mask, beta, chunk_size=chunk)

    dense_vg = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))
    chunked_vg = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))
    for beta in BETAS:
        b = jnp.float32(beta)
        v_d, g_d = dense_vg(hs, ws, b)
        v_c, g_c = chunked_vg(hs, ws, b)
        msg = f"beta={beta} chunk={chunk}"
        np.testing.assert_allclose(float(v_c), float(v_d), **TOL, err_msg=msg)
        np.testing.assert_allclose(float(v_c), np_jsd(hs @ ws, ht @ wt, mask, beta), **TOL, err_msg=msg)
        np.testing.assert_allclose(np.asarray(g_c[0]), np.asarray(g_d[0]), **TOL, err_msg=msg)  # d/d hidden
        np.testing.assert_allclose(np.asarray(g_c[1]), np.asarray(g_d[1]), **TOL, err_msg=msg)  # d/d unembed
        assert np.abs(np.asarray(g_c[0])).max() > 0


def test_chunked_jsd_with_sequence_weights_matches_numpy():
    hs, ws, ht, wt, mask = _hidden(4)
    w = np.array([0.5, 2.0, 0.5], np.float32)
    for beta in BETAS:
        got = losses.generalized_jsd_chunked(hs, ws, ht, wt, mask, beta, chunk_size=8,
                                             seq_weights=w)
        want = np_jsd(hs @ ws, ht @ wt, mask, beta, seq_weights=w)
        np.testing.assert_allclose(float(got), want, **TOL, err_msg=f"beta={beta}")
    # the weights are constants: no gradient flows into them
    g = jax.grad(lambda w_: losses.generalized_jsd_chunked(hs, ws, ht, wt, mask, 0.5, 8,
                                                           seq_weights=w_))(w)
    assert not np.any(np.asarray(g))


def _all_avals(jaxpr):
    """Every intermediate shape in a (closed) jaxpr, recursing into scan/remat/pjit bodies."""
    inner = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in inner.eqns:
        for v in eqn.outvars:
            yield tuple(getattr(v.aval, "shape", ()))
        for p in eqn.params.values():
            subs = p if isinstance(p, (list, tuple)) else [p]
            for sub in subs:
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _all_avals(sub)


def test_chunked_jsd_never_materialises_full_logits():
    """No intermediate of the forward+backward program holds >= B*T*V elements with (B, T) axes.

    Without jax.checkpoint on the scan bodies, the backward pass stores per-chunk logits stacked
    over chunks ([n_chunks, B, T, chunk] = 5*3*4*8 = 480 >= 3*4*37 = 444) and this test fails.
    """
    B, T, V, chunk = 3, 4, 37, 8
    hs, ws, ht, wt, mask = _hidden(1, B=B, T=T, V=V)

    def f(hs):
        return losses.generalized_jsd_chunked(hs, ws, ht, wt, mask, 0.5, chunk_size=chunk)

    jaxpr = jax.make_jaxpr(jax.grad(f))(hs)
    big = [
        s for s in _all_avals(jaxpr) if len(s) >= 3 and B in s and T in s and int(np.prod(s)) >= B * T * V
    ]
    assert not big, f"[B,T,V]-sized intermediates found: {big}"
    # sanity: the dense version does have them, so the detector works
    dense = jax.make_jaxpr(jax.grad(lambda h: losses.generalized_jsd(h @ ws, ht @ wt, mask, 0.5)))(hs)
    assert any(s == (B, T, V) for s in _all_avals(dense))


def test_chunked_jsd_bf16_inputs_and_errors():
    hs, ws, ht, wt, mask = _hidden(2)
    bf = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
    out = losses.generalized_jsd_chunked(bf(hs), bf(ws), bf(ht), bf(wt), mask, 0.5, chunk_size=16)
    assert out.dtype == jnp.float32 and np.isfinite(float(out))
    with pytest.raises(ValueError, match="vocab"):
        losses.generalized_jsd_chunked(hs, ws, ht, wt[:, :-1], mask, 0.5, chunk_size=8)
    with pytest.raises(ValueError, match="chunk_size"):
        losses.generalized_jsd_chunked(hs, ws, ht, wt, mask, 0.5, chunk_size=0)


# ----------------------------------------------------------------------------- off-policy / anchor


def np_off_policy_nll(logits, tokens, mask, shift):
    lp = np_log_softmax(logits)
    B, T = tokens.shape
    total, n = 0.0, 0
    for b in range(B):
        for t in range(1, T):
            if mask[b, t]:
                src = t - 1 if shift else t
                total -= lp[b, src, tokens[b, t]]
                n += 1
    return total / max(n, 1)


@pytest.mark.parametrize("shift", [True, False])
def test_off_policy_nll_matches_numpy(shift):
    rng = np.random.default_rng(4)
    B, T, V = 3, 8, 11
    logits = (2 * rng.standard_normal((B, T, V))).astype(np.float32)
    tokens = rng.integers(0, V, (B, T))
    mask = np.zeros((B, T), bool)
    mask[0, 3:] = True
    mask[1, 2:6] = True
    mask[2, 4:7] = True
    want = np_off_policy_nll(logits, tokens, mask, shift)
    got = jax.jit(losses.off_policy_nll, static_argnames="shift")(logits, tokens, mask, shift=shift)
    np.testing.assert_allclose(float(got), want, **TOL)


def test_shift_ablation_rewards_copying():
    """A model that copies its current input token is perfect under shift=False (the study's
    defect) but not under the correct shifted objective."""
    rng = np.random.default_rng(5)
    B, T, V = 2, 10, 13
    tokens = rng.integers(0, V, (B, T))
    copy_logits = 20.0 * jax.nn.one_hot(tokens, V)  # logits at t put all mass on token t
    mask = np.ones((B, T), bool)
    assert float(losses.off_policy_nll(copy_logits, tokens, mask, shift=False)) < 1e-3
    assert float(losses.off_policy_nll(copy_logits, tokens, mask, shift=True)) > 1.0


def test_token_logprobs_and_shifted():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((2, 6, 9)).astype(np.float32)
    tokens = rng.integers(0, 9, (2, 6))
    lp = np_log_softmax(logits)
    want = np.take_along_axis(lp, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(jax.jit(losses.token_logprobs)(logits, tokens)), want, **TOL)
    shifted = jax.jit(losses.shifted_token_logprobs, static_argnames="shift")
    sh = np.asarray(shifted(logits, tokens))
    assert sh.shape == (2, 5)
    np.testing.assert_allclose(sh, np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0], **TOL)
    ns = np.asarray(shifted(logits, tokens, shift=False))
    np.testing.assert_allclose(ns, want[:, 1:], **TOL)


def test_kl_anchor_matches_numpy_and_jsd_beta_one():
    s, r, mask = _logits(7)
    want = np_masked_mean(np_kl(np_log_softmax(s), np_log_softmax(r)), mask)  # KL(pi_theta || pi_0)
    anchor_vg = jax.jit(jax.value_and_grad(losses.kl_anchor))
    got, g_anchor = anchor_vg(s, r, mask)
    np.testing.assert_allclose(float(got), want, **TOL)
    v_jsd, g_jsd = jax.jit(jax.value_and_grad(losses.generalized_jsd))(s, r, mask, jnp.float32(1.0))
    np.testing.assert_allclose(float(got), float(v_jsd), **TOL)
    np.testing.assert_allclose(np.asarray(g_anchor), np.asarray(g_jsd), **TOL)
    assert abs(float(anchor_vg(s, s, mask)[0])) < 1e-6


# ----------------------------------------------------------------------------- alternative objectives


def np_confidence_weights(lp_t, mask, temperature):
    B = lp_t.shape[0]
    conf = np.array([np.mean(lp_t[b][mask[b]]) if mask[b].any() else 0.0 for b in range(B)],
                    dtype=np.float64)
    e = np.exp((conf - conf.max()) / temperature)
    return B * e / e.sum()


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_reward_weighted_sampled_reverse_kl_matches_numpy(gamma):
    lp_s, lp_old, lp_t, mask = _rl_inputs()
    lp_t = np.where(mask, lp_t, 0.0).astype(np.float32)  # the weights read only masked tokens
    w_np = np_confidence_weights(lp_t, mask, 0.7)
    w = losses.teacher_confidence_weights(lp_t, mask, 0.7)
    np.testing.assert_allclose(np.asarray(w), w_np, rtol=1e-5)
    assert abs(float(np.mean(w)) - 1.0) < 1e-6  # normalised within the batch
    adv = np_advantage(lp_old, lp_t, mask, gamma)
    ratio = np.where(mask, np.exp(np.where(mask, lp_s - lp_old, 0.0)), 0.0)
    want = -(w_np[:, None] * mask * ratio * adv).sum() / mask.sum()
    got = losses.sampled_reverse_kl(lp_s, lp_old, lp_t, mask, discount=gamma, seq_weights=w)
    np.testing.assert_allclose(float(got), want, **TOL)
    # uniform weights are the plain loss
    ones = losses.sampled_reverse_kl(lp_s, lp_old, lp_t, mask, discount=gamma,
                                     seq_weights=np.ones(3, np.float32))
    plain = losses.sampled_reverse_kl(lp_s, lp_old, lp_t, mask, discount=gamma)
    np.testing.assert_allclose(float(ones), float(plain), **TOL)


def test_confidence_weights_favour_the_teachers_likely_rows():
    lp_t = np.array([[-0.1, -0.2], [-3.0, -2.0], [-1.0, -1.0]], np.float32)
    w = np.asarray(losses.teacher_confidence_weights(lp_t, np.ones_like(lp_t, bool)))
    assert w[0] > w[2] > w[1]
    flat = np.asarray(losses.teacher_confidence_weights(lp_t, np.ones_like(lp_t, bool), 1e6))
    np.testing.assert_allclose(flat, 1.0, rtol=1e-4)


def np_dpo(lp_c, lp_r, ref_c, ref_r, m_c, m_r, beta):
    s = lambda lp, m: np.where(m, lp, 0.0).sum(-1)  # noqa: E731
    z = beta * ((s(lp_c, m_c) - s(ref_c, m_c)) - (s(lp_r, m_r) - s(ref_r, m_r)))
    return float(np.mean(np.log1p(np.exp(-z)))), z


def test_dpo_loss_matches_numpy_and_its_gradient():
    rng = np.random.default_rng(3)
    B, T = 4, 6
    lp_c, lp_r, ref_c, ref_r = (_logprobs(rng, (B, T)) for _ in range(4))
    m_c = rng.random((B, T)) < 0.8
    m_r = rng.random((B, T)) < 0.8
    lp_c[~m_c] = -np.inf  # padding garbage is ignored
    for beta in (0.1, 1.0):
        want, z = np_dpo(lp_c, lp_r, ref_c, ref_r, m_c, m_r, beta)
        got = losses.dpo_loss(lp_c, lp_r, ref_c, ref_r, m_c, m_r, beta)
        np.testing.assert_allclose(float(got), want, **TOL)
    # d loss / d lp_chosen[b, t] = -beta * sigmoid(-z_b) * m_c / B (and + for rejected)
    beta = 0.5
    _, z = np_dpo(np.where(m_c, lp_c, 0), lp_r, ref_c, ref_r, m_c, m_r, beta)
    g_c, g_r = jax.grad(losses.dpo_loss, argnums=(0, 1))(
        np.where(m_c, lp_c, 0).astype(np.float32), lp_r, ref_c, ref_r, m_c, m_r, beta)
    sig = 1 / (1 + np.exp(z))
    np.testing.assert_allclose(np.asarray(g_c), -beta * sig[:, None] * m_c / B, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_r), beta * sig[:, None] * m_r / B, rtol=1e-4, atol=1e-7)
    # the reference gets no gradient
    g_ref = jax.grad(losses.dpo_loss, argnums=2)(lp_c, lp_r, ref_c, ref_r, m_c, m_r, beta)
    assert not np.any(np.asarray(g_ref))


def test_dpo_loss_averages_over_valid_pairs_only():
    rng = np.random.default_rng(5)
    B, T = 5, 4
    lp_c, lp_r, ref_c, ref_r = (_logprobs(rng, (B, T)) for _ in range(4))
    m = np.ones((B, T), bool)
    valid = np.array([True, False, True, True, False])
    _, z = np_dpo(lp_c, lp_r, ref_c, ref_r, m, m, 0.3)
    want = float(np.log1p(np.exp(-z))[valid].mean())
    got = losses.dpo_loss(lp_c, lp_r, ref_c, ref_r, m, m, 0.3, valid=valid)
    np.testing.assert_allclose(float(got), want, **TOL)
    # the left-out pairs get no gradient; no valid pair at all: loss 0, gradient 0
    g = np.asarray(jax.grad(losses.dpo_loss)(lp_c, lp_r, ref_c, ref_r, m, m, 0.3, valid))
    assert not np.any(g[~valid]) and np.all(g[valid] != 0)
    none = np.zeros(B, bool)
    assert float(losses.dpo_loss(lp_c, lp_r, ref_c, ref_r, m, m, 0.3, valid=none)) == 0.0
    assert not np.any(np.asarray(jax.grad(losses.dpo_loss)(lp_c, lp_r, ref_c, ref_r, m, m, 0.3,
                                                           none)))


def np_preference_pairs(lp_t, mask, group):
    """Loops: per group of rows, the first row with the highest / lowest mean teacher log-prob
    per token (an empty row scores -inf); a pair is valid when those scores differ."""
    scores = [np.mean(lp_t[i][mask[i]]) if mask[i].any() else -np.inf for i in range(len(lp_t))]
    best, worst, valid = [], [], []
    for start in range(0, len(scores), group):
        g = scores[start:start + group]
        hi, lo = max(g), min(g)
        best.append(start + g.index(hi))
        worst.append(start + g.index(lo))
        valid.append(hi > lo)
    return np.array(best), np.array(worst), np.array(valid)


def _pairs(lp_t, mask, group):
    scores = losses.mean_token_logprob(lp_t, mask)
    return tuple(np.asarray(x) for x in losses.preference_pairs(scores, mask.sum(-1), group))


def test_preference_pairs_on_a_constructed_example_with_ties():
    # 5 prompts x 3 completions, 2 tokens each unless masked; row scores (mean log-prob):
    rows = [[-1.0, -1.0], [-0.5, -0.5], [-2.0, -2.0],   # p0: best row 1, worst row 2
            [-1.0, -1.0], [-0.5, -1.5], [-1.5, -0.5],   # p1: all -1.0 -> tie, dropped
            [-0.2, -0.2], [-0.1, -0.3], [-3.0, -3.0],   # p2: best tie (-0.2) -> first row 6
            [-9.0, -9.0], [-4.0, -4.0], [-4.0, -4.0],   # p3: row 9 empty -> never best, worst
            [-1.0, -1.0], [-2.0, -2.0], [-3.0, -3.0]]   # p4: every row empty -> tie, dropped
    lp_t = np.array(rows, np.float32)
    mask = np.ones_like(lp_t, bool)
    mask[9] = False
    mask[12:] = False
    best, worst, valid = _pairs(lp_t, mask, 3)
    np.testing.assert_array_equal(best, [1, 3, 6, 10, 12])
    np.testing.assert_array_equal(worst, [2, 3, 8, 9, 12])
    np.testing.assert_array_equal(valid, [True, False, True, True, False])
    for got, want in zip((best, worst, valid), np_preference_pairs(lp_t, mask, 3)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("group", [2, 4])
def test_preference_pairs_match_numpy_on_random_scores(group):
    rng = np.random.default_rng(group)
    N, T = 8 * group, 3
    # few distinct values so that ties (within and across rows) are common
    lp_t = -rng.integers(1, 3, (N, T)).astype(np.float32)
    mask = rng.random((N, T)) < 0.7
    mask[::5] = False  # some empty rows
    for g in (0, 3):  # whole groups of identical completions: ties
        lp_t[g * group:(g + 1) * group] = lp_t[g * group + 1]
        mask[g * group:(g + 1) * group] = mask[g * group + 1]
    got = _pairs(lp_t, mask, group)
    for g, w in zip(got, np_preference_pairs(lp_t, mask, group)):
        np.testing.assert_array_equal(g, w)
    assert 0 < got[2].sum() < len(got[2])  # the draw has both valid pairs and ties
