"""A tiny training run in a child process, for tests/test_faults.py to SIGKILL at a fault point.

    python tests/fault_child.py '{"paths": {...}, "workdir": ..., "cache_dir": ...}'

`CLIFFDISTILL_FAULT=<point>:<index>` in the environment (see `rundir.fault_point`) makes the run
kill itself there. `fault_config` is also what the parent test trains with, so the killed run,
its resumption and the uninterrupted reference share one config.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # as conftest
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections  # noqa: E402

from cliffdistill.run import loop  # noqa: E402
from tests.tiny import tiny_run_config  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # as conftest: bitwise comparable

STEPS = 6


def fault_config(paths: dict, cache_dir: str) -> ml_collections.ConfigDict:
    """mixture (on- and off-policy every step), 6 steps, eval + async checkpoint every 2."""
    cfg = tiny_run_config({k: Path(v) for k, v in paths.items()}, "mixture", steps=STEPS)
    cfg.checkpoint.every, cfg.eval.every, cfg.checkpoint.async_save = 2, 2, True
    cfg.off_policy.cache_dir = str(cache_dir)
    return cfg


def main(args: dict) -> None:
    loop.run(fault_config(args["paths"], args["cache_dir"]), args["workdir"], progress=False)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
