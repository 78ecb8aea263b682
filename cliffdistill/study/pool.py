"""Worker processes for CPU-bound work that one process cannot spread over the cores.

A small toy run or pretraining keeps ~1.4 of 2 CPU cores busy (XLA's CPU kernels for
[32, 128]-token batches of a 114k-parameter model are too small to use every thread), so two
independent jobs at once finish 1.3-1.7x sooner than one after another (measured on 2 cores,
docs/PERFORMANCE.md).
Workers are *spawned* (forking a process whose jax runtime already runs threads is unsafe) and
copy this process's jax settings, e.g. the persistent compilation cache the command line set, so
they share compiled programs. On an accelerator keep one process: each would claim the device.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
from typing import Any

#: jax settings a worker copies from the process that starts it.
JAX_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                "jax_enable_x64", "jax_platforms")


def jax_settings() -> dict[str, Any]:
    """The `JAX_SETTINGS` of this process ({} when jax was never imported: nothing to copy)."""
    jax = sys.modules.get("jax")
    return {n: getattr(jax.config, n) for n in JAX_SETTINGS} if jax is not None else {}


def init_worker(settings: dict[str, Any]) -> None:
    import jax

    for name, value in settings.items():
        jax.config.update(name, value)


def executor(n: int) -> concurrent.futures.ProcessPoolExecutor:
    """`n` spawned worker processes with this process's jax settings. Work sent to them must be
    picklable: module-level functions (or partials of them). A worker that dies (killed, out of
    memory) breaks the executor: its futures raise BrokenProcessPool instead of never finishing."""
    return concurrent.futures.ProcessPoolExecutor(
        n, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
        initargs=(jax_settings(),))


def map_counts() -> tuple[int, int] | None:
    """(memory maps this process holds, the kernel's per-process limit `vm.max_map_count`), or
    None where /proc does not tell (not Linux)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            held = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            return held, int(f.read())
    except (OSError, ValueError):
        return None


def free_compiled_programs(fraction: float = 0.5) -> bool:
    """Drops jax's compiled programs once this process holds over `fraction` of its memory-map
    limit; returns whether it did.

    XLA:CPU keeps a few memory maps per compiled program while the program is cached. A process
    that trains hundreds of runs (a sweep worker, or a sweep in one process) compiles thousands of
    programs -- one per loss-term combination, defect switch and completion width -- and at the
    kernel's limit (65530 maps by default) the next compilation fails ("LLVM compilation error:
    Cannot allocate memory") and kills the process. Called between runs; the runs after it
    recompile, or load the programs from the persistent compilation cache."""
    counts = map_counts()
    if counts is None or counts[0] <= fraction * counts[1]:
        return False
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
    return True


def stop(ex: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancels the queued work and stops the workers now: after a failure or an interrupt nobody
    should wait for runs that take minutes (a stopped run reads as stale and is redone on resume).
    Python >= 3.14 has `kill_workers`; before it, the executor's process table is the only handle."""
    ex.shutdown(wait=False, cancel_futures=True)
    kill = getattr(ex, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        proc.kill()
