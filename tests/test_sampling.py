"""Rollout: cached decode vs full forward, HF generate parity, sampling distribution, invariances."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cliffdistill import models
from cliffdistill.engine import sampling, scoring
from cliffdistill.models import sharding, transformer
from tests.hf_models import FAMILIES, make_hf_model, uncap_for_peaks

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16, 17, 18], [20, 21, 22]]


def peaked_hf_model(family, seed=0):
    """A random HF model whose next-token distributions are peaked (logit std ~3), so greedy
    decoding has no near-ties and sampling tests see a non-uniform distribution."""
    hf = make_hf_model(family, seed=seed)
    with torch.no_grad():
        hf.lm_head.weight.mul_(25.0)
    return uncap_for_peaks(hf)


def ours(hf):
    """Our (cfg, params) for an HF model, through save_pretrained + load_hf."""
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        return models.load_hf(d, dtype=jnp.float32)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    hf = peaked_hf_model(request.param)
    cfg, params = ours(hf)
    return request.param, hf, cfg, params


def test_cached_decode_equals_full_forward(family_model):
    _, _, cfg, params = family_model
    toks, mask = sampling.prepare_prompts(PROMPTS, pad_id=0)
    rng = np.random.default_rng(0)
    cont = rng.integers(3, cfg.vocab_size, (len(PROMPTS), 6)).astype(np.int32)
    P = toks.shape[1]
    logits, cache = transformer.prefill(cfg, params, toks, mask, P + 8)
    full = models.apply(cfg, params, np.concatenate([toks, cont], 1),
                        mask=np.concatenate([mask, np.ones_like(cont, bool)], 1))
    np.testing.assert_allclose(logits, full[:, P - 1], atol=1e-4, rtol=0)
    pos = mask.sum(-1)
    for t in range(cont.shape[1]):
        logits, cache = transformer.decode_step(cfg, params, jnp.asarray(cont[:, t]), pos + t, cache)
        np.testing.assert_allclose(logits, full[:, P + t], atol=1e-4, rtol=0, err_msg=f"step {t}")


def test_greedy_matches_hf_generate(family_model):
    _, hf, cfg, params = family_model
    eos = 2
    toks, mask = sampling.prepare_prompts(PROMPTS, pad_id=0)
    out = sampling.generate(cfg, params, PROMPTS, jax.random.key(0), 12, temperature=0.0,
                            eos_ids=[eos], pad_id=0)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.as_tensor(toks, dtype=torch.long),
                          attention_mask=torch.as_tensor(mask, dtype=torch.long), do_sample=False,
                          max_new_tokens=12, eos_token_id=eos, pad_token_id=0).numpy()
    ref = ref[:, toks.shape[1]:]
    lengths = np.asarray(out.lengths)
    assert lengths.min() >= 1
    for r in range(len(PROMPTS)):
        np.testing.assert_array_equal(np.asarray(out.tokens)[r, :lengths[r]], ref[r, :lengths[r]],
                                      err_msg=f"row {r}")
        if lengths[r] < 12:  # stopped at EOS like HF did
            assert out.finished[r] and ref[r, lengths[r] - 1] == eos
    assert (np.asarray(out.truncated) == ~np.asarray(out.finished)).all()


def _empirical(tokens, V):
    return np.bincount(np.asarray(tokens), minlength=V) / len(tokens)


def _expected(logits, temperature, top_k, top_p):
    """Independent NumPy reference: temperature -> top-k -> top-p (renormalised at each step)."""
    x = np.asarray(logits, np.float64) / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    if top_k > 0:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    q = np.where(keep, p, 0.0)
    q /= q.sum()
    mass = 0.0
    nucleus = np.zeros_like(keep)
    for i in order:
        if not keep[i] or mass >= top_p:
            continue
        nucleus[i] = True
        mass += q[i]
    r = np.where(nucleus, q, 0.0)
    return r / r.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0),
                                                     (1.0, 0, 0.8), (0.9, 8, 0.9)])
def test_sampling_distribution(temperature, top_k, top_p):
    hf = peaked_hf_model("qwen3", seed=1)
    cfg, params = ours(hf)
    prompt = np.asarray([[5, 6, 7, 8]], np.int32)
    n = 12000
    out = sampling.generate(cfg, params, np.repeat(prompt, n, 0), jax.random.key(7), 1,
                            temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=[2])
    logits = np.asarray(models.apply(cfg, params, prompt))[0, -1]
    expected = _expected(logits, temperature, top_k, top_p)
    got = _empirical(np.asarray(out.tokens)[:, 0], cfg.vocab_size)
    tv = 0.5 * np.abs(got - expected).sum()
    assert tv < 0.03, tv
    assert got[expected == 0].sum() == 0  # filtered tokens are never sampled
    # and the distribution is far from uniform, so the check has teeth
    assert 0.5 * np.abs(np.full_like(expected, 1 / cfg.vocab_size) - expected).sum() > 0.3


def test_same_prompt_same_completion_alone_or_batched(family_model):
    _, _, cfg, params = family_model
    key = jax.random.key(3)
    kw = dict(temperature=1.0, eos_ids=[2], pad_id=0)
    target = [7, 8, 9, 10]
    alone = sampling.generate(cfg, params, [target], key, 10, row_ids=np.asarray([5]), **kw)
    batch = [[3] * 20, target, [4, 5]]  # a longer prompt forces a larger prompt bucket
    batched = sampling.generate(cfg, params, batch, key, 10, row_ids=np.asarray([0, 5, 9]), **kw)
    n = int(alone.lengths[0])
    assert int(batched.lengths[1]) == n
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0, :n], np.asarray(batched.tokens)[1, :n])
    np.testing.assert_allclose(alone.logprobs[0], batched.logprobs[1], atol=1e-5)


def test_behaviour_logprobs_equal_scoring(family_model):
    _, _, cfg, params = family_model
    out = sampling.generate(cfg, params, PROMPTS, jax.random.key(11), 10, eos_ids=[2], pad_id=0)
    toks, mask = sampling.prepare_prompts(PROMPTS, pad_id=0)
    lp = scoring.score(cfg, params, toks, mask, out.tokens, out.mask, vocab_chunk=32)
    np.testing.assert_allclose(lp, out.logprobs, atol=1e-5, rtol=0)
    assert np.asarray(out.mask).sum() > len(PROMPTS)  # more than one token per row was checked


def _seeded(student, teacher, n, key=jax.random.key(0), temperature=0.0, max_new=12):
    (scfg, sparams), (tcfg, tparams) = student, teacher
    s_toks, s_mask = sampling.prepare_prompts(PROMPTS, pad_id=0)
    ctx = [30, 31, 32, 33, 34, 35]
    t_toks, t_mask = sampling.prepare_prompts([ctx + p for p in PROMPTS], pad_id=0)
    B = len(PROMPTS)
    return sampling.teacher_seeded_arrays(
        scfg, sparams, None, tcfg, tparams, None, s_toks, s_mask, t_toks, t_mask, key,
        jnp.arange(B), jnp.asarray(n), sampling.SamplingParams.of(max_new, temperature),
        gen_len=16, seed_len=8, eos_ids=(2,), pad_id=0), (
        s_toks, s_mask, t_toks, t_mask)


def test_teacher_seeded_rollout_greedy():
    student, teacher = ours(peaked_hf_model("qwen3", 0)), ours(peaked_hf_model("qwen3", 1))
    (scfg, sparams), (tcfg, tparams) = student, teacher
    N = 4
    out, (s_toks, s_mask, t_toks, t_mask) = _seeded(student, teacher, N)
    t_greedy = sampling.generate(tcfg, tparams, t_toks, jax.random.key(0), N, temperature=0.0,
                                 prompt_mask=t_mask, eos_ids=[2], pad_id=0)
    tokens, smask = np.asarray(out.tokens), np.asarray(out.student_mask)
    continued = 0
    for r in range(len(PROMPTS)):
        k = int(t_greedy.lengths[r])
        np.testing.assert_array_equal(tokens[r, :k], np.asarray(t_greedy.tokens)[r, :k])
        assert not smask[r, :k].any() and smask[r, k:int(out.lengths[r])].all()
        if t_greedy.finished[r]:  # the teacher ended the answer inside its prefix
            assert int(out.lengths[r]) == k and out.finished[r]
            continue
        # the rest is the student's greedy continuation of its prompt + the teacher prefix
        prefix = list(np.asarray(t_greedy.tokens)[r, :k])
        cont = sampling.generate(scfg, sparams, [PROMPTS[r] + prefix], jax.random.key(0),
                                 12 - k, temperature=0.0, eos_ids=[2], pad_id=0)
        n = int(cont.lengths[0])
        np.testing.assert_array_equal(tokens[r, k:k + n], np.asarray(cont.tokens)[0, :n])
        assert int(out.lengths[r]) == k + n
        continued += 1
    assert continued >= 2  # the check above really ran on rows the student continued
    # N = 0 is plain student sampling (same key, same rows), also when sampling at T=1
    for temperature in (0.0, 1.0):
        key = jax.random.key(5)
        seeded0, _ = _seeded(student, teacher, 0, key, temperature)
        plain = sampling.generate(scfg, sparams, s_toks, key, 12, temperature=temperature,
                                  prompt_mask=s_mask, eos_ids=[2], pad_id=0, gen_bucket=16)
        np.testing.assert_array_equal(seeded0.tokens, plain.tokens)
        np.testing.assert_array_equal(seeded0.student_mask, plain.mask)


def test_context_view_scoring_equals_concatenated_sequence():
    cfg, params = ours(peaked_hf_model("llama"))
    ctx, prompt = [30, 31, 32, 33, 34, 35, 36], [5, 6, 7]
    completion = np.asarray([[40, 41, 42, 2, 0, 0]], np.int32)
    cmask = np.asarray([[1, 1, 1, 1, 0, 0]], bool)
    toks, mask = sampling.prepare_prompts([ctx + prompt], pad_id=0)
    lp = np.asarray(scoring.score(cfg, params, toks, mask, completion, cmask, vocab_chunk=16))
    seq = np.asarray([ctx + prompt + [40, 41, 42, 2]])
    logp = jax.nn.log_softmax(models.apply(cfg, params, seq))
    n = len(ctx + prompt)
    direct = [float(logp[0, n - 1 + t, seq[0, n + t]]) for t in range(4)]
    np.testing.assert_allclose(lp[0, :4], direct, atol=1e-5)
    assert (lp[0, 4:] == 0).all()


def test_chunked_logprobs_match_dense_value_and_grad():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 37)), jnp.float32)
    tgt = jnp.asarray(rng.integers(0, 37, (2, 5)))
    dense = lambda h, w: jnp.take_along_axis(jax.nn.log_softmax(h @ w), tgt[..., None], -1)[..., 0]  # noqa: E731
    chunked = lambda h, w: scoring.chunked_token_logprobs(h, w, tgt, 10)  # noqa: E731
    np.testing.assert_allclose(chunked(h, w), dense(h, w), atol=1e-5)
    g1 = jax.grad(lambda h, w: chunked(h, w).sum(), argnums=(0, 1))(h, w)
    g2 = jax.grad(lambda h, w: dense(h, w).sum(), argnums=(0, 1))(h, w)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_generate_and_score_equal_unsharded(family):
    cfg, params = ours(peaked_hf_model(family))
    prompts = PROMPTS * 2  # B = 8, divisible by data*fsdp = 4
    key = jax.random.key(9)
    ref = sampling.generate(cfg, params, prompts, key, 8, eos_ids=[2], pad_id=0)
    toks, mask = sampling.prepare_prompts(prompts, pad_id=0)
    ref_lp = scoring.score(cfg, params, toks, mask, ref.tokens, ref.mask, vocab_chunk=32)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sp = jax.device_put(params, sharding.param_shardings(cfg, mesh, params))
    bs = sharding.batch_sharding(mesh, 2)
    stoks, smask = jax.device_put(toks, bs), jax.device_put(mask, bs)
    with jax.set_mesh(mesh):
        out = sampling.generate(cfg, sp, stoks, key, 8, prompt_mask=smask, eos_ids=[2], pad_id=0)
        lp = scoring.score(cfg, sp, stoks, smask, out.tokens, out.mask, vocab_chunk=32)
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    np.testing.assert_allclose(lp, ref_lp, atol=1e-5)


def test_no_recompilation_when_schedule_values_change():
    student, teacher = ours(peaked_hf_model("qwen3", 0)), ours(peaked_hf_model("qwen3", 1))
    cfg, params = student
    gen = sampling.generate_arrays
    sampling.generate(cfg, params, PROMPTS, jax.random.key(0), 16, temperature=1.0, eos_ids=[2])
    before = gen._cache_size()
    for temperature, max_new, top_p in [(0.0, 9, 1.0), (0.7, 16, 0.9), (1.3, 3, 0.5)]:
        sampling.generate(cfg, params, PROMPTS, jax.random.key(1), max_new, temperature=temperature,
                          top_p=top_p, top_k=3, eos_ids=[2], gen_bucket=16)
    assert gen._cache_size() == before
    seeded = sampling.teacher_seeded_arrays
    _seeded(student, teacher, 4)
    n_seeded = seeded._cache_size()
    for n, t, max_new in [(0, 1.0, 12), (7, 0.5, 5), (2, 0.0, 16)]:
        _seeded(student, teacher, n, jax.random.key(n), t, max_new)
    assert seeded._cache_size() == n_seeded
