"""FLOP accounting shared by the trainer (MFU, cost) and the GPU benchmark.

Lean on purpose (no ml_collections/optax): the benchmark imports it on GPU hosts that lack them.
"""

from __future__ import annotations

from cliffdistill.models.config import ModelConfig

# bf16 dense peak FLOP/s per chip (vendor figures), matched against `device_kind` by substring.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "TPU v6": 918e12,
              "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12}


def peak_flops(device_kind: str, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device, `override` if set; None for unknown devices (e.g. CPU)."""
    if override:
        return float(override)
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


def active_params(cfg: ModelConfig) -> int:
    """Parameters touched per token (MoE: only the k routed experts), excluding the embedding
    lookup and including the unembedding matmul."""
    D, L, hd = cfg.hidden_size, cfg.num_layers, cfg.head_dim
    attn = D * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    if cfg.is_moe:
        mlp = 3 * D * cfg.moe_intermediate_size * cfg.num_experts_per_tok + D * cfg.num_experts
    else:
        mlp = 3 * D * cfg.intermediate_size
    return L * (attn + mlp) + D * cfg.logit_vocab_size  # the unembedding computed (padded rows cut)
