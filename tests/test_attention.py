"""Fused attention (`jax.nn.dot_product_attention`) against the einsum reference it replaced,
and the remat policies: values and gradients in fp32 on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliffdistill import models
from cliffdistill.models import transformer
from cliffdistill.models.lora import LoraConfig, init_lora

_MASK_BIAS = -1e30


def einsum_attention(q, k, v, mask):
    """The pre-fusion path: fp32 [B, Hkv, G, T, T] scores, causal + pad-key mask, softmax.
    q [B, T, Hq, hd], k/v [B, T, Hkv, hd], mask [B, T] -> [B, T, Hq, hd]."""
    B, T, Hq, hd = q.shape
    Hkv = k.shape[2]
    qg = q.reshape(B, T, Hkv, Hq // Hkv, hd)
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
    allowed = (jnp.arange(T)[:, None] >= jnp.arange(T)[None])[None] & mask[:, None, :]
    s = jnp.where(allowed[:, None, None], s, _MASK_BIAS)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", p, v).reshape(B, T, Hq, hd)


def _cfg(**kw):
    base = dict(model_type="qwen3", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8, intermediate_size=64, tie_word_embeddings=True)
    return models.ModelConfig(**{**base, **kw})


def _qkv_mask(T, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(3, T, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, T, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(3, T, 2, 8)), jnp.float32)
    mask = np.ones((3, T), bool)
    mask[0, : T // 3] = False  # left padding
    mask[2, : T - 2] = False
    return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize("T,block", [(24, 1024), (64, 16)])  # whole and query-blocked
def test_causal_attention_matches_einsum_values_and_grads(T, block):
    cfg = _cfg(attention_block=block, attention_impl="xla")
    q, k, v, mask = _qkv_mask(T)
    real = mask[:, :, None, None]  # pad queries' outputs are never read

    def loss(fn, q, k, v):
        return jnp.sum(jnp.where(real, fn(q, k, v) * jnp.cos(jnp.arange(8.0)), 0.0))

    ours = lambda q, k, v: transformer.causal_attention(cfg, q, k, v, mask)  # noqa: E731
    ref = lambda q, k, v: einsum_attention(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(jnp.where(real, ours(q, k, v), 0), jnp.where(real, ref(q, k, v), 0),
                               atol=1e-5, rtol=0)
    g_ours = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_model_forward_and_lora_grad_unchanged_by_blocking():
    """The whole model under the blocked and unblocked fused paths: logits and LoRA gradients."""
    base = _cfg(attention_impl="xla")
    params = models.init_params(base, jax.random.key(0))
    lora = init_lora(base, LoraConfig(rank=4, alpha=8.0), jax.random.key(1), params)
    lora = lora.replace(layers=jax.tree.map(lambda x: x + 0.01, lora.layers))
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 97, (2, 64)), jnp.int32)
    mask = jnp.asarray(np.arange(64)[None] >= np.array([[0], [9]]))

    def loss(cfg, lora):
        logits = models.apply(cfg, params, tokens, lora, mask=mask)
        return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0)) / 1e3

    whole, blocked = base, base.replace(attention_block=16)
    np.testing.assert_allclose(loss(whole, lora), loss(blocked, lora), rtol=1e-6)
    gw, gb = jax.grad(loss, argnums=1)(whole, lora), jax.grad(loss, argnums=1)(blocked, lora)
    for a, b in zip(jax.tree.leaves(gw), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_attention_impl_resolution_and_validation():
    assert transformer.attention_impl(_cfg(), jnp.float32) == "xla"
    assert transformer.attention_impl(_cfg(attention_impl="cudnn"), jnp.float32) == "cudnn"
    if jax.default_backend() != "gpu":
        assert transformer.attention_impl(_cfg(), jnp.bfloat16) == "xla"
    with pytest.raises(ValueError, match="attention_impl"):
        _cfg(attention_impl="flash")


@pytest.mark.parametrize("policy", ["dots", "full", True])
def test_remat_policies_give_the_same_gradient(policy):
    cfg = _cfg()
    params = models.init_params(cfg, jax.random.key(0))
    lora = init_lora(cfg, LoraConfig(rank=4, alpha=8.0), jax.random.key(1), params)
    lora = lora.replace(layers=jax.tree.map(lambda x: x + 0.01, lora.layers))
    tokens = jnp.asarray(np.random.default_rng(1).integers(3, 97, (2, 16)), jnp.int32)

    def loss(lora, remat):
        h = transformer.forward_hidden(cfg, params, tokens, lora, remat=remat)
        return jnp.sum(transformer.unembed(cfg, params, h) ** 2) / 1e3

    ref = jax.grad(loss)(lora, "none")
    got = jax.grad(loss)(lora, policy)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


def test_remat_policy_names():
    assert transformer.remat_policy(True) == "full" and transformer.remat_policy(False) == "none"
    assert transformer.remat_policy("dots") == "dots"
    with pytest.raises(ValueError, match="remat"):
        transformer.remat_policy("some")


def test_planner_counts_remat_policies():
    """The memory planner's update: "none" > "dots" > "full" saved bytes; bools still accepted."""
    from cliffdistill.run import memplan as planner
    from cliffdistill.models.config import preset

    m, mesh = preset("qwen3_4b"), planner.MeshShape.of({})
    saved = {r: planner.update_bytes(m, 8, 128, 256, mesh, 2, 16384, remat=r)["saved"]
             for r in ("none", "dots", "full", True)}
    assert saved["none"] > saved["dots"] > saved["full"] == saved[True]
    N = 8 * 384
    assert saved["dots"] - saved["full"] == m.num_layers * planner.dots_saved_bytes(m, N, mesh, 2)
