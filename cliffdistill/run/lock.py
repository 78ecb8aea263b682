"""One writer per directory: an exclusive lock every writing command takes before any compute.

    with lock.hold(workdir, "train"):   # refuses a second writer at once, naming the owner
        ...

The lock is `fcntl.flock` on DIR/writer.lock, held by an open file for the writer's lifetime, so
the kernel releases it when the process dies in any way (kill -9, OOM, a crash); the file also
records the owner (host, pid, process start time, command, since) for the refusal message. A
lock file whose recorded owner is gone is taken over with a warning naming it.

On a filesystem without `flock` (some network mounts) the owner record alone decides: a record
naming a live process on this host refuses, a dead one is taken over, and one from another host
refuses (its liveness cannot be checked from here) with the command to clear it. Remote object
stores (`gs://...`) cannot be locked: a warning says so and the caller goes on.

Multi-host: only process 0 takes the lock (`distributed.is_main()`); `agree` then tells every
other process whether process 0 got it, so none of them starts a step process 0 refused.

Re-entrant per process: the main job holds its workdir while the sweep it runs takes the same
directory again; the inner `hold` is then a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from cliffdistill.run import distributed, rundir

log = logging.getLogger(__name__)

_HELD: dict[str, int] = {}  # resolved lock path -> re-entry depth, in this process


class Locked(RuntimeError):
    """Another live process writes this directory (the message names it and what to do)."""


def owner_record(command: str) -> dict[str, Any]:
    """Who holds a lock: written into the lock file once it is taken."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": rundir.pid_start(os.getpid()), "command": command,
            "argv": " ".join(sys.argv), "since": time.time()}


def _when(t: Any) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"


def describe(owner: Optional[dict]) -> str:
    """`train (pid 123 on host-a, since 2026-12-06 19:00:01)`."""
    if not owner:
        return "an unknown process (empty lock record)"
    return (f"{owner.get('command', '?')} (pid {owner.get('pid')} on {owner.get('host')}, "
            f"since {_when(owner.get('since'))})")


def owner_alive(owner: Optional[dict], host: Optional[str] = None) -> Optional[bool]:
    """True/False for an owner recorded on this host; None when it is on another host."""
    if not owner or not isinstance(owner.get("pid"), int):
        return False
    if owner.get("host") != (socket.gethostname() if host is None else host):
        return None
    return rundir.pid_alive(owner["pid"], owner.get("pid_start"))


def read_owner(path: str | os.PathLike) -> Optional[dict]:
    """The owner record of a lock file, or of DIR/writer.lock for a directory (the current or
    the last holder), None without one."""
    path = Path(path)
    try:
        text = (path / rundir.LOCK_FILE if path.is_dir() else path).read_text()
        rec = json.loads(text) if text.strip() else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _refusal(path: Path, owner: Optional[dict]) -> Locked:
    return Locked(f"{path.parent} is being written by {describe(owner)}: wait for it to finish "
                  f"or stop it, or use another directory (two writers would interleave its "
                  f"files).")


def _write_owner(fd: int, record: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
    os.fsync(fd)


def _acquire(path: Path, command: str) -> int:
    """Takes the lock file `path`; the open descriptor holds it. Raises Locked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    previous = read_owner(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(path, read_owner(path)) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        alive = owner_alive(previous)
        if previous and previous.get("pid") != os.getpid() and alive is not False:
            os.close(fd)
            hint = "" if alive else (f" If that process is gone, delete {path}.")
            raise Locked(str(_refusal(path, previous)) + " (this filesystem has no "
                         f"flock; the lock record decides).{hint}") from None
    if previous and previous.get("pid") != os.getpid() and owner_alive(previous) is False:
        log.warning("%s: taking over the writer lock of %s, which is gone", path.parent,
                    describe(previous))
    _write_owner(fd, owner_record(command))
    return fd


@contextlib.contextmanager
def hold(directory: str | os.PathLike, command: str, name: str = rundir.LOCK_FILE
         ) -> Iterator[None]:
    """Holds DIR's writer lock (DIR/`name`, creating DIR) for the `with` body, on process 0
    only; every process learns (`agree`) whether process 0 got it. Raises Locked at once when
    another live process holds it."""
    if "://" in os.fspath(directory):
        log.warning("%s is remote: it cannot be locked; make sure no other job writes it",
                    directory)
        yield
        return
    directory = Path(directory).resolve()
    key = str(directory / name)
    fd: Optional[int] = None
    error: Optional[Locked] = None
    if distributed.is_main() and key not in _HELD:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = _acquire(directory / name, command)
        except Locked as e:
            error = e
    agree(error is None, f"lock {directory}")
    if error is not None:
        raise error
    _HELD[key] = _HELD.get(key, 0) + 1
    try:
        yield
    finally:
        _HELD[key] -= 1
        if not _HELD[key]:
            del _HELD[key]
        if fd is not None:
            os.close(fd)  # releases the flock; the record stays as "the last holder"


def agree(ok: bool, what: str) -> None:
    """Every process of a multi-process job learns process 0's `ok`; the others raise when it is
    False, so a refusal on process 0 stops the whole job instead of leaving it in a collective."""
    if not distributed.broadcast_from_main(int(ok)) and not distributed.is_main():
        raise Locked(f"process 0 refused {what} (see its log)")
