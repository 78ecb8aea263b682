"""The run directory: its file names, atomic writers, tolerant readers, status and checkpoints.

One home for the contract every other module (train, evaluate, sweep, report, export) reads and
writes, so a file name or a write discipline is never a string literal in two places:

    DIR/config.json      resolved config the run was started with
    DIR/status.json      {"state": "running"|"done"|"failed"|"preempted", "error", "final_step",
                          "pid", "pid_start", "host", "heartbeat", "resumed_from",
                          "skipped_checkpoints", ...}
    DIR/metrics.jsonl    one record per train step (+ DIR/tb/ TensorBoard events)
    DIR/eval.jsonl       one record per periodic evaluation
    DIR/checkpoints/     orbax CheckpointManager of the train-state pytree
    DIR/config_history.jsonl  accepted config changes of a resumed run (`integrity`)
    DIR/writer.lock      the one writer's lock and owner record (`lock`)

Writers replace files atomically (temp file + fsync + rename + directory fsync): a killed process
or a lost machine never leaves half a JSON file. Readers are tolerant: a missing or half-written file reads as None / is skipped, because
report and sweep read directories of runs that may still be running or may have died.
A running run renews a heartbeat in status.json (`Heartbeat`), so one killed without warning
reads as `stale` (`staleness`) and is re-run. `Checkpoints.restore_latest` skips (and moves
aside) checkpoints that fail to restore. `python -m cliffdistill.rundir status DIR...` prints
the state of run directories. docs/RELIABILITY.md states what is guaranteed and how it is tested.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import numpy as np

from cliffdistill.run import distributed

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = "writer.lock"
TENSORBOARD_DIR = "tb"
# A sweep directory: SWEEP/sweep.json (the run list), SWEEP/runs/<name>/ (run directories),
# SWEEP/baselines/<setup>.json (step-0 baselines).
SWEEP_FILE = "sweep.json"
RUNS_SUBDIR = "runs"
BASELINES_SUBDIR = "baselines"
# The roles of a baselines file (`evaluate.run_baselines`) -> their titles in tables.
BASELINE_TITLES = {"student": "student (step 0)", "teacher": "teacher",
                   "teacher_with_context": "teacher + context"}


class Preempted(Exception):
    """Raised by the trainer after a SIGTERM-triggered checkpoint (status `preempted`): callers
    stop -- a sweep does not go on to its next run on a machine that is being taken away."""


def safe_name(text: str) -> str:
    """Filesystem-safe, stable: keep `[A-Za-z0-9_.=+-]`, map everything else to `_`."""
    text = re.sub(r"[^A-Za-z0-9_.=+\-]", "_", text)
    return text if text not in ("", ".", "..") else "_" + text


# ============================================================================ writers


def plain(value: Any, *, strict: bool = False) -> Any:
    """A JSON-able copy of `value`: the one converter behind every JSON file the project writes.

    Mappings (ConfigDict too) -> dicts with str keys, tuples/lists -> lists, paths -> str, numpy
    scalars and 0-d arrays -> Python scalars; `strict`: NaN/inf -> None (strict JSON, for
    results files). Anything else becomes `<TypeName>`, never its repr (which may hold a memory
    address, and so would change a config's hash from one process to the next)."""
    if isinstance(value, float):
        return None if strict and not math.isfinite(value) else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping) or (hasattr(value, "items") and callable(value.items)):
        return {str(k): plain(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, strict=strict) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars / 0-d arrays
        try:
            return plain(value.item(), strict=strict)
        except (TypeError, ValueError):
            pass
    return f"<{type(value).__name__}>"


def _fsync_dir(directory: Path) -> None:
    """Makes a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Temp file (per process and thread) + fsync + rename + directory fsync: a killed process,
    a power loss, or two sweep shards finishing together never leave a torn or empty file --
    readers see the old content or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            fault_point("atomic_write", path.name)  # test hook: a crash mid-write
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(plain(obj), sort_keys=True, indent=1) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Replaces a JSONL file atomically with `records` (one sorted-key object per line)."""
    write_text(path, "".join(json.dumps(plain(r), sort_keys=True) + "\n"
                             for r in records))


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Appends one record (a line is written whole, so a crash loses at most that line)."""
    with Path(path).open("a") as f:
        f.write(json.dumps(plain(record), sort_keys=True) + "\n")


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

# A running trainer renews status.json's heartbeat this often (seconds) ...
HEARTBEAT_SECONDS = 30.0
# ... and a `running` status whose heartbeat is older than this reads as stale (a dead run).
# Generous, because a heartbeat thread can be starved by a busy host; set it per call/CLI flag.
STALE_AFTER_SECONDS = 900.0


def read_status(workdir: str | os.PathLike) -> Optional[dict]:
    return read_json(Path(workdir) / STATUS_FILE)


def write_status(workdir: str | os.PathLike, status: Mapping[str, Any]) -> None:
    write_json(Path(workdir) / STATUS_FILE, dict(status))


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3, the state, first), or None (not Linux,
    or no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc field 22), or None where /proc
    does not tell: with the pid it names one process, even after the pid is reused."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def owner_fields() -> dict[str, Any]:
    """Who is running a run and when it last said so: what `staleness` checks."""
    return {"pid": os.getpid(), "pid_start": pid_start(os.getpid()),
            "host": socket.gethostname(), "heartbeat": time.time()}


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (killed, not yet reaped);
    with `start` (its `pid_start`), also that it is that process and not a later one given the
    same pid -- pids (shared with threads) are reused within minutes on a busy host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] == "Z":  # a zombie still answers kill(0) but will never write again
        return False
    return start is None or pid_start(pid) in (None, start)


def staleness(status: Mapping[str, Any], *, stale_after: float = STALE_AFTER_SECONDS,
              now: Optional[float] = None, host: Optional[str] = None) -> Optional[str]:
    """Why a `running` status belongs to a dead run, or None when it may still be alive.

    Stale: no owner recorded (a writer that predates heartbeats, or a killed sweep's placeholder),
    the owner's pid is dead on this host, or the heartbeat is older than `stale_after` seconds
    (another host, or a reused pid here). Pure given `now`/`host`, so tests need no clock.
    """
    if status.get("state") != "running":
        return None
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    pid, beat = status.get("pid"), status.get("heartbeat")
    if not isinstance(pid, int) or not isinstance(beat, (int, float)):
        return "no heartbeat recorded"
    if status.get("host") == host and not pid_alive(pid, status.get("pid_start")):
        return f"process {pid} on {host} is gone"
    if now - beat > stale_after:
        return (f"no heartbeat for {now - beat:.0f}s (> {stale_after:.0f}s) from process {pid} "
                f"on {status.get('host')}")
    return None


def run_state(workdir: str | os.PathLike, stale_after: float = STALE_AFTER_SECONDS) -> str:
    """`done` / `failed` / `running` / `preempted` / `stale` (a `running` run that died) from
    status.json, `missing` without one."""
    status = read_status(workdir)
    if status is None:
        return "missing"
    if staleness(status, stale_after=stale_after) is not None:
        return "stale"
    return str(status.get("state", "missing"))


class Heartbeat:
    """status.json of a live run: `running` + owner (pid, host) + a heartbeat a daemon thread
    renews every `interval` seconds, so a run killed without warning (SIGKILL, OOM, a lost node)
    is recognised as stale, even in a phase longer than a step (teacher samples, evals).

    Every status write of the run goes through `update` / `finish` (one lock, one writer).
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True,
                 interval: float = HEARTBEAT_SECONDS):
        self.workdir, self.enabled, self.interval = workdir, enabled, interval
        self.status: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, **fields: Any) -> None:
        """Writes `running` (+ `fields`) now and starts renewing the heartbeat."""
        self.update(state="running", error=None, **fields)
        if self.enabled:
            self._thread = threading.Thread(target=self._beat, name="cliffdistill-heartbeat",
                                            daemon=True)
            self._thread.start()

    def update(self, **fields: Any) -> None:
        """Merges `fields` into the status and writes it with a fresh heartbeat."""
        with self._lock:
            self.status.update(fields)
            self._write()

    def finish(self, **fields: Any) -> None:
        """Stops the heartbeat and writes the final status (`done` / `failed` / `preempted`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.update(**fields)

    def _write(self) -> None:
        if self.enabled:
            self.status.update(owner_fields())
            write_status(self.workdir, self.status)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._write()
                except OSError as e:  # a full or flaky disk must not kill the run; retry later
                    log.warning("heartbeat: cannot write %s: %s", STATUS_FILE, e)


# ============================================================================ fault injection

# Test hook (tests/test_faults.py): `CLIFFDISTILL_FAULT=<point>:<index>` makes the process SIGKILL
# itself when it reaches that point, a deterministic stand-in for a crash, OOM kill or lost node.
# Points: `step:<i>` (train step i, after rollout/scoring, before the update), `checkpoint_write:<s>`
# (right after the save of step s was started, before it is waited on), `teacher_cache:0` (the
# teacher-sample cache written to its temp file, not yet renamed into place), `atomic_write:<file
# name>` (an atomic write's temp file written, not yet synced and renamed), `checkpoint_enospc:<s>`
# (not a kill: the save of step s fails as on a full disk, ENOSPC). Unset: no effect.
FAULT_ENV = "CLIFFDISTILL_FAULT"


def fault_point(name: str, index: int | str) -> None:
    """SIGKILLs this process if `CLIFFDISTILL_FAULT` names this point (test hook; see above)."""
    if os.environ.get(FAULT_ENV) == f"{name}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


def prior_wall_seconds(workdir: str | os.PathLike) -> float:
    """Wall seconds an earlier (preempted, failed, or finished) segment of the run recorded."""
    try:
        return float((read_status(workdir) or {}).get("wall_seconds") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def saved_steps(workdir: str | os.PathLike) -> list[int]:
    """Steps with a checkpoint directory, ascending, read from the file names alone (no orbax):
    what a resume would start from, known before any compute. Partial saves (orbax's temporary
    names) are not steps."""
    try:
        names = os.listdir(Path(workdir) / CHECKPOINT_DIR)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


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


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain (storage layers wrap it, some only in text)."""
    while e is not None:
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The gist of a storage error (tensorstore appends kilobytes of JSON spec to its messages)."""
    text = (str(e).splitlines() or [""])[0].split(" [tensorstore_spec")[0]
    return text if len(text) <= limit else text[:limit] + "..."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (missing or corrupt files, a partial write, a tree
    that does not match the run's config); the message names its step and path."""


class Checkpoints:
    """Orbax CheckpointManager of DIR/checkpoints: async saves, keep-N, restore onto a target.

    Use as a context manager (or call `close`): async saves finish before the manager closes.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        # orbax is heavy; importing it here keeps it out of report/sweep, which only read files
        import orbax.checkpoint as ocp
        from etils import epath

        self._ocp = ocp
        # orbax needs absolute paths: a relative local workdir is resolved here, once, for
        # every caller (trainer, evaluate, the main job's retention eval); gs://... is kept
        local = "://" not in os.fspath(workdir)
        self.workdir = epath.Path(os.path.abspath(workdir) if local else workdir)
        self.directory = self.workdir / CHECKPOINT_DIR
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                            enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager(self.directory, options=opts)

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def all_steps(self) -> list[int]:
        """Saved steps, ascending."""
        return sorted(int(s) for s in self._mngr.all_steps())

    def latest(self) -> Optional[int]:
        return self._mngr.latest_step()

    def path(self, step: int) -> str:
        return str(self.directory / str(step))

    def save(self, state: dict[str, Any], *, wait: bool = False) -> None:
        """Saves `state` as step `state["step"]`; `wait` blocks until it is on disk. A full disk
        raises CheckpointError saying so (`_disk_full`)."""
        step = int(state["step"])
        with self._disk_full(step):
            if os.environ.get(FAULT_ENV) == f"checkpoint_enospc:{step}":  # test hook (see above)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path(step))
            self._mngr.save(step, args=self._ocp.args.StandardSave(state))
            fault_point("checkpoint_write", step)
            if wait:
                self._mngr.wait_until_finished()

    @contextlib.contextmanager
    def _disk_full(self, step: Optional[int]) -> Iterator[None]:
        """Turns an out-of-space error of a (possibly earlier, asynchronous) save into one plain
        sentence: what failed, that the complete checkpoints are intact, and how to go on.
        Orbax writes a step under a temporary name and renames it when complete, so a failed
        save never looks like a checkpoint."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - only a full disk is translated; the rest re-raised
            if not _is_disk_full(e):
                raise
            try:  # an earlier asynchronous save may still be completing: let it
                self._mngr.wait_until_finished()
            except Exception:  # noqa: BLE001 - it failed too; the steps listed below are complete
                pass
            done = [s for s in self.all_steps() if s != step]
            where = f"step {step} " if step is not None else ""
            raise CheckpointError(
                f"no space left on device while saving checkpoint {where}in {self.directory}. "
                f"The complete checkpoints ({done or 'none'}) are intact: free space (or lower "
                f"checkpoint.keep), then re-run the same command to resume"
                + (f" from step {done[-1]}." if done else " from step 0.")) from e

    def restore(self, step: int, target: dict[str, Any]) -> dict[str, Any]:
        """Checkpoint `step` with `target`'s tree, shapes and shardings; CheckpointError naming
        the step and path when it cannot be read (orbax's own error is a page of internals)."""
        try:
            return self._mngr.restore(step, args=self._ocp.args.StandardRestore(_abstract(target)))
        except Exception as e:  # noqa: BLE001 - any failure of the storage stack means "unreadable"
            raise CheckpointError(f"checkpoint step {step} at {self.path(step)} cannot be "
                                  f"restored ({type(e).__name__}: {_first_line(e)})") from e

    def restore_latest(self, target: dict[str, Any],
                       validate: Optional[Callable[[dict[str, Any]], None]] = None
                       ) -> tuple[Optional[dict[str, Any]], list[dict[str, Any]]]:
        """The newest checkpoint that restores (and passes `validate`, which raises ValueError on
        a restored state it rejects), newest first; and the ones skipped, as
        `{"step", "path", "error"}`, each logged and moved to DIR/checkpoints.bad/ so a later save
        of the same step can take its place. (None, skipped) when nothing was saved; raises
        CheckpointError listing every failure when checkpoints exist but none restores.
        """
        skipped: list[dict[str, Any]] = []
        for step in reversed(self.all_steps()):
            try:
                state = self.restore(step, target)
                if validate is not None:
                    validate(state)
            except (CheckpointError, ValueError) as e:
                skipped.append({"step": step, "path": self.path(step), "error": str(e)})
                log.warning("skipping checkpoint step %d (%s): %s", step, self.path(step), e)
                continue
            self._quarantine([s["step"] for s in skipped])
            return state, skipped
        if skipped:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored: "
                + "; ".join(f"step {s['step']}: {s['error']}" for s in skipped)
                + f". Delete {self.directory} to restart the run from step 0, or restore a backup.")
        return None, skipped

    def _quarantine(self, steps: list[int]) -> None:
        """Moves unrestorable checkpoints to DIR/checkpoints.bad/<step>.<time> (kept for a
        post-mortem, out of the manager's sight) on process 0, and re-reads the step list."""
        if steps and distributed.is_main():
            bad = self.workdir / (CHECKPOINT_DIR + ".bad")
            bad.mkdir(parents=True, exist_ok=True)
            for step in steps:
                (self.directory / str(step)).rename(bad / f"{step}.{int(time.time())}")
        if steps:
            self._mngr.reload()

    def close(self) -> None:
        with self._disk_full(None):  # an asynchronous save's error surfaces here
            self._mngr.wait_until_finished()
        self._mngr.close()


# ============================================================================ status CLI


def status_line(workdir: str | os.PathLike, stale_after: float = STALE_AFTER_SECONDS) -> str:
    """`<state> step=<final_step> <dir>` (+ why it is stale, or its error) for one run directory."""
    status = read_status(workdir) or {}
    state = run_state(workdir, stale_after)
    line = f"{state:9s} step={status.get('final_step')} {workdir}"
    if state == "stale":
        line += f"  ({staleness(status, stale_after=stale_after)}; re-run it to resume)"
    elif state == "failed":
        line += f"  ({status.get('error')})"
    if status.get("skipped_checkpoints"):
        line += f"  [resumed from step {status.get('resumed_from')}, skipped unrestorable " \
                f"checkpoint(s) {[s['step'] for s in status['skipped_checkpoints']]}]"
    return line


def status_lines(paths: Iterable[str | os.PathLike],
                 stale_after: float = STALE_AFTER_SECONDS) -> list[str]:
    """One line per run directory; a sweep directory (with runs/) lists each of its runs."""
    lines = []
    for path in map(Path, paths):
        runs = path / RUNS_SUBDIR
        dirs = sorted(d for d in runs.iterdir() if d.is_dir()) if runs.is_dir() else [path]
        lines += [status_line(d, stale_after) for d in dirs]
    return lines
