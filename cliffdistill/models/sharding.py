"""Meshes and logical-axis sharding rules.

Every param dimension has a *logical* name (`embed`, `heads`, `mlp`, ...); a rules table maps
logical names to mesh axes (`data`, `fsdp`, `tensor`, `expert`). Changing the parallelism of a run
is then a config change (mesh shape and rules), never a code change. See docs/SHARDING.md.

A dimension that the mapped mesh axes do not divide is replicated instead (logged once): e.g. a
tiny test model's 2 KV heads on a 4-way tensor axis.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cliffdistill.models.config import ModelConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "expert": "expert",
    "layers": None,
    "norm": None,
    "router": None,
}

_DENSE_AXES = {
    "attn_norm": ("layers", "norm"),
    "mlp_norm": ("layers", "norm"),
    "post_attn_norm": ("layers", "norm"),
    "post_mlp_norm": ("layers", "norm"),
    "q_proj": ("layers", "embed", "heads"),
    "k_proj": ("layers", "embed", "kv_heads"),
    "v_proj": ("layers", "embed", "kv_heads"),
    "o_proj": ("layers", "heads", "embed"),
    "q_norm": ("layers", "norm"),
    "k_norm": ("layers", "norm"),
    "q_bias": ("layers", "heads"),
    "k_bias": ("layers", "kv_heads"),
    "v_bias": ("layers", "kv_heads"),
    "gate_proj": ("layers", "embed", "mlp"),
    "up_proj": ("layers", "embed", "mlp"),
    "down_proj": ("layers", "mlp", "embed"),
}
_MOE_AXES = {
    "router": ("layers", "embed", "router"),
    "gate_proj": ("layers", "expert", "embed", "mlp"),
    "up_proj": ("layers", "expert", "embed", "mlp"),
    "down_proj": ("layers", "expert", "mlp", "embed"),
}


def param_logical_axes(cfg: ModelConfig) -> dict[str, Any]:
    """The logical-axis pytree matching `init_params(cfg)` (leaves are tuples of names)."""
    layers = dict(_DENSE_AXES)
    if cfg.is_moe:
        layers.update(_MOE_AXES)
    if not cfg.qk_norm:
        del layers["q_norm"], layers["k_norm"]
    if not cfg.is_gemma:
        del layers["post_attn_norm"], layers["post_mlp_norm"]
    if not cfg.qkv_bias:
        del layers["q_bias"], layers["k_bias"], layers["v_bias"]
    tree: dict[str, Any] = {"embed": ("vocab", "embed"), "final_norm": ("norm",), "layers": layers}
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = ("embed", "vocab")
    return tree


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over the first prod(shape) devices; axes in MESH_AXES order, missing ones size 1."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh has unknown axes {sorted(unknown)}; known axes: {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if any(s < 1 for s in sizes):
        raise ValueError(f"mesh sizes must be >= 1, got {dict(shape)}")
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(sizes)
    if n > len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {n} devices but only {len(devices)} are "
            f"available; shrink the config field `mesh` (or set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={n} for fake CPU devices)")
    return Mesh(np.asarray(devices[:n]).reshape(sizes), MESH_AXES)


def _mesh_axis_size(mesh_shape: Mapping[str, int], axes: Any) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh_shape.get(a, 1) for a in axes)


_warned: set[tuple] = set()


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh_shape: Mapping[str, int],
                    rules: Mapping[str, Any] | None = None) -> P:
    """PartitionSpec for an array with these logical axes; non-dividing or reused axes replicate."""
    rules = DEFAULT_RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        axes = rules.get(name) if name is not None else None
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        flat = tuple(a for a in flat if mesh_shape.get(a, 1) > 1 and a not in used)
        size = _mesh_axis_size(mesh_shape, flat)
        if flat and dim % size:
            key = (name, dim, flat)
            if key not in _warned:
                _warned.add(key)
                log.info("replicating logical axis %s (size %d): not divisible by mesh axes %s (%d)",
                         name, dim, flat, size)
            flat = ()
        used.update(flat)
        out.append(None if not flat else (flat[0] if len(flat) == 1 else flat))
    return P(*out)


def param_shardings(cfg: ModelConfig, mesh: Mesh, shapes: Any,
                    rules: Mapping[str, Any] | None = None) -> Any:
    """NamedSharding pytree for params with the given shapes (arrays or ShapeDtypeStructs)."""
    mesh_shape = dict(mesh.shape)
    return jax.tree_util.tree_map(
        lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh_shape, rules)),
        param_logical_axes(cfg), shapes, is_leaf=lambda t: isinstance(t, tuple))


def batch_sharding(mesh: Mesh, ndim: int, batch_size: int | None = None) -> NamedSharding:
    """Leading (batch) dim over the data axes, the rest replicated."""
    shape = (batch_size or 0,) + (1,) * (ndim - 1)
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), shape, dict(mesh.shape))
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    n = _mesh_axis_size(dict(mesh.shape), DEFAULT_RULES["batch"])
    if batch_size % n:
        raise ValueError(
            f"config field `{field}`={batch_size} is not divisible by the data axes of the mesh "
            f"(data*fsdp = {n}); use a multiple of {n}")


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical axes under the ambient mesh (`jax.set_mesh`); no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def put_batch(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """A host array (identical on every process) as a batch-sharded global array.

    Each process materialises only the shards its own devices hold, so this is also the
    per-process data feeding of a multi-host run.
    """
    x = np.asarray(x)
    if mesh is None:
        return jax.device_put(x)
    sh = batch_sharding(mesh, x.ndim, x.shape[0])
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host) global array on every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
