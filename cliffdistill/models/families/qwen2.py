"""Qwen2 / Qwen2.5: q/k/v biases; with `use_sliding_window`, the layers from `max_window_layers` on
are windowed."""

from __future__ import annotations

from cliffdistill.models.families.family import Config, Family, Fields, HfConfig, window_fields


def from_hf(hf: HfConfig, num_layers: int, source: str) -> Fields:
    """The windowed layers exactly as transformers' Qwen2Config derives them."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    first = int(hf.get("max_window_layers", 28))
    types = hf.get("layer_types") or ["sliding_attention" if i >= first else "full_attention"
                                      for i in range(num_layers)]
    return window_fields(window, types, num_layers, source)


def to_hf(cfg: Config) -> Fields:
    """The window fields that make transformers derive `cfg.layer_types` (written out too)."""
    if not cfg.has_sliding_layers:
        return dict(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
    return dict(use_sliding_window=True, sliding_window=cfg.sliding_window,
                max_window_layers=cfg.layer_types.index("sliding_attention"),
                layer_types=list(cfg.layer_types))


QWEN2 = Family(model_type="qwen2", architecture="Qwen2ForCausalLM", qkv_bias=True,
               from_hf=from_hf, to_hf=to_hf)
