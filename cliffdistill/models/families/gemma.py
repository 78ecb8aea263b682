"""Gemma 2 and Gemma 3 (text, and the language model of a multimodal Gemma 3 checkpoint).

Both: GeGLU (`gelu_pytorch_tanh`, named `hidden_activation`), (1 + w) norms before and after
attention and the MLP, tied embeddings, a score scale of `query_pre_attn_scalar`, sliding and full
layers in a pattern. Gemma 2 soft-caps attention scores and logits and alternates sliding/full;
Gemma 3 normalises q and k, makes every `sliding_window_pattern`-th layer full and gives the
sliding layers their own RoPE base.
"""

from __future__ import annotations

from cliffdistill.models.families.family import (Config, Family, Fields, HfConfig, activation,
                                                 window_fields)

GELU = "gelu_pytorch_tanh"
# Gemma's `post_attention_layernorm` normalises the attention *output*; its pre-MLP norm is
# `pre_feedforward_layernorm` (Llama's post_attention_layernorm plays that role).
NORMS = {"mlp_norm": ("pre_feedforward_layernorm.weight", False),
         "post_attn_norm": ("post_attention_layernorm.weight", False),
         "post_mlp_norm": ("post_feedforward_layernorm.weight", False)}


def gemma_layer_types(n_layers: int, period: int) -> tuple[str, ...]:
    """Gemma's layer pattern: every `period`-th layer full attention, the others sliding."""
    return tuple("sliding_attention" if (i + 1) % period else "full_attention"
                 for i in range(n_layers))


def hidden_act(hf: HfConfig, source: str) -> str:
    """Gemma names its MLP activation `hidden_activation` (older files: `hidden_act`)."""
    field = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
    return activation(hf, source, field, hf.get(field) or GELU, (GELU,))


def from_hf(hf: HfConfig, num_layers: int, source: str, period: int,
            caps: tuple[float | None, float | None]) -> Fields:
    """Windows (`period`: transformers' default pattern where the file lists no layer_types) and
    the Gemma fields, with transformers' defaults for a field the file omits (`caps`: attention
    and final-logit caps; an explicit null turns a cap off)."""
    windows = window_fields(hf.get("sliding_window", 4096),
                            hf.get("layer_types") or gemma_layer_types(num_layers, period),
                            num_layers, source)
    if hf.get("use_bidirectional_attention"):
        raise ValueError(f"{source}: use_bidirectional_attention=true is not supported "
                         "(a causal language model is required); set it to false")

    def opt(key: str, default: float | None) -> float | None:
        return None if hf.get(key, default) is None else float(hf.get(key, default))

    return dict(windows, query_pre_attn_scalar=opt("query_pre_attn_scalar", 256),
                attn_logit_softcapping=opt("attn_logit_softcapping", caps[0]),
                final_logit_softcapping=opt("final_logit_softcapping", caps[1]))


def gemma2_from_hf(hf: HfConfig, num_layers: int, source: str) -> Fields:
    return from_hf(hf, num_layers, source, period=2, caps=(50.0, 30.0))


def gemma3_from_hf(hf: HfConfig, num_layers: int, source: str) -> Fields:
    return from_hf(hf, num_layers, source, period=int(hf.get("sliding_window_pattern", 6)),
                   caps=(None, None))


def to_hf(cfg: Config) -> Fields:
    """layer_types written out (no pattern default is relied on) and the Gemma fields; the score
    scalar as an int where it is one, as in transformers' configs."""
    scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    return dict(sliding_window=cfg.sliding_window,
                layer_types=list(cfg.layer_types or ("full_attention",) * cfg.num_layers),
                hidden_activation=cfg.hidden_act,
                query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
                attn_logit_softcapping=cfg.attn_logit_softcapping,
                final_logit_softcapping=cfg.final_logit_softcapping)


def gemma3_to_hf(cfg: Config) -> Fields:
    return dict(to_hf(cfg), rope_local_base_freq=cfg.rope_local_theta or cfg.rope_theta)


GEMMA2 = Family(model_type="gemma2", architecture="Gemma2ForCausalLM", hidden_act=hidden_act,
                from_hf=gemma2_from_hf, to_hf=to_hf, tie_word_embeddings=True, is_gemma=True,
                layer_keys=NORMS)
GEMMA3_TEXT = Family(model_type="gemma3_text", architecture="Gemma3ForCausalLM",
                     hidden_act=hidden_act, from_hf=gemma3_from_hf, to_hf=gemma3_to_hf,
                     tie_word_embeddings=True, rope_local_theta=10000.0, qk_norm=True,
                     is_gemma=True, multimodal=("gemma3",), layer_keys=NORMS)
