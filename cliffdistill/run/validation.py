"""Valid ranges of the run config's fields, as data, checked before any compute.

Every numeric or enumerated field of `configs/base.py` has a rule here, except the method
schedule (`schedule.*`), whose ranges `methods.validate_schedule_config` owns together with its
cross-field limits (a switch step inside the run). `tests/test_validation.py` walks the config
tree and fails when a numeric field is checked by neither, so a new knob cannot arrive unchecked.
Constraints that need the models or the devices (a batch divisible by the mesh, prompts that fit
the cache, memory) stay with the code that knows them.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cliffdistill.models import transformer
from cliffdistill.models.config import ATTENTION_IMPLS


@dataclasses.dataclass(frozen=True)
class Range:
    """lo <= x <= hi (either bound optional; `open_lo` / `open_hi` make it strict)."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    integer: bool = False
    why: str = ""  # what the value means, shown with the error

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {type(value).__name__}"
        if self.integer and not float(value).is_integer():
            return "must be an integer"
        if not math.isfinite(value):
            return "must be finite"
        if self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo):
            return f"must be {'>' if self.open_lo else '>='} {self.lo}"
        if self.hi is not None and (value >= self.hi if self.open_hi else value > self.hi):
            return f"must be {'<' if self.open_hi else '<='} {self.hi}"
        return None

    def describe(self) -> str:
        lo = "" if self.lo is None else f"{self.lo} {'<' if self.open_lo else '<='} "
        hi = "" if self.hi is None else f" {'<' if self.open_hi else '<='} {self.hi}"
        return f"{lo}x{hi}" + (" (integer)" if self.integer else "")


@dataclasses.dataclass(frozen=True)
class OneOf:
    """A value from a fixed set (strings of an enum-like field)."""

    choices: tuple[Any, ...]
    why: str = ""

    def problem(self, value: Any) -> str | None:
        return None if value in self.choices else f"must be one of {list(self.choices)}"

    def describe(self) -> str:
        return f"one of {list(self.choices)}"


Rule = Range | OneOf


def count(lo: int = 0, why: str = "") -> Range:
    """An integer >= lo."""
    return Range(lo=lo, integer=True, why=why)


def fraction(why: str = "", open_lo: bool = False, open_hi: bool = False) -> Range:
    return Range(0.0, 1.0, open_lo=open_lo, open_hi=open_hi, why=why)


NON_NEGATIVE = Range(lo=0.0)
POSITIVE = Range(lo=0.0, open_lo=True)
DTYPES = OneOf(("bfloat16", "float32", "float16"))

# Fields allowed to be None (unset optional values); every other rule rejects None.
OPTIONAL = frozenset({
    "distributed.num_processes", "distributed.process_id", "distributed.coordinator_address",
    "distributed.local_device_ids", "chat_template", "data.system", "data.instruction",
})

RULES: dict[str, Rule] = {
    "seed": count(why="run seed"),
    "vocab_size": count(0, "0 = len(tokenizer)"),
    "setup": OneOf(("size", "context")),
    "moe_impl": OneOf(transformer.MOE_IMPLS),
    "loss.remat": OneOf(transformer.REMAT_POLICIES),
    "moe_capacity_factor": POSITIVE,
    "attention_impl": OneOf(ATTENTION_IMPLS),
    "student.dtype": DTYPES, "teacher.dtype": DTYPES, "lora.dtype": DTYPES,
    "lora.rank": count(1, "LoRA rank"),
    "lora.alpha": POSITIVE,
    "data.source": OneOf(("jsonl", "hf", "tfds")),
    "data.context": OneOf(("none", "fewshot", "cot8", "passage")),
    "data.context_k": count(1, "shots in the teacher's context"),
    "data.n_train": count(1), "data.n_fewshot": count(0), "data.n_eval": count(1),
    "data.split_seed": count(),
    "rollout.batch_size": count(1), "rollout.n_samples": count(1),
    "rollout.max_new_tokens": count(1), "rollout.max_prompt_len": count(1),
    "rollout.max_teacher_prompt_len": count(1),
    "rollout.trim_multiple": count(0, "0 = static buckets"),
    "rollout.temperature": Range(lo=0.0, why="0 = greedy"),
    "rollout.top_p": fraction("nucleus mass", open_lo=True),
    "rollout.top_k": count(0, "0 = no top-k filter"),
    "loss.on_policy": OneOf(("sampled_rkl", "jsd")),
    "loss.off_policy": OneOf(("nll", "forward_kl")),
    "loss.jsd_beta": fraction("0 forward KL, 1 reverse KL"),
    "loss.kl_discount": fraction("gamma of the sampled reverse KL advantage"),
    "loss.dpo_beta": Range(lo=0.0, open_lo=True, why="DPO beta; 0 would make the loss constant"),
    "loss.confidence_temperature": Range(lo=0.0, open_lo=True,
                                         why="softmax temperature of the confidence weights"),
    "loss.vocab_chunk": count(1),
    "off_policy.temperature": Range(lo=0.0, why="0 = greedy"),
    "off_policy.max_new_tokens": count(1), "off_policy.seed": count(),
    "off_policy.batch_size": count(1), "off_policy.gen_batch_size": count(1),
    "replay.capacity": count(1),
    "optim.lr": POSITIVE,
    "optim.schedule": OneOf(("constant", "cosine", "linear")),
    "optim.warmup_steps": count(0), "optim.weight_decay": NON_NEGATIVE,
    "optim.b1": fraction(open_hi=True), "optim.b2": fraction(open_hi=True),
    "optim.eps": POSITIVE, "optim.grad_clip": Range(lo=0.0, why="0 = no clipping"),
    "optim.final_lr_fraction": fraction("cosine schedule: final lr / lr"),
    "eval.every": count(1), "eval.max_new_tokens": count(1), "eval.batch_size": count(1),
    "eval.benchmarks.num_fewshot": count(0), "eval.benchmarks.limit": count(0, "0 = every document"),
    "eval.benchmarks.batch_size": count(1), "eval.benchmarks.max_new_tokens": count(1),
    "eval.claims.alpha": fraction("family-wise error rate", open_lo=True, open_hi=True),
    "eval.claims.majority": fraction("share of seeds", open_hi=True),
    "eval.claims.collapse_frac_low": fraction("collapse_frac of the sensitivity analysis"),
    "eval.claims.collapse_frac_high": fraction("collapse_frac of the sensitivity analysis"),
    "eval.study_n": count(1, "train questions of the study's eval protocol"),
    "eval.study_max_new_tokens": count(1),
    "eval.study_every": count(0, "0 = only the first and the final eval"),
    "eval.status.collapse_abs": fraction(), "eval.status.collapse_abs_min_start": fraction(),
    "eval.status.collapse_frac": fraction(), "eval.status.stable_frac": fraction(),
    "eval.status.floor": fraction(),
    "checkpoint.every": count(1), "checkpoint.keep": count(1),
    "log_every": count(1),
    "mesh.data": count(1), "mesh.fsdp": count(1), "mesh.tensor": count(1), "mesh.expert": count(1),
    "distributed.num_processes": count(1), "distributed.process_id": count(0),
    "distributed.cpu_collectives": OneOf(("gloo", "mpi", "megascale", "none", "")),
    "cost.usd_per_device_hour": NON_NEGATIVE, "cost.peak_flops_per_device": NON_NEGATIVE,
    "hbm_bytes_per_device": count(0, "0 = the device's reported memory"),
}


def leaves(cfg: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of a (nested) ConfigDict."""
    for key in sorted(cfg):
        value = cfg[key]
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "items"):
            yield from leaves(value, path + ".")
        else:
            yield path, value


def is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def problems(cfg: Mapping[str, Any], rules: Mapping[str, Rule] = RULES) -> list[str]:
    """One sentence per field whose value breaks its declared rule (fields without a rule pass)."""
    out = []
    for path, value in leaves(cfg):
        rule = rules.get(path)
        if rule is None or (value is None and path in OPTIONAL):
            continue
        issue = rule.problem(value)
        if issue:
            why = f" ({rule.why})" if rule.why else ""
            out.append(f"config field `{path}`={value!r} is invalid: {issue}{why}")
    return out


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raise one ValueError naming every out-of-range field, before any weight or data loads."""
    found = problems(cfg)
    if found:
        raise ValueError("; ".join(found) + ". Fix the config (or the --config.<field>= override).")


def check_workdir(path: str | os.PathLike) -> None:
    """A run directory we can create and write: one plain sentence when we cannot.

    Remote paths (gs://...) are left to the storage client.
    """
    text = os.fspath(path)
    if "://" in text:
        return
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--workdir {text} is a file, not a directory: pass a directory path "
                         "(it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write_probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except NotADirectoryError:
        raise ValueError(f"--workdir {text}: a parent of it is a file, not a directory") from None
    except PermissionError:
        raise ValueError(f"--workdir {text} is not writable by this user: choose another "
                         "directory or fix its permissions") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ValueError(f"--workdir {text}: no space left on its device: free space or "
                             "choose another disk") from None
        if e.errno in (errno.EROFS, errno.EACCES):
            raise ValueError(f"--workdir {text} is on a read-only or inaccessible filesystem: "
                             "choose another directory") from None
        raise
