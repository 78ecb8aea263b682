"""What one model family declares (`Family`), and the readers and writers several families share.

A family is data plus three small hooks: how its `config.json` names the MLP activation, which
`ModelConfig` fields its own fields become, and which of them it writes back. Everything that is
the same for every family (sizes, RoPE, token ids, the checks of those) stays generic in
`config.py`; every decoder switch (`qk_norm`, `qkv_bias`, `is_gemma`) is read from here.

This module, like every family module, imports nothing from `config.py`: config.py builds on the
registry (a `ModelConfig` checks its model_type there and reads its switches from its family), so
an import back would be a cycle. The constants both need (`LAYER_TYPES`) live here instead, and a
hook receives a `ModelConfig` as the `Config` it reads fields of.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

LAYER_TYPES = ("full_attention", "sliding_attention")

HfConfig = Mapping[str, Any]  # a parsed config.json (a multimodal file's text_config already taken)
Fields = dict[str, Any]  # ModelConfig fields (from_hf) or config.json fields (to_hf)
# A `config.ModelConfig` (not imported: see the module docstring).
Config = Any


def activation(hf: HfConfig, source: str, field: str, act: Any, supported: tuple[str, ...]) -> str:
    """`act`, read from `field` of config.json, when the family's decoder runs it; else refused
    naming the field, the family and what it supports."""
    if act not in supported:
        raise ValueError(f"{source}: {field}={act!r} is not supported for "
                         f"model_type={hf['model_type']!r}; supported: {supported}")
    return act


def silu_activation(hf: HfConfig, source: str) -> str:
    """The gated MLP of every family but Gemma: `hidden_act`, SiLU."""
    return activation(hf, source, "hidden_act", hf.get("hidden_act", "silu"), ("silu",))


def window_fields(window: Any, types: Any, num_layers: int, source: str) -> Fields:
    """`sliding_window` and `layer_types` of a windowed family, as transformers derived them, after
    the checks every family shares; a config without a windowed layer gets neither."""
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"{source}: layer_types {unknown} are not supported; supported: {LAYER_TYPES}")
    if len(types) != num_layers:
        raise ValueError(f"{source}: layer_types has {len(types)} entries for "
                         f"num_hidden_layers={num_layers}")
    if window is None or "sliding_attention" not in types:
        return {}
    return dict(sliding_window=int(window), layer_types=tuple(types))


def unwindowed_from_hf(hf: HfConfig, num_layers: int, source: str) -> Fields:
    """A family whose layers all attend to the whole context refuses a sliding window."""
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported for "
                         f"model_type={hf['model_type']!r}; set it to false")
    return {}


def unwindowed_to_hf(cfg: Config) -> Fields:
    """Nothing to write for a family without windows; a windowed config cannot be written as one."""
    if cfg.has_sliding_layers:
        raise ValueError(f"model_type={cfg.model_type!r} has no sliding-window layers; "
                         f"layer_types={cfg.layer_types} cannot be written")
    return {}


@dataclasses.dataclass(frozen=True)
class Family:
    """One HF `model_type`: its checkpoint architecture, its config.json fields, its decoder
    switches and its checkpoint tensor names. The defaults are those of a plain Llama-like family
    (SiLU, no windows, untied, dense, `hf_io.LAYER_KEYS` names)."""

    model_type: str
    architecture: str  # transformers' causal-LM class, config.json `architectures`
    # config.json -> the MLP activation; read before the generic fields, so a file with several
    # unsupported options names this one first.
    hidden_act: Callable[[HfConfig, str], str] = silu_activation
    # (config.json, num_hidden_layers, source) -> the family's ModelConfig fields (windows, MoE,
    # Gemma's); refuses options the decoder does not implement, naming the field.
    from_hf: Callable[[HfConfig, int, str], Fields] = unwindowed_from_hf
    # ModelConfig -> the family's config.json fields, written after (and over) the generic ones.
    to_hf: Callable[[Config], Fields] = unwindowed_to_hf
    tie_word_embeddings: bool = False  # transformers' default where config.json omits the field
    # The sliding layers' own RoPE base where config.json names none (Gemma 3); None: the family
    # has one RoPE table and refuses a separate one.
    rope_local_theta: float | None = None
    qk_norm: bool = False  # q and k RMS-normalised per head before RoPE
    qkv_bias: bool = False  # a bias on the q/k/v projections (never on o_proj)
    is_gemma: bool = False  # Gemma's blocks: see `ModelConfig.is_gemma`
    # model_types of multimodal checkpoints whose `text_config` is this family's language model.
    multimodal: tuple[str, ...] = ()
    # Renames of `hf_io.LAYER_KEYS` (our leaf -> (name under model.layers.{i}., transpose?)) and of
    # its expert table (our leaf -> name with {e}) in this family's checkpoints.
    layer_keys: Mapping[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)
    expert_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
