"""Model configuration: one frozen dataclass for Llama 3.x, Qwen2/2.5, Qwen3, Qwen3-MoE, Mistral,
Mixtral, Gemma 2 and Gemma 3 (text, and the language model of a multimodal Gemma 3 checkpoint).

`ModelConfig` is hashable so it can be a *static* argument of jitted functions: two runs with the
same architecture share compiled code. It is built from an HF `config.json` (both the legacy
`rope_theta`/`rope_scaling` layout of published checkpoints and the `rope_parameters` layout that
transformers 5 writes) or from a named preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma2",
                         "gemma3_text")
GEMMA_TYPES = ("gemma2", "gemma3_text")
# A multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration): its `text_config` is loaded as
# a gemma3_text model and the vision tower is ignored (hf_io logs it).
MULTIMODAL_TEXT_TYPES = {"gemma3": "gemma3_text"}
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")
FULL_WINDOW = 1 << 30  # the per-layer window of a full-attention layer (longer than any sequence)
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: Llama 3.1's frequency-dependent `llama3` (all fields) or `linear`
    (every inverse frequency divided by `factor`: Gemma 3's global layers; the llama3 fields 0)."""

    factor: float
    low_freq_factor: float = 0.0
    high_freq_factor: float = 0.0
    original_max_position_embeddings: int = 0
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        if self.rope_type not in ("llama3", "linear"):
            raise ValueError(f"rope_type={self.rope_type!r}; expected 'llama3' or 'linear'")
        if self.factor <= 0:
            raise ValueError(f"rope scaling factor={self.factor} must be > 0")

    def to_hf(self) -> dict[str, Any]:
        if self.rope_type == "linear":
            return dict(rope_type="linear", factor=self.factor)
        return dict(rope_type="llama3", factor=self.factor, low_freq_factor=self.low_freq_factor,
                    high_freq_factor=self.high_freq_factor,
                    original_max_position_embeddings=self.original_max_position_embeddings)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str  # one of SUPPORTED_MODEL_TYPES
    vocab_size: int
    hidden_size: int  # D
    num_layers: int  # L
    num_heads: int  # Hq
    num_kv_heads: int  # Hkv (GQA when < Hq)
    head_dim: int  # hd
    intermediate_size: int  # F of the dense MLP
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"  # of the gated MLP: act(x @ gate) * (x @ up); one of ACTIVATIONS
    # Gemma: attention scores scaled by query_pre_attn_scalar**-0.5 instead of head_dim**-0.5
    # (None = head_dim); scores and final logits soft-capped as cap * tanh(x / cap) (None = off).
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    # Gemma 3: the RoPE base of the sliding layers (no scaling there); full-attention layers use
    # rope_theta and rope_scaling. None = one RoPE table for every layer.
    rope_local_theta: float | None = None
    # Sliding-window attention: a query at slot i sees slots j with i - sliding_window < j <= i on
    # the layers whose `layer_types[l]` is "sliding_attention". No windowed layer is spelled
    # sliding_window=None, layer_types=() (normalised by `from_hf_config`).
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    # Mixture of experts (qwen3_moe); num_experts == 0 means a dense MLP.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    # Tokenizer-side facts the sampler needs.
    # Logits cover token ids [0, real_vocab_size) when > 0: a checkpoint whose embedding is padded
    # past its tokenizer (Qwen2.5: 151,936 or 152,064 rows for 151,665 tokens) never samples or
    # scores a padded row, and two such checkpoints of one tokenizer get logits of one width.
    # Set by the run (config field `vocab_size`), never read from config.json; 0 = every row.
    real_vocab_size: int = 0
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # Implementation knobs, not architecture (never read from or written to config.json).
    # Full-sequence attention under the XLA implementation runs in query blocks of this many
    # tokens once a sequence is longer (memory [B, H, block, T] instead of [B, H, T, T]).
    attention_block: int = 1024
    # `jax.nn.dot_product_attention` implementation for prefill, scoring and training:
    # "xla" | "cudnn" (flash attention, bf16/fp16 only) | "auto" (cudnn on GPU for bf16/fp16
    # activations, xla otherwise). See `transformer.attention_impl`.
    attention_impl: str = "auto"
    # MoE "grouped" path: each expert takes up to ceil(factor * N * k / E) assignments per round
    # (N tokens, k of E experts each); an overflowing expert costs extra rounds, never a token.
    moe_capacity_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type={self.model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
        if self.attention_impl == "cudnn" and self.attn_logit_softcapping is not None:
            raise ValueError("attention_impl='cudnn' cannot soft-cap attention scores "
                             f"(attn_logit_softcapping={self.attn_logit_softcapping}); use 'auto' "
                             "or 'xla' (soft-capped layers run XLA attention)")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; supported: {ACTIVATIONS}")
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                     "rope_local_theta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value} must be > 0 (or None)")
        if self.moe_capacity_factor <= 0:
            raise ValueError(f"moe_capacity_factor={self.moe_capacity_factor} must be > 0")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                             f"num_hidden_layers={self.num_layers}")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"layer_types {unknown} are not supported; supported: {LAYER_TYPES}")
        if self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError(f"layer_types has sliding layers but sliding_window="
                             f"{self.sliding_window}; set a window >= 1")
        if not 0 <= self.real_vocab_size <= self.vocab_size:
            raise ValueError(f"real_vocab_size={self.real_vocab_size} must be in [0, vocab_size="
                             f"{self.vocab_size}] (0 = every embedding row is a token)")
        if self.is_moe and not (0 < self.num_experts_per_tok <= self.num_experts):
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts={self.num_experts}]"
            )

    @property
    def logit_vocab_size(self) -> int:
        """V of the logits [..., V]: the real tokens, the padded embedding rows cut off."""
        return self.real_vocab_size or self.vocab_size

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def qk_norm(self) -> bool:
        """Qwen3 and Gemma 3 normalise q and k per head before RoPE; Llama does not."""
        return self.model_type in ("qwen3", "qwen3_moe", "gemma3_text")

    @property
    def is_gemma(self) -> bool:
        """Gemma's blocks: (1 + w) RMSNorms in fp32, embeddings scaled by sqrt(hidden_size), and a
        norm after attention and after the MLP as well as before each (`post_attn_norm`,
        `post_mlp_norm`)."""
        return self.model_type in GEMMA_TYPES

    @property
    def attn_scale(self) -> float:
        """The factor of q . k in attention scores."""
        return 1.0 / math.sqrt(self.query_pre_attn_scalar or self.head_dim)  # as jax's default

    @property
    def per_layer_rope(self) -> bool:
        """Sliding and full layers use different RoPE tables (Gemma 3)."""
        return self.rope_local_theta is not None and self.has_sliding_layers

    @property
    def has_sliding_layers(self) -> bool:
        return "sliding_attention" in self.layer_types

    def layer_windows(self) -> tuple[int, ...]:
        """Per-layer attention window [L]: `sliding_window` on sliding layers, FULL_WINDOW else."""
        if not self.has_sliding_layers:
            return (FULL_WINDOW,) * self.num_layers
        return tuple(self.sliding_window if t == "sliding_attention" else FULL_WINDOW
                     for t in self.layer_types)

    @property
    def qkv_bias(self) -> bool:
        """Qwen2 adds a bias to the q/k/v projections (never to o_proj)."""
        return self.model_type == "qwen2"

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


# --------------------------------------------------------------------------- HF config.json


def _scaling_from_hf(scaling: dict[str, Any] | None, source: str) -> RopeScaling | None:
    """One RoPE scaling dict (rope_scaling, or a rope_parameters entry) -> RopeScaling | None."""
    if not scaling:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"{source}: rope scaling type {rope_type!r} is not supported "
            f"(supported: {SUPPORTED_ROPE_TYPES}); field rope_scaling/rope_parameters"
        )
    try:
        if rope_type == "linear":
            return RopeScaling(factor=float(scaling["factor"]), rope_type="linear")
        return RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ValueError(f"{source}: {rope_type} rope scaling is missing field {e.args[0]!r}") from None


def _rope_from_hf(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None, float | None]:
    """(rope_theta, scaling, local theta) from either HF layout; unknown scaling types are refused.

    Layouts: legacy `rope_theta` + `rope_scaling` (+ Gemma 3's `rope_local_base_freq`), or
    transformers 5's `rope_parameters` -- one dict, or (Gemma 3) one per layer type.
    """
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:  # per layer type
        full = params.get("full_attention") or {}
        local = params.get("sliding_attention") or {}
        if _scaling_from_hf(local, source) is not None:
            raise ValueError(f"{source}: rope scaling on sliding_attention layers is not supported "
                             f"(rope_parameters.sliding_attention={local})")
        theta = full.get("rope_theta", hf.get("rope_theta", 10000.0))
        local_theta = local.get("rope_theta", hf.get("rope_local_base_freq"))
        return (float(theta), _scaling_from_hf(full, source),
                None if local_theta is None else float(local_theta))
    scaling = hf.get("rope_scaling") or None
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    local_theta = hf.get("rope_local_base_freq")
    return (float(theta), _scaling_from_hf(scaling, source),
            None if local_theta is None else float(local_theta))


def _as_tuple(x: Any) -> tuple[int, ...]:
    if x is None:
        return ()
    return tuple(int(v) for v in x) if isinstance(x, (list, tuple)) else (int(x),)


def _windows_from_hf(hf: dict[str, Any], model_type: str, num_layers: int, source: str
                     ) -> tuple[int | None, tuple[str, ...]]:
    """(sliding_window, layer_types) exactly as transformers derives them per family; no windowed
    layer normalises to (None, ())."""
    if model_type in ("mistral", "mixtral"):
        if hf.get("layer_types") is not None:
            raise ValueError(f"{source}: layer_types is not supported for model_type={model_type!r} "
                             "(transformers' Mistral/Mixtral ignore it: remove the field, or use a "
                             "family whose layers alternate)")
        window = hf.get("sliding_window")
        types = ["sliding_attention"] * num_layers
    elif model_type == "qwen2":
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        first = int(hf.get("max_window_layers", 28))
        types = hf.get("layer_types") or ["sliding_attention" if i >= first else "full_attention"
                                          for i in range(num_layers)]
    elif model_type in GEMMA_TYPES:
        # transformers' defaults: Gemma 2 alternates sliding/full from layer 0; Gemma 3 makes every
        # `sliding_window_pattern`-th layer (default 6) full.
        pattern = 2 if model_type == "gemma2" else int(hf.get("sliding_window_pattern", 6))
        window = hf.get("sliding_window", 4096)
        types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else
                                          "full_attention" for i in range(num_layers)]
    else:
        if hf.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported for "
                             f"model_type={model_type!r}; set it to false")
        return None, ()
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"{source}: layer_types {unknown} are not supported; supported: {LAYER_TYPES}")
    if len(types) != num_layers:
        raise ValueError(f"{source}: layer_types has {len(types)} entries for "
                         f"num_hidden_layers={num_layers}")
    if window is None or "sliding_attention" not in types:
        return None, ()
    return int(window), tuple(types)


def _moe_from_hf(hf: dict[str, Any], model_type: str, source: str) -> dict[str, Any]:
    """The MoE fields of `ModelConfig` (empty for dense families)."""
    if model_type == "qwen3_moe":
        if hf.get("mlp_only_layers") or int(hf.get("decoder_sparse_step", 1)) != 1:
            raise ValueError(
                f"{source}: mixed dense/MoE layers (mlp_only_layers, decoder_sparse_step != 1) "
                "are not supported; every layer must be MoE"
            )
        return dict(
            num_experts=int(hf.get("num_experts", hf.get("num_local_experts", 0))),
            num_experts_per_tok=int(hf["num_experts_per_tok"]),
            moe_intermediate_size=int(hf["moe_intermediate_size"]),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        )
    if model_type == "mixtral":
        if float(hf.get("router_jitter_noise", 0.0)) != 0.0:
            raise ValueError(f"{source}: router_jitter_noise={hf['router_jitter_noise']} is not "
                             "supported (training-time router noise); set it to 0.0")
        # Mixtral's router: softmax over all experts, top-k, always renormalised.
        return dict(num_experts=int(hf.get("num_local_experts", 8)),
                    num_experts_per_tok=int(hf.get("num_experts_per_tok", 2)),
                    moe_intermediate_size=int(hf["intermediate_size"]), norm_topk_prob=True)
    return {}


def text_config(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The language model's config of a multimodal checkpoint (its `text_config`), else `hf`."""
    model_type = hf.get("model_type")
    if model_type not in MULTIMODAL_TEXT_TYPES:
        return hf
    text = dict(hf.get("text_config") or {})
    if not text:
        raise ValueError(f"{source}: model_type={model_type!r} has no text_config")
    text.setdefault("model_type", MULTIMODAL_TEXT_TYPES[model_type])
    if text["model_type"] != MULTIMODAL_TEXT_TYPES[model_type]:
        raise ValueError(f"{source}: text_config.model_type={text['model_type']!r}; expected "
                         f"{MULTIMODAL_TEXT_TYPES[model_type]!r}")
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
        if k not in text and hf.get(k) is not None:
            text[k] = hf[k]
    return text


def _gemma_from_hf(hf: dict[str, Any], model_type: str, source: str) -> dict[str, Any]:
    """The Gemma-only fields of `ModelConfig` (empty for other families)."""
    if model_type not in GEMMA_TYPES:
        return {}
    if hf.get("use_bidirectional_attention"):
        raise ValueError(f"{source}: use_bidirectional_attention=true is not supported "
                         "(a causal language model is required); set it to false")
    # transformers' defaults for a field the file omits (an explicit null turns a cap off).
    caps = (50.0, 30.0) if model_type == "gemma2" else (None, None)
    opt = lambda k, d: None if hf.get(k, d) is None else float(hf.get(k, d))  # noqa: E731
    return dict(query_pre_attn_scalar=opt("query_pre_attn_scalar", 256),
                attn_logit_softcapping=opt("attn_logit_softcapping", caps[0]),
                final_logit_softcapping=opt("final_logit_softcapping", caps[1]))


def _hidden_act(hf: dict[str, Any], model_type: str, source: str) -> str:
    """Gemma names its MLP activation `hidden_activation` (older files: `hidden_act`)."""
    if model_type in GEMMA_TYPES:
        field = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
        act, allowed = hf.get(field) or "gelu_pytorch_tanh", ("gelu_pytorch_tanh",)
    else:
        field, act, allowed = "hidden_act", hf.get("hidden_act", "silu"), ("silu",)
    if act not in allowed:
        raise ValueError(f"{source}: {field}={act!r} is not supported for "
                         f"model_type={model_type!r}; supported: {allowed}")
    return act


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Builds a `ModelConfig` from a parsed HF `config.json` dict; `source` names it in errors.
    A multimodal checkpoint's language model is read from its `text_config`."""
    hf = text_config(hf, source)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type={model_type!r} is not supported; supported: "
            f"{SUPPORTED_MODEL_TYPES + tuple(MULTIMODAL_TEXT_TYPES)}"
        )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{source}: attention_bias/mlp_bias=true is not supported")
    hidden_act = _hidden_act(hf, model_type, source)
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor={hf['partial_rotary_factor']} is not "
                         "supported (RoPE over the whole head only)")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ValueError(f"{source}: missing required field(s) {missing}")
    num_heads = int(hf["num_attention_heads"])
    num_layers = int(hf["num_hidden_layers"])
    theta, scaling, local_theta = _rope_from_hf(hf, source)
    if local_theta is not None and model_type != "gemma3_text":
        raise ValueError(f"{source}: a separate sliding-layer RoPE base (rope_local_base_freq / "
                         f"rope_parameters.sliding_attention) is not supported for "
                         f"model_type={model_type!r}")
    window, layer_types = _windows_from_hf(hf, model_type, num_layers, source)
    return ModelConfig(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // num_heads),
        intermediate_size=int(hf.get("intermediate_size", 0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type in GEMMA_TYPES)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        hidden_act=hidden_act,
        # transformers' Gemma 3 default local base when a file names none.
        rope_local_theta=(local_theta or 10000.0) if model_type == "gemma3_text" else None,
        sliding_window=window,
        layer_types=layer_types,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_as_tuple(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
        **_moe_from_hf(hf, model_type, source),
        **_gemma_from_hf(hf, model_type, source),
    )


def load_hf_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no config.json (is this an HF checkpoint directory?)")
    try:
        hf = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    return from_hf_config(hf, source=str(file))


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "mixtral": "MixtralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                  "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}


def _windows_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The sliding-window fields of config.json that make transformers derive `cfg.layer_types`."""
    if cfg.model_type in ("mistral", "mixtral"):
        if cfg.has_sliding_layers and set(cfg.layer_types) != {"sliding_attention"}:
            raise ValueError(f"model_type={cfg.model_type!r} windows every layer or none; "
                             f"layer_types={cfg.layer_types} cannot be written")
        return dict(sliding_window=cfg.sliding_window)
    if cfg.model_type == "qwen2":
        if not cfg.has_sliding_layers:
            return dict(use_sliding_window=False, sliding_window=None,
                        max_window_layers=cfg.num_layers)
        return dict(use_sliding_window=True, sliding_window=cfg.sliding_window,
                    max_window_layers=cfg.layer_types.index("sliding_attention"),
                    layer_types=list(cfg.layer_types))
    if cfg.is_gemma:  # layer_types written out: no pattern default is relied on
        return dict(sliding_window=cfg.sliding_window,
                    layer_types=list(cfg.layer_types or ("full_attention",) * cfg.num_layers))
    if cfg.has_sliding_layers:
        raise ValueError(f"model_type={cfg.model_type!r} has no sliding-window layers; "
                         f"layer_types={cfg.layer_types} cannot be written")
    return {}


def to_hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The HF `config.json` for `cfg`, in the legacy rope layout every transformers version reads."""
    hf: dict[str, Any] = dict(
        architectures=[_ARCHITECTURES[cfg.model_type]],
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.intermediate_size,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_act=cfg.hidden_act,
        attention_bias=False,
        torch_dtype=dtype,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=(list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1
                      else (cfg.eos_token_ids[0] if cfg.eos_token_ids else None)),
        pad_token_id=cfg.pad_token_id,
    )
    if cfg.model_type == "llama":
        hf["mlp_bias"] = False
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = cfg.rope_scaling.to_hf()
    hf.update(_windows_to_hf(cfg))
    if cfg.is_gemma:
        scalar = cfg.query_pre_attn_scalar or cfg.head_dim  # an int in transformers' configs
        hf.update(hidden_activation=cfg.hidden_act,
                  query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
                  attn_logit_softcapping=cfg.attn_logit_softcapping,
                  final_logit_softcapping=cfg.final_logit_softcapping)
    if cfg.model_type == "gemma3_text":
        hf["rope_local_base_freq"] = cfg.rope_local_theta or cfg.rope_theta
    if cfg.model_type == "mixtral":
        hf.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                  intermediate_size=cfg.moe_intermediate_size, router_jitter_noise=0.0)
    elif cfg.is_moe:
        hf.update(
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            moe_intermediate_size=cfg.moe_intermediate_size,
            norm_topk_prob=cfg.norm_topk_prob,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    return hf


# --------------------------------------------------------------------------- presets

_LLAMA3_ROPE = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)

# What the presets of one family share (each preset adds its sizes).
_LLAMA3 = dict(model_type="llama", vocab_size=128256, num_kv_heads=8, head_dim=128,
               rms_norm_eps=1e-5, rope_theta=5e5, rope_scaling=_LLAMA3_ROPE,
               max_position_embeddings=131072, bos_token_id=128000,
               eos_token_ids=(128001, 128008, 128009))
_QWEN25 = dict(model_type="qwen2", vocab_size=152064, num_kv_heads=8, head_dim=128,
               rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
               eos_token_ids=(151645,), pad_token_id=151643)

def gemma_layer_types(n_layers: int, period: int) -> tuple[str, ...]:
    """Gemma's layer pattern: every `period`-th layer full attention, the others sliding."""
    return tuple("sliding_attention" if (i + 1) % period else "full_attention"
                 for i in range(n_layers))


_GEMMA2 = dict(model_type="gemma2", vocab_size=256000, rms_norm_eps=1e-6, rope_theta=10000.0,
               tie_word_embeddings=True, max_position_embeddings=8192, hidden_act="gelu_pytorch_tanh",
               attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
               bos_token_id=2, eos_token_ids=(1, 107), pad_token_id=0)
_GEMMA3 = dict(model_type="gemma3_text", rms_norm_eps=1e-6, rope_theta=1e6, rope_local_theta=1e4,
               tie_word_embeddings=True, hidden_act="gelu_pytorch_tanh", bos_token_id=2,
               eos_token_ids=(1, 106), pad_token_id=0)

PRESETS: dict[str, ModelConfig] = {
    # Qwen/Qwen3-4B-Instruct-2507 (tied embeddings).
    "qwen3_4b": ModelConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=2560, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=9728, rms_norm_eps=1e-6, rope_theta=5e6,
        tie_word_embeddings=True, max_position_embeddings=262144, eos_token_ids=(151645,),
        pad_token_id=151643),
    # Qwen/Qwen3-30B-A3B-Instruct-2507: 128 experts, 8 active, every layer MoE.
    "qwen3_30b_a3b": ModelConfig(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, num_layers=48, num_heads=32,
        num_kv_heads=4, head_dim=128, intermediate_size=6144, rms_norm_eps=1e-6, rope_theta=1e7,
        max_position_embeddings=262144, num_experts=128, num_experts_per_tok=8,
        moe_intermediate_size=768, norm_topk_prob=True, eos_token_ids=(151645,),
        pad_token_id=151643),
    # meta-llama/Llama-3.1-8B-Instruct, Llama-3.3-70B-Instruct (Llama-3.1-70B-Instruct has the
    # same architecture) and Llama-3.1-405B-Instruct.
    "llama31_8b": ModelConfig(**_LLAMA3, hidden_size=4096, num_layers=32, num_heads=32,
                              intermediate_size=14336),
    "llama33_70b": ModelConfig(**_LLAMA3, hidden_size=8192, num_layers=80, num_heads=64,
                               intermediate_size=28672),
    "llama31_405b": ModelConfig(**_LLAMA3, hidden_size=16384, num_layers=126, num_heads=128,
                                intermediate_size=53248),
    # Qwen/Qwen2.5-32B-Instruct and Qwen/Qwen2.5-72B-Instruct: q/k/v biases, the embedding
    # padded to 152,064 rows for 151,665 tokens (config field `vocab_size` cuts the logits).
    "qwen25_32b": ModelConfig(**_QWEN25, hidden_size=5120, num_layers=64, num_heads=40,
                              intermediate_size=27648),
    "qwen25_72b": ModelConfig(**_QWEN25, hidden_size=8192, num_layers=80, num_heads=64,
                              intermediate_size=29568),
    # google/gemma-2-2b-it and google/gemma-2-27b-it: sliding (4,096) and full layers alternate.
    "gemma2_2b": ModelConfig(**_GEMMA2, hidden_size=2304, num_layers=26, num_heads=8,
                             num_kv_heads=4, head_dim=256, intermediate_size=9216,
                             query_pre_attn_scalar=256.0, layer_types=gemma_layer_types(26, 2)),
    "gemma2_27b": ModelConfig(**_GEMMA2, hidden_size=4608, num_layers=46, num_heads=32,
                              num_kv_heads=16, head_dim=128, intermediate_size=36864,
                              query_pre_attn_scalar=144.0, layer_types=gemma_layer_types(46, 2)),
    # google/gemma-3-1b-it and the language model of google/gemma-3-27b-it: five sliding layers
    # per full one; the 27B's embedding has 64 more rows (image tokens) than the 1B's.
    "gemma3_1b": ModelConfig(**_GEMMA3, vocab_size=262144, hidden_size=1152, num_layers=26,
                             num_heads=4, num_kv_heads=1, head_dim=256, intermediate_size=6912,
                             query_pre_attn_scalar=256.0, sliding_window=512,
                             layer_types=gemma_layer_types(26, 6), max_position_embeddings=32768),
    "gemma3_27b": ModelConfig(**_GEMMA3, vocab_size=262208, hidden_size=5376, num_layers=62,
                              num_heads=32, num_kv_heads=16, head_dim=128, intermediate_size=21504,
                              query_pre_attn_scalar=168.0, sliding_window=1024,
                              layer_types=gemma_layer_types(62, 6), max_position_embeddings=131072,
                              rope_scaling=RopeScaling(factor=8.0, rope_type="linear")),
    # mistralai/Mistral-7B-Instruct-v0.2 (no sliding window; the Mixtral tokenizer, 32,000).
    "mistral_7b": ModelConfig(
        model_type="mistral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, rms_norm_eps=1e-5, rope_theta=1e6,
        max_position_embeddings=32768, bos_token_id=1, eos_token_ids=(2,)),
    # mistralai/Mixtral-8x7B-Instruct-v0.1: 8 experts, 2 active, every layer MoE.
    "mixtral_8x7b": ModelConfig(
        model_type="mixtral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, rms_norm_eps=1e-5, rope_theta=1e6,
        max_position_embeddings=32768, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=14336, norm_topk_prob=True, bos_token_id=1, eos_token_ids=(2,)),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


def rope_inv_freq(cfg: ModelConfig, layer_type: str = "full_attention") -> "list[float]":
    """Inverse RoPE frequencies [hd/2] of a layer of `layer_type`: a Gemma 3 sliding layer uses
    `rope_local_theta` unscaled; every other layer `rope_theta` with `rope_scaling` applied."""
    dim = cfg.head_dim
    local = layer_type == "sliding_attention" and cfg.rope_local_theta is not None
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv = [1.0 / (theta ** (2 * i / dim)) for i in range(dim // 2)]
    s = None if local else cfg.rope_scaling
    if s is None:
        return inv
    if s.rope_type == "linear":
        return [f / s.factor for f in inv]
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor)
            out.append((1 - smooth) * f / s.factor + smooth * f)
    return out
