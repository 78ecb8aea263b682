"""Mistral and Mixtral: one sliding window over every layer (or none); Mixtral's MLP is a mixture
of experts under the original checkpoint names (`block_sparse_moe`, w1/w3/w2)."""

from __future__ import annotations

from cliffdistill.models.families.family import Config, Family, Fields, HfConfig, window_fields


def from_hf(hf: HfConfig, num_layers: int, source: str) -> Fields:
    """`sliding_window` windows every layer; transformers ignores `layer_types` here, so we refuse
    it rather than read a pattern the reference would not run."""
    if hf.get("layer_types") is not None:
        raise ValueError(f"{source}: layer_types is not supported for model_type={hf['model_type']!r} "
                         "(transformers' Mistral/Mixtral ignore it: remove the field, or use a "
                         "family whose layers alternate)")
    return window_fields(hf.get("sliding_window"), ["sliding_attention"] * num_layers, num_layers,
                         source)


def to_hf(cfg: Config) -> Fields:
    """The one window; a config that windows only some layers has no Mistral spelling."""
    if cfg.has_sliding_layers and set(cfg.layer_types) != {"sliding_attention"}:
        raise ValueError(f"model_type={cfg.model_type!r} windows every layer or none; "
                         f"layer_types={cfg.layer_types} cannot be written")
    return dict(sliding_window=cfg.sliding_window)


def mixtral_from_hf(hf: HfConfig, num_layers: int, source: str) -> Fields:
    """Mixtral's router: softmax over all experts, top-k, always renormalised; the experts' width
    is `intermediate_size`."""
    windows = from_hf(hf, num_layers, source)
    if float(hf.get("router_jitter_noise", 0.0)) != 0.0:
        raise ValueError(f"{source}: router_jitter_noise={hf['router_jitter_noise']} is not "
                         "supported (training-time router noise); set it to 0.0")
    return dict(windows, num_experts=int(hf.get("num_local_experts", 8)),
                num_experts_per_tok=int(hf.get("num_experts_per_tok", 2)),
                moe_intermediate_size=int(hf["intermediate_size"]), norm_topk_prob=True)


def mixtral_to_hf(cfg: Config) -> Fields:
    """Mixtral's expert fields (its `intermediate_size` is the experts' width)."""
    return dict(to_hf(cfg), num_local_experts=cfg.num_experts,
                num_experts_per_tok=cfg.num_experts_per_tok,
                intermediate_size=cfg.moe_intermediate_size, router_jitter_noise=0.0)


MISTRAL = Family(model_type="mistral", architecture="MistralForCausalLM", from_hf=from_hf,
                 to_hf=to_hf)
# Mixtral checkpoints (and transformers 5's save_pretrained) keep the original tensor names.
MIXTRAL = Family(model_type="mixtral", architecture="MixtralForCausalLM", from_hf=mixtral_from_hf,
                 to_hf=mixtral_to_hf,
                 layer_keys={"router": ("block_sparse_moe.gate.weight", True)},
                 expert_keys={"gate_proj": "block_sparse_moe.experts.{e}.w1.weight",
                              "up_proj": "block_sparse_moe.experts.{e}.w3.weight",
                              "down_proj": "block_sparse_moe.experts.{e}.w2.weight"})
