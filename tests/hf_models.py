"""Tiny random HF (PyTorch) models of each supported family: the oracle for our JAX code."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

FAMILIES = ("llama", "qwen3", "qwen3_moe", "qwen2", "mistral", "mixtral", "gemma2", "gemma3_text")
GEMMA = ("gemma2", "gemma3_text")
WINDOW = 5  # sliding window of the windowed families: shorter than every test sequence
GEMMA2_CAPS = (0.02, 0.5)  # (attn_logit_softcapping, final_logit_softcapping) of the tiny Gemma 2


def hf_config(family: str, tied: bool = False, vocab: int = 97) -> transformers.PretrainedConfig:
    """GQA ratio 2, odd vocab size; Llama gets llama3 rope scaling, Qwen3-MoE and Mixtral 4 experts /
    top-2; Mistral and Mixtral window every layer, Qwen2 layers >= max_window_layers=1 (layer 0 full,
    layer 1 sliding: both kinds in one scan). Gemma 2: layer 0 sliding, layer 1 full, a score scale
    that is not head_dim's, attention and final-logit soft-caps small enough to bend these tiny
    models' values (GEMMA2_CAPS); Gemma 3: layer 0 sliding with the local RoPE base, layer 1 full
    with the global base and linear scaling, q/k norms."""
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  tie_word_embeddings=tied, max_position_embeddings=256, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return transformers.LlamaConfig(
            **common, rope_theta=500000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=16))
    if family == "qwen3":
        return transformers.Qwen3Config(**common, rope_theta=1e6)
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**common, rope_theta=1e6, num_experts=4,
                                           num_experts_per_tok=2, moe_intermediate_size=16,
                                           norm_topk_prob=True)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, rope_theta=1e6, use_sliding_window=True,
                                        sliding_window=WINDOW, max_window_layers=1)
    if family == "mistral":
        return transformers.MistralConfig(**common, rope_theta=1e6, sliding_window=WINDOW)
    if family == "gemma2":
        attn_cap, final_cap = GEMMA2_CAPS
        return transformers.Gemma2Config(**common, rope_theta=10000.0, query_pre_attn_scalar=2,
                                         sliding_window=WINDOW, attn_logit_softcapping=attn_cap,
                                         final_logit_softcapping=final_cap,
                                         hidden_activation="gelu_pytorch_tanh")
    if family == "gemma3_text":
        return transformers.Gemma3TextConfig(
            **common, query_pre_attn_scalar=6, sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                             "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                "rope_theta": 1e4}},
            hidden_activation="gelu_pytorch_tanh")
    if family == "mixtral":
        moe = {**common, "intermediate_size": 16}
        return transformers.MixtralConfig(**moe, rope_theta=1e6, sliding_window=WINDOW,
                                          num_local_experts=4, num_experts_per_tok=2)
    raise ValueError(family)


def make_hf_model(family: str, tied: bool = False, seed: int = 0, vocab: int = 97):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family, tied, vocab))
    unit = 0.0 if family in GEMMA else 1.0  # a Gemma norm scales by (1 + w)
    with torch.no_grad():  # non-trivial norm weights so a missing/misplaced norm shows up
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(unit + 0.1 * torch.randn_like(p))
    return model.float().eval()


def uncap_for_peaks(model):
    """Raises a tiny Gemma 2's final-logit cap to the real models' 30 before its logits are made
    peaked: a cap of 0.5 would saturate them (tanh = 1.0 for several tokens), and exact ties make
    greedy decoding depend on rounding, not on the model."""
    if getattr(model.config, "final_logit_softcapping", None) is not None:
        model.config.final_logit_softcapping = 30.0
    return model


def save_hf_model(family: str, path: Path, tied: bool = False, seed: int = 0, vocab: int = 97):
    model = make_hf_model(family, tied, seed, vocab)
    model.save_pretrained(path)
    return model


def hf_logits(model, tokens, attention_mask=None):
    with torch.no_grad():
        t = torch.as_tensor(tokens, dtype=torch.long)
        m = None if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        return model(input_ids=t, attention_mask=m).logits.float().numpy()
