"""The run directory: its file names, atomic writers, tolerant readers, status and checkpoints.

One home for the contract every other module (train, evaluate, sweep, report, export) reads and
writes, so a file name or a write discipline is never a string literal in two places:

    DIR/config.json      resolved config the run was started with
    DIR/status.json      {"state": "running"|"done"|"failed"|"preempted", "error", "final_step", ...}
    DIR/metrics.jsonl    one record per train step (+ DIR/tb/ TensorBoard events)
    DIR/eval.jsonl       one record per periodic evaluation
    DIR/checkpoints/     orbax CheckpointManager of the train-state pytree

Writers replace files atomically (temp file + rename): a killed process never leaves half a JSON
file. Readers are tolerant: a missing or half-written file reads as None / is skipped, because
report and sweep read directories of runs that may still be running or may have died.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"
# A sweep directory: SWEEP/sweep.json (the run list), SWEEP/runs/<name>/ (run directories),
# SWEEP/baselines/<setup>.json (step-0 baselines).
SWEEP_FILE = "sweep.json"
RUNS_SUBDIR = "runs"
BASELINES_SUBDIR = "baselines"
# The roles of a baselines file (`evaluate.run_baselines`) -> their titles in tables.
BASELINE_TITLES = {"student": "student (step 0)", "teacher": "teacher",
                   "teacher_with_context": "teacher + context"}


def safe_name(text: str) -> str:
    """Filesystem-safe, stable: keep `[A-Za-z0-9_.=+-]`, map everything else to `_`."""
    text = re.sub(r"[^A-Za-z0-9_.=+\-]", "_", text)
    return text if text not in ("", ".", "..") else "_" + text


# ============================================================================ writers


def _json_default(value: Any) -> Any:
    """JSON for what `json` does not know: mappings (ConfigDict), numpy scalars, paths."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return dict(value.items())
    if hasattr(value, "item") and callable(value.item):  # numpy scalars / 0-d arrays
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Temp file (per process) + rename: a killed process, or two sweep shards finishing
    together, never leave a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, sort_keys=True, indent=1, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Replaces a JSONL file atomically with `records` (one sorted-key object per line)."""
    write_text(path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n"
                             for r in records))


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Appends one record (a line is written whole, so a crash loses at most that line)."""
    with Path(path).open("a") as f:
        f.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")


# ============================================================================ readers


def read_json(path: str | os.PathLike) -> Optional[dict]:
    """The JSON object in `path`; None when missing or unreadable (e.g. a half-written file)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL file; a truncated last line (writer killed mid-line) is skipped."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[dict] = []
    for line in text.splitlines():
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


# ============================================================================ status


def read_status(workdir: str | os.PathLike) -> Optional[dict]:
    return read_json(Path(workdir) / STATUS_FILE)


def write_status(workdir: str | os.PathLike, status: Mapping[str, Any]) -> None:
    write_json(Path(workdir) / STATUS_FILE, dict(status))


def run_state(workdir: str | os.PathLike) -> str:
    """`done` / `failed` / `running` / `preempted` from status.json, `missing` without one."""
    status = read_status(workdir)
    return "missing" if status is None else str(status.get("state", "missing"))


def prior_wall_seconds(workdir: str | os.PathLike) -> float:
    """Wall seconds an earlier (preempted, failed, or finished) segment of the run recorded."""
    try:
        return float((read_status(workdir) or {}).get("wall_seconds") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def last_metric_step(workdir: str | os.PathLike) -> Optional[int]:
    """The step of the last complete metrics.jsonl record, None without one."""
    steps = [r["step"] for r in read_jsonl(Path(workdir) / METRICS_FILE)
             if isinstance(r.get("step"), int)]
    return steps[-1] if steps else None


def evals_upto(workdir: str | os.PathLike, step: int) -> list[dict]:
    """eval.jsonl records up to `step` (what a run resumed at `step` keeps)."""
    return [e for e in read_jsonl(Path(workdir) / EVAL_FILE) if e["step"] <= step]


# ============================================================================ metrics


class MetricsWriter:
    """metrics.jsonl (+ TensorBoard) on process 0; on resume, drops lines past the checkpoint."""

    def __init__(self, workdir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.file = workdir / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        if self.file.exists():
            write_jsonl(self.file, [r for r in read_jsonl(self.file) if r["step"] < resume_step])
        if "://" in str(workdir):  # tensorboardX writes local files only
            log.warning("remote workdir %s: TensorBoard events are not written "
                        "(metrics.jsonl is)", workdir)
            return
        try:  # TensorBoard is optional; JSONL is the record
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / TENSORBOARD_DIR))
        except ImportError:
            log.warning("tensorboardX not installed: metrics go to metrics.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.file, record)
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ============================================================================ checkpoints


def _abstract(target: Any) -> Any:
    """Restore target: shapes, dtypes and shardings of `target`'s arrays (numpy leaves as is)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
        if isinstance(x, jax.Array) else np.asarray(x), target)


class Checkpoints:
    """Orbax CheckpointManager of DIR/checkpoints: async saves, keep-N, restore onto a target.

    Use as a context manager (or call `close`): async saves finish before the manager closes.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        # orbax is heavy; importing it here keeps it out of report/sweep, which only read files
        import orbax.checkpoint as ocp
        from etils import epath

        self._ocp = ocp
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                            enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager(epath.Path(workdir) / CHECKPOINT_DIR, options=opts)

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def all_steps(self) -> list[int]:
        """Saved steps, ascending."""
        return sorted(int(s) for s in self._mngr.all_steps())

    def latest(self) -> Optional[int]:
        return self._mngr.latest_step()

    def save(self, state: dict[str, Any], *, wait: bool = False) -> None:
        """Saves `state` as step `state["step"]`; `wait` blocks until it is on disk."""
        self._mngr.save(int(state["step"]), args=self._ocp.args.StandardSave(state))
        if wait:
            self._mngr.wait_until_finished()

    def restore(self, step: int, target: dict[str, Any]) -> dict[str, Any]:
        """Checkpoint `step` with `target`'s tree, shapes and shardings."""
        return self._mngr.restore(step, args=self._ocp.args.StandardRestore(_abstract(target)))

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
