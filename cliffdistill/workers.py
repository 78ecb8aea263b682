"""Worker processes for CPU-bound work that one process cannot spread over the cores.

A small toy run or pretraining keeps ~1.4 of 2 CPU cores busy (XLA's CPU kernels for
[32, 128]-token batches of a 114k-parameter model are too small to use every thread), so two
independent jobs at once finish ~1.6x sooner than one after another (measured on 2 cores).
Workers are *spawned* (forking a process whose jax runtime already runs threads is unsafe) and
copy this process's jax settings, e.g. the persistent compilation cache the command line set, so
they share compiled programs. On an accelerator keep one process: each would claim the device.
"""

from __future__ import annotations

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


def pool(n: int) -> Any:
    """A spawned `multiprocessing.Pool` of `n` workers with this process's jax settings.
    Work sent to it must be picklable: module-level functions (or partials of them)."""
    ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(n, initializer=init_worker, initargs=(jax_settings(),))
