"""Model configuration: one frozen dataclass for Llama 3.x, Qwen2/2.5, Qwen3, Qwen3-MoE, Mistral,
Mixtral, Gemma 2 and Gemma 3 (text, and the language model of a multimodal Gemma 3 checkpoint).
What tells the families apart is read from their modules in `families/` (the registry); this
module is the same for every family.

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

from cliffdistill.models import families
from cliffdistill.models.families.family import LAYER_TYPES, Family
from cliffdistill.models.families.gemma import gemma_layer_types

# The built-in families, in registration order (`families.FAMILIES` also holds any registered
# later; every check below asks the registry).
SUPPORTED_MODEL_TYPES = tuple(families.FAMILIES)
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
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
    model_type: str  # a registered family (families.FAMILIES)
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
        families.family(self.model_type)  # refuses an unregistered model_type
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
    def family(self) -> Family:
        """The registered family of `model_type`: its decoder switches and checkpoint names."""
        return families.family(self.model_type)

    @property
    def qk_norm(self) -> bool:
        """Qwen3 and Gemma 3 normalise q and k per head before RoPE; Llama does not."""
        return self.family.qk_norm

    @property
    def is_gemma(self) -> bool:
        """Gemma's blocks: (1 + w) RMSNorms in fp32, embeddings scaled by sqrt(hidden_size), and a
        norm after attention and after the MLP as well as before each (`post_attn_norm`,
        `post_mlp_norm`)."""
        return self.family.is_gemma

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
        return self.family.qkv_bias

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


def text_config(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The language model's config of a multimodal checkpoint (its `text_config`), else `hf`."""
    model_type = hf.get("model_type")
    text_type = families.multimodal_text_types().get(model_type)
    if text_type is None:
        return hf
    text = dict(hf.get("text_config") or {})
    if not text:
        raise ValueError(f"{source}: model_type={model_type!r} has no text_config")
    text.setdefault("model_type", text_type)
    if text["model_type"] != text_type:
        raise ValueError(f"{source}: text_config.model_type={text['model_type']!r}; expected "
                         f"{text_type!r}")
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
        if k not in text and hf.get(k) is not None:
            text[k] = hf[k]
    return text


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Builds a `ModelConfig` from a parsed HF `config.json` dict; `source` names it in errors.
    A multimodal checkpoint's language model is read from its `text_config`."""
    hf = text_config(hf, source)
    model_type = hf.get("model_type")
    if model_type not in families.FAMILIES:
        raise ValueError(
            f"{source}: model_type={model_type!r} is not supported; supported: "
            f"{tuple(families.FAMILIES) + tuple(families.multimodal_text_types())}"
        )
    fam = families.FAMILIES[model_type]
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{source}: attention_bias/mlp_bias=true is not supported")
    hidden_act = fam.hidden_act(hf, source)
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
    if local_theta is not None and fam.rope_local_theta is None:
        raise ValueError(f"{source}: a separate sliding-layer RoPE base (rope_local_base_freq / "
                         f"rope_parameters.sliding_attention) is not supported for "
                         f"model_type={model_type!r}")
    family_fields = fam.from_hf(hf, num_layers, source)
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
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", fam.tie_word_embeddings)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        hidden_act=hidden_act,
        rope_local_theta=(None if fam.rope_local_theta is None
                          else local_theta or fam.rope_local_theta),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_as_tuple(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
        **family_fields,
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


def to_hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The HF `config.json` for `cfg`, in the legacy rope layout every transformers version reads."""
    hf: dict[str, Any] = dict(
        architectures=[cfg.family.architecture],
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
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = cfg.rope_scaling.to_hf()
    hf.update(cfg.family.to_hf(cfg))
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
