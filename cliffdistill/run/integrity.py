"""Config integrity: a run directory holds one run, so a resume may not silently change it.

Every field of a run config is classified here, as data: `FREE` fields cannot change what the run
computes (labels, logging, eval/checkpoint cadence, where caches live, launch layout, prices) and
may differ between the segments of one run; every other field (`RESULT`) changes the trajectory
or the numbers recorded (method, schedule, models, data, rollout, losses, optimiser, LoRA, seeds,
defects, the eval protocol, the mesh) and a resume that changes one is refused, naming each field
as `old → new`. A deliberate change (`allow=True`, `--allow_config_change`) continues the run and
appends the change, with the step it takes effect at, to DIR/config_history.jsonl; DIR/config.json
stays the config the run was started with. tests/test_integrity.py checks that every field of
every shipped config is classified.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from cliffdistill.run import rundir

#: Fields (or whole sections) that cannot change results -> why.
FREE: dict[str, str] = {
    "name": "a label",
    "setup_label": "the report's name for the setup",
    "log_every": "logging cadence",
    "eval.every": "evaluation cadence (every eval scores the same questions the same way)",
    "eval.study_every": "cadence of the study-protocol eval",
    "eval.step0_cache_dir": "where the step-0 eval cache lives",
    "eval.claims": "the report's verdict thresholds (read by the report, never by training)",
    "checkpoint": "checkpoint cadence, retention and async saving (resumes are bit-identical)",
    "off_policy.cache_dir": "where the teacher-sample cache lives (its content is keyed by "
                            "the fields that make it)",
    "off_policy.gen_batch_size": "prompts per cache-building call (rows are sampled "
                                 "independently of their batch)",
    "distributed": "how processes find each other (the devices are fixed by `mesh`)",
    "cost": "prices and peak FLOPs for the cost and MFU columns",
    "hbm_bytes_per_device": "the memory planner's budget check",
}

#: Sections and fields that change what the run computes -> what.
RESULT: dict[str, str] = {
    "setup": "the distillation setup", "method": "the schedule", "seed": "the run seed",
    "schedule": "phase lengths and weights", "student": "the student model",
    "teacher": "the teacher model", "tokenizer_path": "the tokenizer",
    "vocab_size": "the logits' width",
    "chat_template": "the prompts", "moe_impl": "MoE numerics",
    "moe_capacity_factor": "MoE token dropping", "attention_impl": "attention numerics",
    "lora": "the trained adapters", "data": "the prompts and eval questions",
    "rollout": "the samples", "loss": "the objective", "off_policy": "the teacher samples",
    "replay": "the replay buffer", "ablation": "the study's defects",
    "optim": "the optimiser", "eval": "the eval protocol and its status thresholds",
    "mesh": "the device layout (numerics of sharded reductions)",
}

ABSENT = "<absent>"


def classify(field: str) -> Optional[str]:
    """`free` / `result` by the longest matching entry, None for an unclassified field."""
    best, kind = -1, None
    for table, name in ((FREE, "free"), (RESULT, "result")):
        for key in table:
            if (field == key or field.startswith(key + ".")) and len(key) > best:
                best, kind = len(key), name
    return kind


def flat(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted field, JSON-plain value) for every leaf of a config or its saved JSON."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or (hasattr(value, "items") and not isinstance(value, str)
                                          and callable(value.items)):
            yield from flat(value, name + ".")
        else:
            yield name, rundir.plain(value)


def diff(old: Mapping[str, Any], new: Mapping[str, Any], *, free_too: bool = False
         ) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for every leaf that differs (an unclassified field counts as a result
    field); FREE fields left out unless `free_too`. A field one side lacks reads `<absent>`."""
    a, b = dict(flat(old)), dict(flat(new))
    out = []
    for field in sorted(set(a) | set(b)):
        x, y = a.get(field, ABSENT), b.get(field, ABSENT)
        if x != y and (free_too or classify(field) != "free"):
            out.append((field, x, y))
    return out


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{f}: {x!r} → {y!r}" for f, x, y in changes)


class ConfigChanged(ValueError):
    """A resume (or a sweep's reuse of a run) whose config differs in result fields."""


def history(workdir: str | os.PathLike) -> list[dict]:
    """The accepted config changes of a run, oldest first (`{"step", "changes", "config"}`)."""
    return rundir.read_jsonl(Path(workdir) / rundir.HISTORY_FILE)


def current_config(workdir: str | os.PathLike) -> Optional[dict]:
    """The config a run's last segment ran with: the newest accepted change, else config.json."""
    changes = history(workdir)
    if changes and isinstance(changes[-1].get("config"), dict):
        return changes[-1]["config"]
    return rundir.read_json(Path(workdir) / rundir.CONFIG_FILE)


def has_progress(workdir: str | os.PathLike) -> bool:
    """Whether a run directory holds something a resume keeps (a checkpoint or an eval)."""
    return bool(rundir.saved_steps(workdir)) or bool(rundir.read_jsonl(
        Path(workdir) / rundir.EVAL_FILE))


def check_resume(workdir: str | os.PathLike, config: Mapping[str, Any], *,
                 allow: bool = False) -> list[tuple[str, Any, Any]]:
    """Refuses (ConfigChanged) a resume of `workdir` with a `config` that differs from the one
    its kept progress was made with, before any compute; with `allow`, records the change in
    DIR/config_history.jsonl (step = the newest checkpoint: where it takes effect) and returns
    it. A directory with nothing to keep starts over with the new config (returns [])."""
    saved = current_config(workdir)
    if saved is None or not has_progress(workdir):
        return []
    changes = diff(saved, config)
    if not changes:
        return []
    steps = rundir.saved_steps(workdir)
    step = steps[-1] if steps else 0
    if not allow:
        raise ConfigChanged(
            f"{workdir} holds a run made with a different config; resuming it at step {step} "
            f"would change {len(changes)} field(s): {describe(changes)}. Use a new --workdir, "
            "restore the old values, or pass --allow_config_change to continue with the new "
            f"config (the change is recorded in {rundir.HISTORY_FILE}).")
    rundir.append_jsonl(Path(workdir) / rundir.HISTORY_FILE,
                        {"step": step, "time": time.time(), "config": rundir.plain(config),
                         "changes": {f: [x, y] for f, x, y in changes}})
    return changes


def history_lines(workdir: str | os.PathLike) -> list[str]:
    """One line per accepted change, for `report` and `evaluate` to show."""
    return [f"config changed at step {h.get('step')}: "
            + "; ".join(f"{f}: {xy[0]!r} → {xy[1]!r}" for f, xy in sorted(h.get("changes", {}).items()))
            for h in history(workdir)]
