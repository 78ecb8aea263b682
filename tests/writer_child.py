"""A writer in a child process, for tests/test_reliability.py to race against another writer.

    python tests/writer_child.py '{"mode": "train"|"sweep"|"hold", "dir": ..., ...}'

`train`: the tiny `fault_config` run (tests/fault_child.py) into `dir`; `sweep`: a two-run sweep of
fake runs into `dir`. With `ready`/`go` file paths the child creates `ready` once it is writing
(after a step / inside the first run) and waits for `go` before it goes on, so the parent can
start a second writer at a known moment without sleeps. `hold`: takes `dir`'s writer lock,
creates `ready` and sleeps until killed. A refusal exits with code 3 and the message on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # as conftest
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402

from cliffdistill.run import lock, loop  # noqa: E402
from cliffdistill.study import runner  # noqa: E402
from tests.fault_child import fault_config  # noqa: E402


def _pause(args: dict) -> None:
    """Signals `ready` and waits for `go` (no-op without them)."""
    if args.get("ready"):
        Path(args["ready"]).touch()
        while not Path(args["go"]).exists():
            time.sleep(0.05)


def sweep_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"base_config": "configs/base.py", "base_overrides": {},
                                      "product": {"seed": (0, 1)}, "zip": {}, "baselines": False})


def fake_run(args: dict):
    def run(cfg: ml_collections.ConfigDict, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _pause(args)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    return run


def main(args: dict) -> None:
    try:
        if args["mode"] == "train":
            hook = (lambda step, _: _pause(args) if step == 1 else None)
            loop.run(fault_config(args["paths"], args["cache_dir"]), args["dir"], progress=False,
                     step_hook=hook)
        elif args["mode"] == "sweep":
            runner.run_sweep(sweep_config(), args["dir"], fake_run(args), progress=False,
                             write_report=False)
        else:
            with lock.hold(args["dir"], "test holder"):
                Path(args["ready"]).touch()
                time.sleep(600)
    except lock.Locked as e:
        print(f"REFUSED {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
