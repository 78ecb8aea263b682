"""Runs untrusted Python programs, each in its own subprocess, and says whether they passed.

Per program: a fresh temporary directory as the working directory (removed afterwards), a new
session / process group (the whole group is SIGKILLed on timeout and after the program ends, so
children it spawned do not outlive it), `python -I` (no user site, no PYTHON* variables), a
scrubbed environment, stdin closed, and rlimits on address space, CPU seconds, file size, open
files and (where the OS applies it to the user) processes.

NOT isolated: the network, the rest of the file system (a program can read, and write wherever
the user may, outside its directory), and other processes of the same user. RLIMIT_NPROC does not
bind root. For untrusted models run this inside a container or VM without network.

A program passes only if it printed the per-run completion marker that the harness appends after
the checks AND exited with status 0: an early `sys.exit(0)` / `os._exit(0)` never reaches the
marker and fails. (The marker guards against accidents, not against a program that reads its own
source to forge it.)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

PASSED, FAILED, TIMEOUT = "passed", "failed", "timed_out"


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0  # wall clock, whole process group killed after it
    memory_mb: int = 1024  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 64  # RLIMIT_NPROC (per user; not applied to root)


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # PASSED | FAILED | TIMEOUT
    error: str  # last exception type seen on stderr ("" if none), or "exit N" / "timeout"
    returncode: int | None


# The child sets its own rlimits, then runs the program as __main__ (no preexec_fn: that is unsafe
# with the worker threads of `run_programs`). argv: program path, then the limits as ints.
BOOTSTRAP = """import resource, runpy, sys
path, mem, cpu, fsize, nofile, nproc = sys.argv[1], *map(int, sys.argv[2:])
for kind, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                    (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, nofile),
                    (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(kind, (value, value))
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""


def limit_args(limits: Limits) -> list[str]:
    mb = 1 << 20
    return [str(v) for v in (limits.memory_mb * mb, int(limits.timeout_s) + 1,
                             limits.file_mb * mb, limits.open_files, limits.processes)]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def error_type(stderr: str) -> str:
    """The exception name of the last traceback line ("AssertionError", ...), or ""."""
    for line in reversed(stderr.strip().splitlines()):
        head = line.split(":", 1)[0].strip()
        if head and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
            return head
    return ""


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Runs `source` plus a completion marker in a sandboxed subprocess."""
    marker = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="cliffdistill_exec_") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(source + f"\n\nprint({marker!r}, flush=True)\n")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", BOOTSTRAP, str(script), *limit_args(limits)], cwd=tmp,
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        try:
            out, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            return Outcome(False, TIMEOUT, "timeout", None)
        finally:
            _kill_group(proc.pid)  # children the program left behind
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        return Outcome(False, TIMEOUT, "cpu time limit", proc.returncode)
    ok = proc.returncode == 0 and marker in stdout.splitlines()
    if ok:
        return Outcome(True, PASSED, "", 0)
    err_name = error_type(stderr) or (f"exit {proc.returncode}" if proc.returncode
                                      else "ended before its checks finished")
    return Outcome(False, FAILED, err_name, proc.returncode)


def run_programs(sources: Sequence[str], limits: Limits = Limits(), workers: int = 4,
                 progress: Callable[[int, int], Any] | None = None) -> list[Outcome]:
    """`run_program` on each source, `workers` at a time, results in input order;
    `progress(done, total)` after each program ends."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run_program, s, limits) for s in sources]
        if progress is not None:
            for done, _ in enumerate(concurrent.futures.as_completed(futures), start=1):
                progress(done, len(futures))
        return [f.result() for f in futures]
