"""LoRA adapters as their own pytree.

Base params stay frozen (often bf16); the adapters (fp32) are the only thing the optimizer sees.
`LoraParams.scale` (alpha / rank) is static pytree metadata, so optax and orbax see only the
`a`/`b` arrays. `lora=None`, or `scale == 0`, gives the exact base model: the same base weights
therefore serve as the student, the context-distillation teacher and the KL anchor's pi_0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cliffdistill.models.config import ModelConfig

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_SHORT = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
          "up": "up_proj", "down": "down_proj"}
_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 32
    alpha: float = 32.0
    targets: tuple[str, ...] = ALL_TARGETS  # "q" or "q_proj" style names
    include_experts: bool = False  # MoE: also adapt every expert's gate/up/down
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank={self.rank} must be >= 1")
        if self.dropout != 0.0:
            raise ValueError("lora.dropout must be 0 (on-policy importance ratios need a deterministic policy)")
        unknown = [t for t in self.targets if _SHORT.get(t, t) not in ALL_TARGETS]
        if unknown:
            raise ValueError(f"lora.targets has unknown module(s) {unknown}; known: {sorted(_SHORT)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> LoraConfig:
        """The `lora` section of a run config (ConfigDict or dict): the one place a run's
        adapter configuration is built from its config."""
        return cls(rank=int(section["rank"]), alpha=float(section["alpha"]),
                   targets=tuple(section["targets"]),
                   include_experts=bool(section["include_experts"]))

    def target_names(self, cfg: ModelConfig) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(_SHORT.get(t, t) for t in self.targets))
        if cfg.is_moe and not self.include_experts:
            names = tuple(n for n in names if n not in _MLP)
        return names


@flax.struct.dataclass
class LoraParams:
    """layers[name] = {"a": [L, (E,) in, r], "b": [L, (E,) r, out]}; scale is static."""

    layers: dict[str, dict[str, jax.Array]]
    scale: float = flax.struct.field(pytree_node=False, default=1.0)


def init_lora(cfg: ModelConfig, lcfg: LoraConfig, key: jax.Array, base_shapes: dict[str, Any],
              dtype: Any = jnp.float32) -> LoraParams:
    """`a` ~ N(0, 1/in) (Kaiming-like), `b` = 0, so the adapted model starts equal to the base.

    base_shapes: the base params (or their `jax.eval_shape`), used only for shapes.
    """
    layers = {}
    for i, name in enumerate(lcfg.target_names(cfg)):
        shape = base_shapes["layers"][name].shape  # [L, (E,) in, out]
        fan_in = shape[-2]
        a_shape = shape[:-1] + (lcfg.rank,)
        b_shape = shape[:-2] + (lcfg.rank, shape[-1])
        a = jax.random.normal(jax.random.fold_in(key, i), a_shape, jnp.float32) / jnp.sqrt(fan_in)
        layers[name] = {"a": a.astype(dtype), "b": jnp.zeros(b_shape, dtype)}
    return LoraParams(layers=layers, scale=lcfg.scale)


def merge(params: dict[str, Any], lora: LoraParams) -> dict[str, Any]:
    """Base params with `scale * a @ b` folded into each adapted weight (in the base dtype)."""
    layers = dict(params["layers"])
    for name, ab in lora.layers.items():
        w = layers[name]
        delta = lora.scale * jnp.matmul(ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
        layers[name] = (w.astype(jnp.float32) + delta).astype(w.dtype)
    return {**params, "layers": layers}
