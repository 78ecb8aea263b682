"""MoE dispatch paths (ragged_dot, capacity-based grouped einsums) against the dense reference,
with and without expert LoRA, including batches that overflow the grouped path's capacity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliffdistill import models
from cliffdistill.models import transformer
from cliffdistill.models.lora import LoraConfig, init_lora


def _moe_cfg(**kw):
    base = dict(model_type="qwen3_moe", vocab_size=61, hidden_size=16, num_layers=2, num_heads=2,
                num_kv_heads=1, head_dim=8, intermediate_size=32, num_experts=8,
                num_experts_per_tok=2, moe_intermediate_size=12, tie_word_embeddings=True)
    return models.ModelConfig(**{**base, **kw})


def _setup(cfg, skew=0.0):
    """Params (router biased towards expert 0 by `skew`) and expert LoRA with nonzero `b`."""
    params = models.init_params(cfg, jax.random.key(0))
    params["layers"]["router"] = params["layers"]["router"].at[..., 0].add(skew)
    lora = init_lora(cfg, LoraConfig(rank=3, alpha=6.0, include_experts=True), jax.random.key(1),
                     params)
    lora = lora.replace(layers=jax.tree.map(lambda x: x + 0.05, lora.layers))
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 61, (3, 20)), jnp.int32)
    return params, lora, tokens


@pytest.mark.parametrize("impl", ["ragged", "grouped"])
@pytest.mark.parametrize("with_lora", [False, True])
@pytest.mark.parametrize("factor,skew", [(2.0, 0.0), (0.25, 0.0), (1.0, 5.0)])
def test_moe_paths_equal_dense(impl, with_lora, factor, skew):
    """factor 0.25 and the skewed router overflow the capacity: later rounds, nothing dropped."""
    cfg = _moe_cfg(moe_capacity_factor=factor)
    params, lora, tokens = _setup(cfg, skew)
    lora = lora if with_lora else None
    ref = models.apply(cfg, params, tokens, lora, moe_impl="dense")
    got = models.apply(cfg, params, tokens, lora, moe_impl=impl)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_grouped_expert_lora_gradient_equals_dense():
    cfg = _moe_cfg(moe_capacity_factor=0.5)
    params, lora, tokens = _setup(cfg, skew=2.0)

    def loss(lora, impl):
        return jnp.sum(models.apply(cfg, params, tokens, lora, moe_impl=impl) ** 2) / 1e3

    ref, got = jax.grad(loss)(lora, "dense"), jax.grad(loss)(lora, "grouped")
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_capacity_rule():
    cfg = _moe_cfg(num_experts=128, num_experts_per_tok=8, moe_capacity_factor=2.0)
    assert transformer.moe_capacity(cfg, 16384) == 2048  # 2 x the mean 1024 per expert
    assert transformer.moe_capacity(cfg, 64) == 8  # decode B=64: ceil(2 * 4) = 8
    assert transformer.moe_capacity(cfg, 3) == 3  # never above N: C = N cannot overflow


def test_moe_impl_resolution():
    expected = "ragged" if jax.default_backend() == "tpu" else "grouped"
    assert transformer.resolve_moe_impl("auto") == expected
    assert transformer.resolve_moe_impl("dense") == "dense"
    with pytest.raises(ValueError, match="moe_impl"):
        transformer.resolve_moe_impl("sparse")
