"""Qwen2, Mistral and Mixtral against HF transformers (PyTorch, CPU, fp32), beyond their sliding
windows: logits (full, blocked and left-padded), greedy generation through the KV cache, save_hf ->
HF reload, LoRA vs PEFT; plus the per-component pieces (window mask, layer selection, router) and
the refusals of options we do not implement."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cliffdistill import models
from cliffdistill.engine import sampling
from cliffdistill.models import transformer
from cliffdistill.run import export
from tests.hf_models import WINDOW, hf_config, hf_logits, make_hf_model, save_hf_model

WINDOWED = ("qwen2", "mistral", "mixtral")
VOCAB = 97


def _padded_tokens(seed: int = 0, shape: tuple[int, int] = (2, 20), pad: int = 6):
    """Random tokens [B, T], row 1 left-padded by `pad` (T = 20 is four windows)."""
    tokens = np.random.default_rng(seed).integers(3, VOCAB, shape)
    mask = np.ones(shape, bool)
    mask[1, :pad] = False
    tokens[1, :pad] = 0
    return tokens, mask


def _unwindowed(cfg: models.ModelConfig) -> models.ModelConfig:
    return cfg.replace(sliding_window=None, layer_types=())


@pytest.fixture(scope="module", params=WINDOWED)
def loaded(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_hf_model(request.param, path)
    cfg, params = models.load_hf(path, dtype=jnp.float32)
    return {"family": request.param, "hf": hf, "cfg": cfg, "params": params, "path": path}


def test_logits_match_hf_beyond_window(loaded):
    cfg, params = loaded["cfg"], loaded["params"]
    assert cfg.model_type == loaded["family"] and cfg.sliding_window == WINDOW
    tokens, mask = _padded_tokens()
    ref = hf_logits(loaded["hf"], tokens, mask)
    for c in (cfg, cfg.replace(attention_block=4)):  # whole-sequence and query-blocked paths
        ours = np.asarray(models.apply(c, params, tokens, mask=mask))
        np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)
    full = np.asarray(models.apply(_unwindowed(cfg), params, tokens, mask=mask))
    assert np.abs(full[mask] - ref[mask]).max() > 1e-3  # the window matters: the check has teeth


def _peaked(family: str, path):
    """An HF model with embeddings scaled up (peaked next-token distributions: no greedy ties)."""
    hf = make_hf_model(family)
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(40.0)
    hf.generation_config.eos_token_id = None  # every row runs the full length
    hf.save_pretrained(path)
    return hf


@pytest.mark.parametrize("family", WINDOWED)
def test_greedy_generation_matches_hf(family, tmp_path):
    """12 new tokens after prompts longer than the window: prefill and decode both cross it."""
    hf = _peaked(family, tmp_path)
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3, 4, 20, 21, 22, 23, 24]]
    n = 12
    out = sampling.generate(cfg, params, prompts, jax.random.key(0), n, temperature=0.0,
                            eos_ids=[10_000], pad_id=0)
    toks, mask = sampling.prepare_prompts(prompts, pad_id=0)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.as_tensor(toks, dtype=torch.long),
                          attention_mask=torch.as_tensor(mask, dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0)
    # The sampler returns its bucket width (>= n); the first n columns are the n new tokens.
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, :n], ref[:, toks.shape[1]:].numpy())


@pytest.mark.parametrize("family,tied", [("qwen2", True), ("mistral", False), ("mixtral", False)])
def test_save_hf_reloads_identically_in_transformers(family, tied, tmp_path):
    cfg = models.from_hf_config(hf_config(family, tied).to_dict())
    params = models.init_params(cfg, jax.random.key(3))
    models.save_hf(cfg, params, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).float().eval()
    if hasattr(hf.config, "layer_types"):  # qwen2 writes it; mistral/mixtral window every layer
        assert list(hf.config.layer_types) == list(cfg.layer_types)
    tokens, mask = _padded_tokens(1)
    np.testing.assert_allclose(hf_logits(hf, tokens, mask)[mask],
                               np.asarray(models.apply(cfg, params, tokens, mask=mask))[mask],
                               atol=1e-4, rtol=0)
    cfg2, params2 = models.load_hf(tmp_path, dtype=jnp.float32)
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_lora_matches_peft(loaded, tmp_path):
    import peft

    cfg, params = loaded["cfg"], loaded["params"]
    lora = models.init_lora(cfg, models.LoraConfig(rank=4, alpha=8.0), jax.random.key(1), params)
    rng = np.random.default_rng(0)
    lora = lora.replace(layers=jax.tree.map(
        lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32), lora.layers))
    from safetensors.numpy import save_file

    tmp_path.mkdir(exist_ok=True)
    save_file(export.peft_state_dict(cfg, lora), str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(
        peft_type="LORA", task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=sorted(lora.layers), bias="none")))
    base = transformers.AutoModelForCausalLM.from_pretrained(loaded["path"]).float().eval()
    model = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    tokens, mask = _padded_tokens(2)
    ours = np.asarray(models.apply(cfg, params, tokens, lora, mask=mask))
    np.testing.assert_allclose(hf_logits(model, tokens, mask)[mask], ours[mask], atol=1e-4, rtol=0)


def test_mixtral_checkpoint_names_and_moe_paths(tmp_path):
    from safetensors import safe_open

    save_hf_model("mixtral", tmp_path)
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    names = set(models.hf_io.expected_tensors(cfg))
    assert "model.layers.1.block_sparse_moe.gate.weight" in names
    assert {f"model.layers.0.block_sparse_moe.experts.3.{w}.weight" for w in ("w1", "w2", "w3")} <= names
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:  # what HF wrote
        assert set(f.keys()) == names
    tokens, mask = _padded_tokens(4, (3, 11))
    dense = models.apply(cfg, params, tokens, mask=mask, moe_impl="dense")
    for impl in ("grouped", "ragged"):
        np.testing.assert_allclose(models.apply(cfg, params, tokens, mask=mask, moe_impl=impl),
                                   dense, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- components


def test_window_mask():
    m = np.asarray(transformer.window_mask(jnp.arange(6), jnp.arange(6), jnp.asarray(3)))
    i, j = np.indices((6, 6))
    np.testing.assert_array_equal(m, (j <= i) & (j > i - 3))  # HF: kv_idx > q_idx - window
    assert m.sum(-1).tolist() == [1, 2, 3, 3, 3, 3]
    # a decode query at slot 7 against an 8-slot cache prefix: slots 5 and 6 (and itself)
    d = np.asarray(transformer.window_mask(jnp.asarray([7]), jnp.arange(8), jnp.asarray(3)))
    assert np.flatnonzero(d[0]).tolist() == [5, 6, 7]


@pytest.mark.parametrize("use,first,expect", [
    (True, 2, ("full_attention", "full_attention", "sliding_attention", "sliding_attention")),
    (True, 0, ("sliding_attention",) * 4),
    (True, 4, ()),  # no layer at or past max_window_layers: no window at all
    (False, 0, ())])
def test_qwen2_window_layers_follow_transformers(use, first, expect):
    hf = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                  use_sliding_window=use, sliding_window=WINDOW,
                                  max_window_layers=first)
    cfg = models.from_hf_config(hf.to_dict())
    assert cfg.layer_types == expect
    assert cfg.sliding_window == (WINDOW if expect else None)
    hf_types = tuple(hf.layer_types) if hf.sliding_window is not None else ()
    assert cfg.layer_types == (hf_types if "sliding_attention" in hf_types else ())
    full = models.config.FULL_WINDOW
    assert cfg.layer_windows() == tuple(WINDOW if t == "sliding_attention" else full
                                        for t in expect or ("full_attention",) * 4)


def test_mixtral_router_matches_numpy():
    cfg = models.from_hf_config(hf_config("mixtral").to_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, cfg.hidden_size)).astype(np.float32)
    w = rng.standard_normal((cfg.hidden_size, cfg.num_experts)).astype(np.float32)
    top_w, top_e = transformer.route(cfg, {"router": jnp.asarray(w)}, jnp.asarray(x))
    logits = x @ w
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)  # softmax over all experts, then top-k, renormalised
    e = np.argsort(-probs, axis=-1)[:, :cfg.num_experts_per_tok]
    p = np.take_along_axis(probs, e, -1)
    np.testing.assert_array_equal(np.asarray(top_e), e)
    np.testing.assert_allclose(np.asarray(top_w), p / p.sum(-1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("family,change,match", [
    ("mixtral", {"router_jitter_noise": 0.1}, "router_jitter_noise=0.1"),
    ("mistral", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ("qwen2", {"layer_types": ["full_attention", "chunked_attention"]}, "chunked_attention"),
    ("mistral", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("qwen3", {"use_sliding_window": True}, "use_sliding_window=true"),
    ("mistral", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
])
def test_unsupported_options_are_refused_by_name(tmp_path, family, change, match):
    save_hf_model(family, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf.update(change)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=match) as err:
        models.load_hf(tmp_path)
    assert "config.json" in str(err.value)
