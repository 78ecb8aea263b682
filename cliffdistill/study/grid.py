"""A sweep config expanded into runs: the product and zip axes, deterministic order, run names.

See `cliffdistill.study.runner` for the sweep config's fields and how the runs execute.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import ml_collections

from cliffdistill.run.config_io import flatten, load_config_file, set_field
from cliffdistill.run.rundir import safe_name

_NAME_MAX = 180  # run-dir names beyond this are shortened with a hash (filesystems cap at 255 bytes)
_SWEEP_FIELDS = ("name", "base_config", "base_overrides", "product", "zip", "order", "name_fields",
                 "baselines")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its directory name and the ``{dotted.field: value}`` it sets."""

    name: str
    overrides: dict[str, Any]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "-".join(_format_value(v) for v in value) or "empty"
    else:
        text = str(value)
    return text


def _short_keys(fields: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each field that is unique among ``fields`` (for run names)."""
    out = {}
    for f in fields:
        parts = f.split(".")
        for k in range(1, len(parts) + 1):
            cand = ".".join(parts[-k:])
            clash = [g for g in fields if g != f and (g == cand or g.endswith("." + cand))]
            if not clash:
                out[f] = cand
                break
        else:
            out[f] = f
    return out


def _run_name(overrides: Mapping[str, Any], short: Mapping[str, str]) -> str:
    """``setup=size.method=hybrid.seed=0``; boolean fields set to False are left out.

    Leaving False switches out keeps the correct implementation's name free of ablation noise
    (``method=hybrid.seed=0`` next to ``method=hybrid.seed=0.off_policy_no_shift=True``) and is
    still unique: two runs that differ in a bool differ in whether ``field=True`` is in the name.
    """
    parts = [f"{short[k]}={_format_value(v)}" for k, v in overrides.items() if v is not False]
    if not parts:
        return "base"
    name = safe_name(".".join(parts))
    if len(name) > _NAME_MAX:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name[: _NAME_MAX - 11] + "-" + digest
    return name


def sweep_axes(sweep_cfg: ml_collections.ConfigDict) -> tuple[dict[str, list], dict[str, list], list[str]]:
    """Validated ``(product, zip, field order)`` of a sweep config (fields dotted, order outer-first)."""
    for key in sweep_cfg.keys():
        if key not in _SWEEP_FIELDS:
            raise ValueError(f"unknown sweep config field `{key}`; known: {', '.join(_SWEEP_FIELDS)}.")
    if "base_config" not in sweep_cfg or not sweep_cfg.base_config:
        raise ValueError("sweep config field `base_config` is missing (path of a run config file).")
    product = flatten(sweep_cfg.get("product"), "product", leaves_are_lists=True)
    zipped = flatten(sweep_cfg.get("zip"), "zip", leaves_are_lists=True)
    both = sorted(set(product) & set(zipped))
    if both:
        raise ValueError(f"sweep field `{both[0]}` is in both `product` and `zip`; keep it in one.")
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"zip.{k} has {n}" for k, n in lengths.items())
        raise ValueError(f"sweep `zip` lists must have equal length: {desc}.")
    order = [str(f) for f in (sweep_cfg.get("order") or ())]
    for f in order:
        if f not in product and f not in zipped:
            raise ValueError(f"sweep field `order` names `{f}`, which is in neither `product` nor `zip`.")
    if len(set(order)) != len(order):
        raise ValueError("sweep field `order` lists a field twice.")
    rank = {f: i for i, f in enumerate(order)}

    def ordered(fields: Sequence[str]) -> list[str]:
        return sorted(fields, key=lambda f: (rank.get(f, len(rank)), f))

    return (
        {f: product[f] for f in ordered(list(product))},
        {f: zipped[f] for f in ordered(list(zipped))},
        ordered(list(product)) + ordered(list(zipped)),
    )


def build_run_config(
    base: ml_collections.ConfigDict,
    base_overrides: Mapping[str, Any],
    spec: RunSpec,
    sources: Optional[Mapping[str, str]] = None,
) -> ml_collections.ConfigDict:
    """A fresh copy of ``base`` with the sweep-wide overrides, the run's overrides and ``name`` set.

    ``sources`` maps a field to the sweep section it came from (``product``/``zip``) for errors.
    """
    cfg = copy.deepcopy(base)
    sources = sources or {}
    for field, value in base_overrides.items():
        set_field(cfg, field, value, "base_overrides")
    for field, value in spec.overrides.items():
        set_field(cfg, field, value, sources.get(field, "product/zip"))
    with cfg.unlocked():
        cfg.name = spec.name
    return cfg


def expand(
    sweep_cfg: ml_collections.ConfigDict, base: Optional[ml_collections.ConfigDict] = None
) -> list[RunSpec]:
    """The sweep's runs, in deterministic order; every override is validated against the base config.

    ``base`` defaults to loading ``sweep_cfg.base_config``.  Raises ValueError naming the sweep
    field for unknown fields, values of the wrong type, unequal zip lengths and duplicate names.
    """
    product, zipped, fields = sweep_axes(sweep_cfg)
    base = load_config_file(sweep_cfg.base_config) if base is None else base
    base_overrides = flatten(sweep_cfg.get("base_overrides"), "base_overrides", leaves_are_lists=False)
    named = [str(f) for f in (sweep_cfg.get("name_fields") or fields)]
    unknown = [f for f in named if f not in fields]
    if unknown:
        raise ValueError(f"sweep field `name_fields` names {unknown}, not in `product` or `zip`.")
    short = _short_keys(named)
    sources = {**{f: "product" for f in product}, **{f: "zip" for f in zipped}}
    zip_rows: list[dict[str, Any]] = [{}]
    if zipped:
        n = len(next(iter(zipped.values())))
        zip_rows = [{f: vals[i] for f, vals in zipped.items()} for i in range(n)]
    specs: list[RunSpec] = []
    seen: dict[str, dict] = {}
    for combo in itertools.product(*product.values()):
        prod_row = dict(zip(product.keys(), combo, strict=True))
        for zrow in zip_rows:
            overrides = {**prod_row, **zrow}
            spec = RunSpec(name=_run_name({f: overrides[f] for f in named}, short),
                           overrides=overrides)
            if spec.name in seen:
                raise ValueError(
                    f"two runs get the same name {spec.name!r} ({seen[spec.name]} and {overrides}); "
                    "a product/zip list repeats a value."
                )
            seen[spec.name] = overrides
            build_run_config(base, base_overrides, spec, sources)  # validates every field and value
            specs.append(spec)
    return specs
