"""Qwen2, Mistral, Mixtral, Gemma 2 and Gemma 3 against HF transformers (PyTorch, CPU, fp32),
beyond their sliding windows: logits (full, blocked and left-padded), greedy generation through the
KV cache, save_hf -> HF reload, LoRA vs PEFT, a multimodal Gemma 3 checkpoint's language model;
plus the per-component pieces (window mask, layer selection, router, Gemma's norm, embedding
scale, GeGLU, soft-capped attention, per-layer RoPE) and the refusals of options we do not
implement."""

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
from tests.hf_models import (GEMMA, WINDOW, hf_config, hf_logits, make_hf_model, save_hf_model,
                              uncap_for_peaks)

WINDOWED = ("qwen2", "mistral", "mixtral", "gemma2", "gemma3_text")
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
    uncap_for_peaks(hf)
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


@pytest.mark.parametrize("family,tied", [("qwen2", True), ("mistral", False), ("mixtral", False),
                                         ("gemma2", True), ("gemma3_text", False)])
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


# --------------------------------------------------------------------------- Gemma


@pytest.mark.parametrize("family,changes", [
    ("gemma2", [{"attn_logit_softcapping": None}, {"final_logit_softcapping": None},
                {"query_pre_attn_scalar": None}]),
    ("gemma3_text", [{"rope_local_theta": None}, {"rope_scaling": None},
                     {"query_pre_attn_scalar": None}]),
])
def test_gemma_features_each_change_the_logits(family, changes, tmp_path):
    """The parity tests have teeth: dropping any one Gemma feature moves the logits well past
    their 1e-4 tolerance."""
    hf = save_hf_model(family, tmp_path)
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    tokens, mask = _padded_tokens(5)
    ref = hf_logits(hf, tokens, mask)[mask]
    np.testing.assert_allclose(np.asarray(models.apply(cfg, params, tokens, mask=mask))[mask], ref,
                               atol=1e-4, rtol=0)
    for change in changes:
        moved = np.abs(np.asarray(models.apply(cfg.replace(**change), params, tokens, mask=mask))[mask]
                       - ref).max()
        assert moved > 1e-3, (change, moved)


def test_gemma_norm_embedding_and_gelu_match_hf_in_bf16():
    from transformers.activations import ACT2FN
    from transformers.models.gemma2 import modeling_gemma2 as g2

    torch.manual_seed(0)
    x = torch.randn(3, 5, 64).to(torch.bfloat16)
    norm = g2.Gemma2RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(0.3 * torch.randn(64))
    w = jnp.asarray(norm.weight.detach().numpy(), jnp.float32)
    xj = jnp.asarray(x.float().numpy(), jnp.bfloat16)
    ours = transformer.rms_norm(xj, w, 1e-6, gemma=True)
    ref = norm(x).detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(ours, np.float32), ref)  # same ops, same roundings
    llama_order = transformer.rms_norm(xj, (1.0 + w).astype(jnp.bfloat16), 1e-6)
    assert np.any(np.asarray(llama_order, np.float32) != ref)  # cast-then-scale differs in bf16

    emb = g2.Gemma2TextScaledWordEmbedding(11, 3072, 0, embed_scale=3072 ** 0.5).to(torch.bfloat16)
    ids = torch.arange(11)[None]
    cfg = models.preset("gemma2_2b").replace(hidden_size=3072, vocab_size=11)
    got = transformer.embed(cfg, {"embed": jnp.asarray(emb.weight.detach().float().numpy(),
                                                       jnp.bfloat16)}, jnp.arange(11)[None])
    np.testing.assert_array_equal(np.asarray(got, np.float32), emb(ids).detach().float().numpy())

    z = torch.linspace(-6, 6, 101)
    np.testing.assert_allclose(np.asarray(transformer.activation(cfg, jnp.asarray(z.numpy()))),
                               ACT2FN["gelu_pytorch_tanh"](z).numpy(), atol=1e-6, rtol=0)


def test_capped_attention_matches_numpy():
    rng = np.random.default_rng(0)
    B, T, Hq, Hkv, hd, scale, cap = 2, 6, 4, 2, 8, 0.3, 1.5
    q, k, v = (rng.standard_normal((B, T, h, hd)).astype(np.float32) for h in (Hq, Hkv, Hkv))
    allowed = np.tril(np.ones((T, T), bool))[None, None] & (rng.random((B, 1, 1, T)) > 0.2)
    allowed[..., 0] = True  # every query sees at least one key
    got = np.asarray(transformer.capped_attention(q, k, v, jnp.asarray(allowed), scale, cap))
    kk, vv = np.repeat(k, Hq // Hkv, axis=2), np.repeat(v, Hq // Hkv, axis=2)  # GQA
    s = np.einsum("bqhd,bshd->bhqs", q, kk) * scale
    s = np.where(allowed, cap * np.tanh(s / cap), -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, np.einsum("bhqs,bshd->bqhd", p, vv), atol=1e-5, rtol=0)


def test_gemma3_rope_tables_per_layer_type_match_hf():
    from transformers.models.gemma3 import modeling_gemma3 as g3

    hf = hf_config("gemma3_text")
    cfg = models.from_hf_config(hf.to_dict())
    tables = np.asarray(transformer.layer_inv_freqs(cfg))  # [L, hd/2]
    rot = g3.Gemma3RotaryEmbedding(hf)
    for layer, kind in enumerate(hf.layer_types):
        np.testing.assert_allclose(tables[layer], getattr(rot, f"{kind}_inv_freq").numpy(),
                                   rtol=1e-6, atol=0)
    assert not np.allclose(tables[0], tables[1])
    assert transformer.layer_inv_freqs(models.from_hf_config(hf_config("gemma2").to_dict())) is None


def test_gemma_layer_patterns_and_legacy_layout_follow_transformers():
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=7,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=WINDOW,
                max_position_embeddings=256, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    g2 = transformers.Gemma2Config(**base)  # no layer_types: transformers' default alternation
    d2 = {k: v for k, v in g2.to_dict().items() if k != "layer_types"}
    assert models.from_hf_config(d2).layer_types == tuple(g2.layer_types)
    # Gemma 3's published config.json layout: rope_theta / rope_local_base_freq / rope_scaling /
    # sliding_window_pattern, as transformers 5 converts it.
    legacy = dict(base, model_type="gemma3_text", rope_theta=1e6, rope_local_base_freq=1e4,
                  rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=3)
    hf3 = transformers.Gemma3TextConfig(**{k: v for k, v in legacy.items() if k != "model_type"})
    ours = models.from_hf_config(legacy)
    assert ours == models.from_hf_config(hf3.to_dict())
    assert ours.layer_types == tuple(hf3.layer_types) and ours.rope_local_theta == 1e4
    assert ours.rope_scaling == models.config.RopeScaling(factor=8.0, rope_type="linear")


def test_multimodal_gemma3_loads_its_language_model(tmp_path, caplog):
    torch.manual_seed(0)
    text = hf_config("gemma3_text", tied=True)
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             image_size=32, patch_size=8)
    mm = transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                   mm_tokens_per_image=4, image_token_index=96, boi_token_index=94,
                                   eoi_token_index=95)
    hf = transformers.Gemma3ForConditionalGeneration(mm).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    assert cfg.model_type == "gemma3_text" and "multimodal" in caplog.text
    tokens, mask = _padded_tokens(6)
    tokens = np.minimum(tokens, 90)  # no image-token ids
    np.testing.assert_allclose(np.asarray(models.apply(cfg, params, tokens, mask=mask))[mask],
                               hf_logits(hf, tokens, mask)[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family,change,match", [
    ("gemma3_text", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation='gelu'"),
    ("llama", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ("gemma3_text", {"rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e4},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10.0}}},
     "sliding_attention"),
    ("llama", {"rope_local_base_freq": 10.0}, "rope_local_base_freq"),
])
def test_unsupported_gemma_options_are_refused_by_name(tmp_path, family, change, match):
    save_hf_model(family, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf.update(change)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=match):
        models.load_hf(tmp_path)


def test_cudnn_cannot_softcap():
    with pytest.raises(ValueError, match="attention_impl='cudnn' cannot soft-cap"):
        models.preset("gemma2_2b").replace(attention_impl="cudnn")
    assert transformer.attention_impl(models.preset("gemma2_2b"), jnp.bfloat16) == "xla"


def test_chunked_scoring_and_jsd_apply_the_final_cap(tmp_path):
    """The chunked log-softmax paths (scoring, every loss) see the same capped logits as `apply`
    (itself checked against HF above)."""
    from cliffdistill.engine import losses, scoring

    save_hf_model("gemma2", tmp_path)
    cfg, params = models.load_hf(tmp_path, dtype=jnp.float32)
    prompt, pmask = _padded_tokens(7, (2, 6), pad=2)
    comp = np.random.default_rng(8).integers(3, VOCAB, (2, 5))
    lp = scoring.score(cfg, params, prompt, pmask, comp, np.ones_like(comp, bool), vocab_chunk=10)
    full = models.apply(cfg, params, np.concatenate([prompt, comp], 1),
                        mask=np.concatenate([pmask, np.ones_like(comp, bool)], 1))
    ref = np.take_along_axis(np.asarray(jax.nn.log_softmax(full[:, 5:-1])), comp[..., None], -1)[..., 0]
    np.testing.assert_allclose(lp, ref, atol=1e-5, rtol=0)
    uncapped = scoring.score(cfg.replace(final_logit_softcapping=None), params, prompt, pmask, comp,
                             np.ones_like(comp, bool), vocab_chunk=10)
    assert np.abs(np.asarray(uncapped) - ref).max() > 1e-2

    rng = np.random.default_rng(9)
    hs, ht = (rng.standard_normal((2, 4, 8)).astype(np.float32) for _ in range(2))
    ws, wt = (rng.standard_normal((8, 23)).astype(np.float32) for _ in range(2))
    mask = np.ones((2, 4), bool)
    cap = lambda x, c: c * np.tanh(x / c)  # noqa: E731
    dense = losses.generalized_jsd(cap(hs @ ws, 2.0), cap(ht @ wt, 3.0), mask, 0.5)
    chunked = losses.generalized_jsd_chunked(hs, ws, ht, wt, mask, 0.5, 8, student_softcap=2.0,
                                             teacher_softcap=3.0)
    np.testing.assert_allclose(chunked, dense, rtol=1e-5)


@pytest.mark.parametrize("on_policy", ["sampled_rkl", "jsd"])
def test_a_gemma2_pair_trains_with_its_caps_everywhere(tiny_pair, tmp_path, on_policy):
    """A Gemma 2 student and teacher (strong caps) through the trainer: the update's chunked
    log-probs of the sampled tokens equal the sampler's (importance ratio 1 at step 0, LoRA B = 0),
    which fails if any path skips the final-logit cap."""
    import shutil

    from cliffdistill.run import assembly, loop
    from tests.tiny import tiny_model_config, tiny_run_config

    tok_dir = tiny_pair["student"]
    for name, layers, hidden, key in (("student", 2, 32, 1), ("teacher", 3, 48, 2)):
        base = models.load_hf_config(tiny_pair[name])
        cfg = tiny_model_config(base.vocab_size, base.eos_token_ids[0], base.pad_token_id, layers,
                                hidden, model_type="gemma2").replace(
            hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=8.0, attn_logit_softcapping=0.5,
            final_logit_softcapping=1.0, sliding_window=4,
            layer_types=models.config.gemma_layer_types(layers, 2))
        models.save_hf(cfg, models.init_params(cfg, jax.random.key(key)), tmp_path / name)
        for f in tok_dir.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, tmp_path / name / f.name)
    run = tiny_run_config(tiny_pair, "on_policy_gkd", steps=2)
    run.student.path, run.teacher.path = str(tmp_path / "student"), str(tmp_path / "teacher")
    run.loss.on_policy = on_policy
    s = assembly.make_setup(run)
    assert s.student_cfg.final_logit_softcapping == 1.0 and s.teacher_cfg.model_type == "gemma2"
    loop.run(run, tmp_path / "run", setup_obj=s, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss/total"]) for r in rows)
    if on_policy == "sampled_rkl":
        first = rows[0]
        assert abs(first["is/ratio_max"] - 1) < 1e-4 and abs(first["is/ratio_min"] - 1) < 1e-4


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_decode_reads_only_its_window(family):
    """A decode step on a sliding layer never reads the cache slots outside its window: they are
    poisoned with NaN (which a masked read would turn into NaN outputs, 0 * NaN) and the logits
    equal the clean cache's. Gemma 2 mixes layers: only its sliding layer 0 is poisoned."""
    cfg = models.from_hf_config(hf_config(family).to_dict())
    params = models.init_params(cfg, jax.random.key(0))
    tokens = np.random.default_rng(1).integers(3, VOCAB, (2, 12))
    mask = np.ones_like(tokens, bool)
    _, cache = transformer.prefill(cfg, params, tokens, mask, 16)
    old = np.arange(16) < 12 - (WINDOW - 1)  # slots before the last WINDOW - 1
    sliding = [i for i, t in enumerate(cfg.layer_types) if t == "sliding_attention"]
    poison = np.zeros(cache.v.shape, bool)
    poison[np.ix_(sliding, range(2), np.flatnonzero(old))] = True
    bad = cache._replace(v=jnp.where(poison, jnp.nan, cache.v), k=jnp.where(poison, jnp.nan, cache.k))
    tok, pos = jnp.asarray([5, 6]), jnp.asarray([12, 12])
    clean = transformer.decode_forward(cfg, params, tok, pos, cache)[0]
    got = transformer.decode_forward(cfg, params, tok, pos, bad)[0]
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(clean))
    full = _unwindowed(cfg)  # the same poison on a full-attention layer is read: NaN
    assert not np.isfinite(np.asarray(transformer.decode_forward(full, params, tok, pos, bad)[0])).all()
