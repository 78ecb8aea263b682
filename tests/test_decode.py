"""Live-prefix decode: windows over the cache prefix give the same logits and the same greedy
tokens as attending over the whole cache, and the window ladder is capacity-independent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliffdistill import models
from cliffdistill.engine import sampling
from cliffdistill.models import transformer


def test_decode_windows():
    assert transformer.decode_windows(128, 384) == (128, 256, 384)
    assert transformer.decode_windows(128, 1152) == (128, 256, 512, 1024, 1152)
    assert transformer.decode_windows(100, 130) == (128, 130)
    assert transformer.decode_windows(16, 16) == (16,)
    w = transformer.decode_windows(16, 80)
    idx = [int(transformer.decode_window_index(w, jnp.asarray(i))) for i in (16, 17, 32, 33, 80)]
    assert [w[i] for i in idx] == [16, 32, 32, 64, 80]
    # the window for a live length is the same whatever the capacity (4x apart here)
    small, large = transformer.decode_windows(64, 256), transformer.decode_windows(64, 1024)
    for live in (64, 100, 200, 256):
        pick = lambda ws: ws[int(transformer.decode_window_index(ws, jnp.asarray(live)))]  # noqa: E731
        assert pick(small) == pick(large)


def _model(model_type="qwen3"):
    extra = (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
             if model_type == "qwen3_moe" else {})
    cfg = models.ModelConfig(model_type=model_type, vocab_size=89, hidden_size=32, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
                             tie_word_embeddings=True, eos_token_ids=(1,), pad_token_id=0, **extra)
    params = models.init_params(cfg, jax.random.key(3))
    params["embed"] = params["embed"] * 40.0  # peaked next-token distributions: no greedy near-ties
    return cfg, params


def test_windowed_decode_forward_equals_full_cache():
    cfg, params = _model()
    toks, mask = sampling.prepare_prompts([[5, 6, 7], [8, 9, 10, 11, 12]], pad_id=0)
    _, cache = transformer.prefill(cfg, params, toks, mask, 64)
    tok, pos = jnp.asarray([13, 14]), jnp.asarray(mask.sum(-1))
    full, kf, vf = transformer.decode_forward(cfg, params, tok, pos, cache)
    win, kw, vw = transformer.decode_forward(cfg, params, tok, pos, cache, window=toks.shape[1])
    np.testing.assert_allclose(win, full, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(kw, kf)


def _reference_greedy(cfg, params, prompts, n):
    """Today's sampler without windows: prefill, then `decode_step` over the whole cache."""
    toks, mask = sampling.prepare_prompts(prompts, pad_id=0)
    logits, cache = transformer.prefill(cfg, params, toks, mask, toks.shape[1] + n)
    pos, out = jnp.asarray(mask.sum(-1)), []
    step = jax.jit(lambda t, p, c: transformer.decode_step(cfg, params, t, p, c))
    for t in range(n):
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        out.append(np.asarray(tok))
        logits, cache = step(tok, pos + t, cache)
    return np.stack(out, 1)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe"])
def test_greedy_tokens_identical_to_full_cache_decode(model_type):
    """G = 64 after a 16-slot prompt crosses the windows 16, 32, 64 and 80."""
    cfg, params = _model(model_type)
    prompts = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16, 17, 18]]
    out = sampling.generate(cfg, params, prompts, jax.random.key(0), 64, temperature=0.0,
                            eos_ids=[10_000], pad_id=0)  # no EOS in the vocab: every row runs 64
    ref = _reference_greedy(cfg, params, prompts, 64)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
