"""Qwen3 and Qwen3-MoE: q/k norms; Qwen3-MoE makes every layer's MLP a routed mixture of experts."""

from __future__ import annotations

from cliffdistill.models.families.family import (Config, Family, Fields, HfConfig,
                                                 unwindowed_from_hf, unwindowed_to_hf)


def moe_from_hf(hf: HfConfig, num_layers: int, source: str) -> Fields:
    """The experts, k of them per token; a file mixing dense and MoE layers is refused."""
    windows = unwindowed_from_hf(hf, num_layers, source)
    if hf.get("mlp_only_layers") or int(hf.get("decoder_sparse_step", 1)) != 1:
        raise ValueError(
            f"{source}: mixed dense/MoE layers (mlp_only_layers, decoder_sparse_step != 1) "
            "are not supported; every layer must be MoE"
        )
    return dict(
        windows,
        num_experts=int(hf.get("num_experts", hf.get("num_local_experts", 0))),
        num_experts_per_tok=int(hf["num_experts_per_tok"]),
        moe_intermediate_size=int(hf["moe_intermediate_size"]),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
    )


def moe_to_hf(cfg: Config) -> Fields:
    """The expert fields, every layer sparse (the only layout `moe_from_hf` reads); none for a
    config without experts."""
    windows = unwindowed_to_hf(cfg)
    if not cfg.is_moe:
        return windows
    return dict(
        windows,
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.moe_intermediate_size,
        norm_topk_prob=cfg.norm_topk_prob,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


QWEN3 = Family(model_type="qwen3", architecture="Qwen3ForCausalLM", qk_norm=True)
QWEN3_MOE = Family(model_type="qwen3_moe", architecture="Qwen3MoeForCausalLM", qk_norm=True,
                   from_hf=moe_from_hf, to_hf=moe_to_hf)
