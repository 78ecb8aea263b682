"""HF checkpoint I/O: `config.json` + (sharded) `*.safetensors` <-> our param pytree.

Loading never materialises the whole model on one host when a mesh is given: each device's
slice is read straight from the memory-mapped safetensors files with
`jax.make_array_from_callback`, one (layer, expert) tensor slice at a time. That is what lets a
70B teacher load onto a pod whose hosts could not each hold it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from cliffdistill.models import sharding
from cliffdistill.models.config import ModelConfig, load_hf_config, to_hf_config
from cliffdistill.models.transformer import param_shapes

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# our layer leaf -> (HF name under model.layers.{i}., transpose?); a family renames entries of this
# table and of the expert table below (`Family.layer_keys`, `Family.expert_keys`).
LAYER_KEYS = {
    "attn_norm": ("input_layernorm.weight", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "q_proj": ("self_attn.q_proj.weight", True),
    "k_proj": ("self_attn.k_proj.weight", True),
    "v_proj": ("self_attn.v_proj.weight", True),
    "o_proj": ("self_attn.o_proj.weight", True),
    "q_norm": ("self_attn.q_norm.weight", False),
    "k_norm": ("self_attn.k_norm.weight", False),
    "q_bias": ("self_attn.q_proj.bias", False),
    "k_bias": ("self_attn.k_proj.bias", False),
    "v_bias": ("self_attn.v_proj.bias", False),
    "gate_proj": ("mlp.gate_proj.weight", True),
    "up_proj": ("mlp.up_proj.weight", True),
    "down_proj": ("mlp.down_proj.weight", True),
    "router": ("mlp.gate.weight", True),
}
_EXPERT_KEYS = {
    "gate_proj": "mlp.experts.{e}.gate_proj.weight",
    "up_proj": "mlp.experts.{e}.up_proj.weight",
    "down_proj": "mlp.experts.{e}.down_proj.weight",
}
# Under the decoder's prefix (see TEXT_PREFIXES); lm_head sits outside it.
_TOP_KEYS = {
    "embed": ("embed_tokens.weight", False),
    "final_norm": ("norm.weight", False),
}
LM_HEAD = "lm_head.weight"
# Where the decoder's tensors live: a causal LM's `model.`, or the language model inside a
# multimodal checkpoint (transformers 5's layout, then the published Gemma 3 files' layout).
TEXT_PREFIXES = ("model.", "model.language_model.", "language_model.model.")


def text_prefix(names: Any) -> str:
    """The prefix of TEXT_PREFIXES whose embedding is among the tensor `names` ("model." if none:
    the missing-tensor check then names what is absent)."""
    return next((p for p in TEXT_PREFIXES if p + "embed_tokens.weight" in names), "model.")


def _leaf_sources(cfg: ModelConfig, path: tuple[str, ...], prefix: str = "model."
                  ) -> tuple[Callable[..., str], bool, int]:
    """For a param leaf: (key(i, e) -> HF tensor name, transpose?, number of stacked leading axes)."""
    if path[0] == "lm_head":
        return (lambda: LM_HEAD), True, 0
    if path[0] != "layers":
        name, t = _TOP_KEYS[path[0]]
        return (lambda: prefix + name), t, 0
    leaf = path[1]
    expert_keys = {**_EXPERT_KEYS, **cfg.family.expert_keys}
    if cfg.is_moe and leaf in expert_keys:
        fmt = prefix + "layers.{i}." + expert_keys[leaf]
        return (lambda i, e: fmt.format(i=i, e=e)), True, 2
    sub, t = {**LAYER_KEYS, **cfg.family.layer_keys}[leaf]
    return (lambda i: f"{prefix}layers.{i}.{sub}"), t, 1


def _tree_paths(tree: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield tuple(p.key for p in path), leaf


def expected_tensors(cfg: ModelConfig, dtype: Any = jnp.float32, prefix: str = "model."
                     ) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name this config needs, with its HF shape."""
    out = {}
    for path, shp in _tree_paths(param_shapes(cfg, dtype)):
        key, transpose, stacked = _leaf_sources(cfg, path, prefix)
        inner = tuple(shp.shape[stacked:])
        hf_shape = inner[::-1] if transpose else inner
        for idx in np.ndindex(*shp.shape[:stacked]):
            out[key(*idx)] = hf_shape
    return out


class _Shards:
    """Name -> open safetensors file, from the index (or the single file), with checks."""

    def __init__(self, root: Path):
        self.root = root
        index = root / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: malformed safetensors index ({e!r})") from None
            missing_files = sorted({f for f in weight_map.values() if not (root / f).exists()})
            if missing_files:
                raise FileNotFoundError(
                    f"{index} lists shard file(s) that are missing from {root}: {missing_files} "
                    "(incomplete download?)")
        elif (root / SINGLE_FILE).exists():
            weight_map = None
        else:
            raise FileNotFoundError(f"{root}: neither {INDEX_FILE} nor {SINGLE_FILE} found")
        self._handles: dict[str, Any] = {}
        if weight_map is None:
            handle = self._open(SINGLE_FILE)
            weight_map = {k: SINGLE_FILE for k in handle.keys()}
        self.weight_map: dict[str, str] = weight_map
        self.prefix = text_prefix(weight_map)

    def _open(self, file: str) -> Any:
        if file not in self._handles:
            self._handles[file] = safe_open(str(self.root / file), framework="numpy")
        return self._handles[file]

    def file_of(self, name: str) -> str:
        return self.weight_map[name]

    def tensor_slice(self, name: str) -> Any:
        handle = self._open(self.weight_map[name])
        if name not in handle.keys():
            raise ValueError(f"{self.root / self.weight_map[name]}: tensor {name!r} listed in the "
                             "index is not in the file (partial shard?)")
        return handle.get_slice(name)


def _check_tensors(cfg: ModelConfig, shards: _Shards) -> None:
    expected = expected_tensors(cfg, prefix=shards.prefix)
    missing = [k for k in expected if k not in shards.weight_map]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"{shards.root}: checkpoint is missing tensor(s) {missing[:5]}{more} "
                         "that the config.json architecture needs (partial or mismatched shards?)")
    for name, shape in expected.items():
        actual = tuple(shards.tensor_slice(name).get_shape())
        if actual != shape:
            raise ValueError(f"{shards.root / shards.file_of(name)}: tensor {name!r} has shape "
                             f"{list(actual)} but config.json implies {list(shape)}")


def _reader(cfg: ModelConfig, shards: _Shards, path: tuple[str, ...], dtype: Any
            ) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """Callback for make_array_from_callback: reads just the requested index of one leaf."""
    key, transpose, stacked = _leaf_sources(cfg, path, shards.prefix)

    def read(index: tuple[slice, ...], full_shape: tuple[int, ...]) -> np.ndarray:
        lead, inner = index[:stacked], index[stacked:]
        lead_ranges = [range(*s.indices(n)) for s, n in zip(lead, full_shape[:stacked])]
        hf_index = tuple(inner[::-1]) if transpose else tuple(inner)
        blocks = []
        for idx in np.ndindex(*[len(r) for r in lead_ranges]):
            src = key(*[r[j] for r, j in zip(lead_ranges, idx)])
            block = shards.tensor_slice(src)[hf_index]
            blocks.append((block.T if transpose else block).astype(dtype))
        if not stacked:
            return blocks[0]
        return np.stack(blocks).reshape([len(r) for r in lead_ranges] + list(blocks[0].shape))

    return read


def load_hf(path: str | Path, dtype: Any = jnp.bfloat16, mesh: Mesh | None = None,
            rules: dict[str, Any] | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Loads an HF checkpoint directory into (ModelConfig, params).

    With `mesh`, params are sharded by the logical-axis rules and each device's slice is read
    directly from the files; without, params land on the default device.
    """
    root = Path(path)
    cfg = load_hf_config(root)
    shards = _Shards(root)
    if shards.prefix != "model.":
        log.warning("%s: a multimodal checkpoint; loading its language model (%s*) as %s, the "
                    "other towers are ignored", root, shards.prefix, cfg.model_type)
    _check_tensors(cfg, shards)
    shapes = param_shapes(cfg, dtype)
    np_dtype = np.dtype(jnp.dtype(dtype))
    if mesh is not None:
        shardings = sharding.param_shardings(cfg, mesh, shapes, rules)
    else:
        shardings = jax.tree_util.tree_map(
            lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), shapes)
    flat_shard = dict(_tree_paths(shardings))

    def build(path_and_shape):
        path, shp = path_and_shape
        read = _reader(cfg, shards, path, np_dtype)
        return jax.make_array_from_callback(
            shp.shape, flat_shard[path], lambda idx: read(_full_index(idx, shp.shape), shp.shape))

    leaves = [build(ps) for ps in _tree_paths(shapes)]
    treedef = jax.tree_util.tree_structure(shapes)
    return cfg, jax.tree_util.tree_unflatten(treedef, leaves)


def _full_index(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """make_array_from_callback may pass fewer entries than dims, or `slice(None)`s."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape))


def hf_state_dict(cfg: ModelConfig, params: dict[str, Any], dtype: Any | None = None
                  ) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF tensor name, numpy array) for every tensor, gathering one leaf at a time."""
    for path, leaf in _tree_paths(params):
        key, transpose, stacked = _leaf_sources(cfg, path)
        arr = np.asarray(jax.device_get(leaf))
        if dtype is not None:
            arr = arr.astype(np.dtype(jnp.dtype(dtype)))
        for idx in np.ndindex(*arr.shape[:stacked]):
            t = arr[idx]
            yield key(*idx), np.ascontiguousarray(t.T if transpose else t)


def save_hf(cfg: ModelConfig, params: dict[str, Any], path: str | Path, dtype: Any | None = None,
            max_shard_bytes: int = 4 << 30) -> Path:
    """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in hf_state_dict(cfg, params, dtype):
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    saved_dtype = str(next(iter(shards[0].values())).dtype)
    (root / "config.json").write_text(json.dumps(to_hf_config(cfg, dtype=saved_dtype), indent=2))
    if len(shards) == 1:
        save_file(shards[0], str(root / SINGLE_FILE), metadata={"format": "pt"})
        return root
    n = len(shards)
    weight_map = {}
    for i, tensors in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(root / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in tensors})
    total = sum(a.nbytes for s in shards for a in s.values())
    (root / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return root


def host_bytes_per_device(cfg: ModelConfig, mesh: Mesh, dtype: Any = jnp.bfloat16) -> int:
    """Bytes of base params one device holds under the default rules (for the memory planner)."""
    shapes = param_shapes(cfg, dtype)
    shard = sharding.param_shardings(cfg, mesh, shapes)
    total = 0
    for s, sh in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(shard)):
        local = sh.shard_shape(s.shape)
        total += math.prod(local) * jnp.dtype(s.dtype).itemsize
    return total


__all__ = ["load_hf", "save_hf", "expected_tensors", "hf_state_dict", "NamedSharding"]
