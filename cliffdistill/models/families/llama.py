"""Llama 3.x: the plain decoder (SiLU, no windows, dense, untied) the other families vary."""

from __future__ import annotations

from cliffdistill.models.families.family import Config, Family, Fields, unwindowed_to_hf


def to_hf(cfg: Config) -> Fields:
    """transformers' Llama alone has an `mlp_bias` switch (off: our MLP has none)."""
    return dict(mlp_bias=False, **unwindowed_to_hf(cfg))


LLAMA = Family(model_type="llama", architecture="LlamaForCausalLM", to_hf=to_hf)
