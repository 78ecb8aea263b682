"""Tiny random HF (PyTorch) models of each supported family: the oracle for our JAX code."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

FAMILIES = ("llama", "qwen3", "qwen3_moe", "qwen2", "mistral", "mixtral")
WINDOW = 5  # sliding window of the windowed families: shorter than every test sequence


def hf_config(family: str, tied: bool = False, vocab: int = 97) -> transformers.PretrainedConfig:
    """GQA ratio 2, odd vocab size; Llama gets llama3 rope scaling, Qwen3-MoE and Mixtral 4 experts /
    top-2; Mistral and Mixtral window every layer, Qwen2 layers >= max_window_layers=1 (layer 0 full,
    layer 1 sliding: both kinds in one scan)."""
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
    if family == "mixtral":
        moe = {**common, "intermediate_size": 16}
        return transformers.MixtralConfig(**moe, rope_theta=1e6, sliding_window=WINDOW,
                                          num_local_experts=4, num_experts_per_tok=2)
    raise ValueError(family)


def make_hf_model(family: str, tied: bool = False, seed: int = 0, vocab: int = 97):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family, tied, vocab))
    with torch.no_grad():  # non-trivial norm weights so a missing/misplaced norm shows up
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.float().eval()


def save_hf_model(family: str, path: Path, tied: bool = False, seed: int = 0, vocab: int = 97):
    model = make_hf_model(family, tied, seed, vocab)
    model.save_pretrained(path)
    return model


def hf_logits(model, tokens, attention_mask=None):
    with torch.no_grad():
        t = torch.as_tensor(tokens, dtype=torch.long)
        m = None if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        return model(input_ids=t, attention_mask=m).logits.float().numpy()
