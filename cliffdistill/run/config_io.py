"""Run config files and their dotted fields.

A config file defines ``get_config()`` (or ``get_config(arg)``, picked by ``path.py:arg`` as
``--config`` does); relative paths are from the repository root. Dotted fields
(``"loss.jsd_beta"``) address a ConfigDict leaf: sweeps, the main job and `--config.x=` overrides
all set them through `set_field`, which keeps ConfigDict's type checks and names the field.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import ml_collections

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_config_path(spec: str) -> tuple[Path, Optional[str]]:
    """``"configs/x.py:arg"`` -> (absolute path, "arg"); relative paths are from the repo root."""
    path, sep, arg = str(spec).partition(".py:")
    if sep:
        path = path + ".py"
    p = Path(path)
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p, (arg if sep else None)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Import a config file and return its ``get_config()`` (or ``get_config(arg)`` for ``path:arg``)."""
    path, arg = resolve_config_path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} (from `{spec}`) not found; paths are relative to the repo root {REPO_ROOT}."
        )
    mod_name = "_cliffdistill_cfg_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config().")
    cfg = module.get_config() if arg is None else module.get_config(arg)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ValueError(f"get_config() of {path} returned {type(cfg).__name__}, not a ConfigDict.")
    return cfg


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": v} -> {"a": {"b": v}}: dotted override fields as a sweep config section
    (ConfigDict keys cannot contain dots)."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(tree: Any, what: str, leaves_are_lists: bool) -> dict[str, Any]:
    """``{"a": {"b": v}}`` -> ``{"a.b": v}``; with ``leaves_are_lists`` every leaf must be a list."""
    out: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, (ml_collections.ConfigDict, Mapping)):
            items = node.items()
            if not items and prefix:
                raise ValueError(
                    f"sweep field `{what}.{prefix}` is an empty dict; give it values or remove it."
                )
            for k, v in items:
                visit(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if not prefix:
            raise ValueError(f"sweep field `{what}` must be a dict of dotted fields, got {node!r}.")
        if leaves_are_lists:
            if not isinstance(node, (list, tuple)):
                raise ValueError(f"sweep field `{what}.{prefix}` must be a list of values, got {node!r}.")
            if len(node) == 0:
                raise ValueError(
                    f"sweep field `{what}.{prefix}` is an empty list: the sweep would have no runs."
                )
            node = list(node)
        out[prefix] = node

    if tree is None:
        return out
    visit("", tree)
    return out


def get_field(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
    """``cfg.<dotted>`` (KeyError naming the missing part)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def set_field(cfg: ml_collections.ConfigDict, dotted: str, value: Any,
              where: str = "overrides") -> None:
    """Set ``cfg.<dotted>`` with ConfigDict's type checks; errors name the sweep field."""
    parts = dotted.split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(
                f"sweep field `{where}.{dotted}`: the base config has no field `{'.'.join(parts[: i + 1])}`."
            )
        node = node[part]
    leaf = parts[-1]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ValueError(f"sweep field `{where}.{dotted}`: the base config has no field `{dotted}`.")
    if isinstance(value, list):
        old = node[leaf]
        value = tuple(value) if isinstance(old, tuple) else value
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        raise ValueError(f"sweep field `{where}.{dotted}`: cannot set {value!r}: {e}") from e
