"""Model core against HF transformers (PyTorch, CPU, fp32) on tiny random configs."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from cliffdistill import models
from cliffdistill.models import sharding, transformer
from tests.hf_models import FAMILIES, hf_logits, make_hf_model, save_hf_model

CASES = [("llama", False), ("llama", True), ("qwen3", True), ("qwen3", False), ("qwen3_moe", False)]


def _tokens(seed=0, shape=(2, 13), vocab=97):
    return np.random.default_rng(seed).integers(0, vocab, shape)


@pytest.mark.parametrize("family,tied", CASES)
def test_load_hf_matches_transformers(tmp_path, family, tied):
    hf = save_hf_model(family, tmp_path, tied=tied)
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    assert cfg.model_type == family and cfg.tie_word_embeddings == tied
    assert ("lm_head" in params) != tied
    tokens = _tokens()
    ours = np.asarray(models.apply(cfg, params, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(hf, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family,tied", [("llama", False), ("qwen3", True), ("qwen3_moe", False)])
def test_save_hf_loads_in_transformers(tmp_path, family, tied):
    import transformers

    cfg = models.from_hf_config(make_hf_model(family, tied).config.to_dict())
    params = models.init_params(cfg, jax.random.key(3))
    models.save_hf(cfg, params, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    tokens = _tokens(1)
    np.testing.assert_allclose(hf_logits(hf, tokens), np.asarray(models.apply(cfg, params, tokens)),
                               atol=1e-4, rtol=0)
    # and our own round trip is exact
    cfg2, params2 = models.load_hf(tmp_path / "out", dtype=jnp.float32)
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_sharded_save_writes_index_and_reloads(tmp_path):
    cfg = models.from_hf_config(make_hf_model("qwen3").config.to_dict())
    params = models.init_params(cfg, jax.random.key(0))
    models.save_hf(cfg, params, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    _, params2 = models.load_hf(tmp_path, dtype=jnp.float32)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_left_padding_does_not_change_real_positions(tmp_path):
    save_hf_model("qwen3", tmp_path)
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    row = _tokens(2, (1, 9))
    padded = np.concatenate([np.zeros((1, 4), int), row], axis=1)
    mask = np.concatenate([np.zeros((1, 4), bool), np.ones((1, 9), bool)], axis=1)
    a = models.apply(cfg, params, row)
    b = models.apply(cfg, params, padded, mask=mask)[:, 4:]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_moe_ragged_equals_dense(tmp_path):
    save_hf_model("qwen3_moe", tmp_path)
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    tokens = _tokens(4, (3, 11))
    ragged = models.apply(cfg, params, tokens, moe_impl="ragged")
    dense = models.apply(cfg, params, tokens, moe_impl="dense")
    np.testing.assert_allclose(ragged, dense, atol=1e-5, rtol=0)
    # also with expert adapters (non-zero b) on both paths
    lora = models.init_lora(cfg, models.LoraConfig(rank=4, include_experts=True), jax.random.key(1),
                            params)
    lora = jax.tree_util.tree_map(lambda x: x + 0.05, lora)
    np.testing.assert_allclose(models.apply(cfg, params, tokens, lora, moe_impl="ragged"),
                               models.apply(cfg, params, tokens, lora, moe_impl="dense"),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_forward_equals_single_device(family):
    assert len(jax.devices()) >= 8, "conftest must provide 8 fake CPU devices"
    cfg = models.from_hf_config(make_hf_model(family).config.to_dict())
    params = models.init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(_tokens(5, (4, 12)))
    ref = models.apply(cfg, params, tokens)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = sharding.param_shardings(cfg, mesh, params)
    sharded = jax.device_put(params, shardings)
    q = sharded["layers"]["q_proj"]
    assert isinstance(q.sharding, NamedSharding) and q.sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (cfg.num_layers, cfg.hidden_size // 2,
                                                  cfg.num_heads * cfg.head_dim // 2)
    toks = jax.device_put(tokens, sharding.batch_sharding(mesh, 2))
    with jax.set_mesh(mesh):
        out = jax.jit(models.apply, static_argnums=0)(cfg, sharded, toks)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_load_hf_with_mesh_reads_device_slices(tmp_path):
    save_hf_model("llama", tmp_path)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32, mesh=mesh)
    _, ref = models.load_hf(tmp_path, dtype=jnp.float32)
    for leaf, r in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
        assert leaf.sharding.mesh == mesh
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(r))
    assert params["lm_head"].addressable_shards[0].data.shape == (cfg.hidden_size // 2,
                                                                   cfg.vocab_size)  # 97 is odd


@pytest.mark.parametrize("name,billions", [("qwen3_4b", 4.02), ("qwen3_30b_a3b", 30.5),
                                           ("llama31_8b", 8.03), ("llama33_70b", 70.6)])
def test_preset_parameter_counts(name, billions):
    n = models.count_params(models.param_shapes(models.preset(name)))  # eval_shape: no allocation
    assert abs(n / 1e9 - billions) <= 0.005 * billions, n


def test_lora_zero_b_is_identity_and_only_adapters_get_gradients():
    cfg = models.from_hf_config(make_hf_model("qwen3").config.to_dict())
    params = models.init_params(cfg, jax.random.key(0))
    lcfg = models.LoraConfig(rank=4, alpha=8)
    lora = models.init_lora(cfg, lcfg, jax.random.key(1), params)
    assert set(lora.layers) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj"}
    tokens = _tokens(6, (2, 10))
    # identical up to XLA fusing the (zero) adapter term into a different float summation order
    np.testing.assert_allclose(models.apply(cfg, params, tokens, lora),
                               models.apply(cfg, params, tokens), atol=1e-6, rtol=0)

    def loss(lora_layers):
        lp = models.LoraParams(layers=lora_layers, scale=lora.scale)
        return jnp.mean(models.apply(cfg, params, tokens, lp) ** 2)

    grads = jax.grad(loss)(lora.layers)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(lora.layers)
    for name, g in grads.items():
        assert float(jnp.abs(g["b"]).max()) > 0, name  # b learns first
        assert float(jnp.abs(g["a"]).max()) == 0, name  # d/da is zero while b == 0
    # merged weights equal the adapter path once b is non-zero
    lora2 = models.LoraParams(layers=jax.tree_util.tree_map(lambda x: x + 0.01, lora.layers),
                              scale=lora.scale)
    np.testing.assert_allclose(models.apply(cfg, models.merge(params, lora2), tokens),
                               models.apply(cfg, params, tokens, lora2), atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lora_projection_gradient_equals_autodiff(dtype):
    """The adapted projection's hand-written VJP (`lora_proj`) against autodiff of the same
    forward, for every input (x, w, a, b) and leading dims [B, T]; a/b stay fp32 under bf16 x/w."""
    k = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(k[0], (2, 5, 12)).astype(dtype)
    w = (jax.random.normal(k[1], (12, 20)) / 4).astype(dtype)
    a = jax.random.normal(k[2], (12, 3)) / 4
    b = jax.random.normal(k[3], (3, 20)) / 4
    dy = jax.random.normal(k[4], (2, 5, 20)).astype(dtype)
    y_ref, vjp_ref = jax.vjp(lambda *p: transformer.lora_forward(*p, 1.7)[0], x, w, a, b)
    y, vjp = jax.vjp(lambda *p: transformer.lora_proj(*p, 1.7), x, w, a, b)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=tol, atol=tol)


def test_lora_moe_excludes_experts_by_default():
    cfg = models.from_hf_config(make_hf_model("qwen3_moe").config.to_dict())
    params = models.param_shapes(cfg)
    lora = models.init_lora(cfg, models.LoraConfig(rank=2), jax.random.key(0), params)
    assert set(lora.layers) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    lora = models.init_lora(cfg, models.LoraConfig(rank=2, include_experts=True), jax.random.key(0),
                            params)
    assert lora.layers["gate_proj"]["a"].shape == (2, 4, 32, 2)


# --------------------------------------------------------------------------- bad input


@pytest.fixture()
def ckpt(tmp_path):
    save_hf_model("qwen3", tmp_path / "m")
    return tmp_path / "m"


def _edit_config(path, **changes):
    hf = json.loads((path / "config.json").read_text())
    hf.update(changes)
    (path / "config.json").write_text(json.dumps(hf))


def test_error_missing_shard_file(tmp_path):
    cfg = models.from_hf_config(make_hf_model("qwen3").config.to_dict())
    models.save_hf(cfg, models.init_params(cfg, jax.random.key(0)), tmp_path, max_shard_bytes=20_000)
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        models.load_hf(tmp_path)


def test_error_partial_shards_missing_tensor(ckpt):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensor.*layers\.1\.self_attn\.k_proj"):
        models.load_hf(ckpt)


def test_error_no_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.load_hf(ckpt)


def test_error_unsupported_model_type(ckpt):
    _edit_config(ckpt, model_type="gpt2")
    with pytest.raises(ValueError, match=r"config\.json.*model_type='gpt2' is not supported"):
        models.load_hf(ckpt)


def test_error_shape_mismatch(ckpt):
    _edit_config(ckpt, intermediate_size=48)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .*mlp\..*_proj\.weight.* has shape .*64.* but config\.json implies .*48"):
        models.load_hf(ckpt)


def test_error_unknown_rope_scaling(ckpt):
    _edit_config(ckpt, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="rope scaling type 'yarn' is not supported"):
        models.load_hf(ckpt)


def test_error_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load_hf(tmp_path)


def test_error_mesh_larger_than_devices():
    with pytest.raises(ValueError, match="needs 64 devices.*`mesh`"):
        sharding.make_mesh({"data": 8, "tensor": 8})


def test_transformer_module_has_no_torch():
    import sys

    assert "torch" not in getattr(transformer, "__dict__")
    assert all("torch" not in m for m in dir(sys.modules["cliffdistill.models"]))


def test_blocked_attention_equals_dense_value_and_grad():
    """Query-blocked attention (long prompts) gives the dense result, forward and backward."""
    base = models.from_hf_config(make_hf_model("qwen3").config.to_dict())
    params = models.init_params(base, jax.random.key(0))
    tokens = jnp.asarray(_tokens(7, (2, 48)))  # 48 = 3 blocks of 16
    mask = np.ones((2, 48), bool)
    mask[1, :5] = False  # left padding crosses the first block
    dense, blocked = base.replace(attention_block=4096), base.replace(attention_block=16)

    def loss(p, cfg):
        return jnp.sum(jnp.tanh(models.apply(cfg, p, tokens, mask=mask)))

    np.testing.assert_allclose(models.apply(blocked, params, tokens, mask=mask),
                               models.apply(dense, params, tokens, mask=mask), atol=1e-5, rtol=0)
    g_dense = jax.grad(loss)(params, dense)
    g_blocked = jax.grad(loss)(params, blocked)
    for a, b in zip(jax.tree_util.tree_leaves(g_dense), jax.tree_util.tree_leaves(g_blocked)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_params_track_fp32(tmp_path, family):
    """bf16 weights (the real runs' dtype): logits stay finite and close to the fp32 model's."""
    save_hf_model(family, tmp_path)
    cfg, p32 = models.load_hf(tmp_path, dtype=jnp.float32)
    _, p16 = models.load_hf(tmp_path, dtype=jnp.bfloat16)
    assert p16["layers"]["q_proj"].dtype == jnp.bfloat16
    tokens = _tokens(8)
    l32 = np.asarray(models.apply(cfg, p32, tokens))
    l16 = models.apply(cfg, p16, tokens)
    assert l16.dtype == jnp.float32  # logits (and everything after them) in fp32
    err = np.abs(np.asarray(l16) - l32).max()
    assert np.isfinite(err) and err < 0.05 * np.abs(l32).max(), err
