"""Model configuration: one frozen dataclass for Llama 3.x, Qwen2/2.5, Qwen3, Qwen3-MoE, Mistral
and Mixtral.

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

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe")
LAYER_TYPES = ("full_attention", "sliding_attention")
FULL_WINDOW = 1 << 30  # the per-layer window of a full-attention layer (longer than any sequence)
SUPPORTED_ROPE_TYPES = ("default", "llama3")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency-dependent RoPE scaling (`rope_type: llama3`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


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
        """Qwen3 normalises q and k per head before RoPE; Llama does not."""
        return self.model_type in ("qwen3", "qwen3_moe")

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


def _rope_from_hf(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """Reads RoPE settings from either HF layout; unknown scaling types are refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or None
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    if scaling is None:
        return float(theta), None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise ValueError(
            f"{source}: rope scaling type {rope_type!r} is not supported "
            f"(supported: {SUPPORTED_ROPE_TYPES}); field rope_scaling/rope_parameters"
        )
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ValueError(f"{source}: llama3 rope scaling is missing field {e.args[0]!r}") from None


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


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Builds a `ModelConfig` from a parsed HF `config.json` dict; `source` names it in errors."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type={model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}"
        )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{source}: attention_bias/mlp_bias=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported for "
                         f"model_type={model_type!r}; supported: 'silu'")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ValueError(f"{source}: missing required field(s) {missing}")
    num_heads = int(hf["num_attention_heads"])
    num_layers = int(hf["num_hidden_layers"])
    theta, scaling = _rope_from_hf(hf, source)
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
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        sliding_window=window,
        layer_types=layer_types,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_as_tuple(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
        **_moe_from_hf(hf, model_type, source),
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
                  "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


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
        hidden_act="silu",
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
        hf["rope_scaling"] = dict(rope_type="llama3", **dataclasses.asdict(cfg.rope_scaling))
    hf.update(_windows_to_hf(cfg))
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


def rope_inv_freq(cfg: ModelConfig) -> "list[float]":
    """Inverse RoPE frequencies [hd/2], with Llama 3.1 scaling applied when configured."""
    dim = cfg.head_dim
    inv = [1.0 / (cfg.rope_theta ** (2 * i / dim)) for i in range(dim // 2)]
    s = cfg.rope_scaling
    if s is None:
        return inv
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
