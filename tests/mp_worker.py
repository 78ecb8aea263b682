"""One process of the multi-process training test (tests/test_multiprocess.py).

    python tests/mp_worker.py --pair PAIR.json --workdir DIR --out OUT.npz --method mixture \
        --steps 2 --mesh data=2,fsdp=2,tensor=2 [--coordinator 127.0.0.1:PORT --num_processes 2 \
        --process_id I]

Joins the job through `cliffdistill.run.distributed.initialize` (nothing to join with one process),
trains with `loop.run` into the shared DIR, then restores the final checkpoint and writes the LoRA
params (gathered to every process) to OUT.npz from process 0. Prints one `RESULT {json}` line.
The environment (JAX_PLATFORMS, XLA_FLAGS device count) is set by the parent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", required=True, help="JSON file: {student, teacher, data} paths")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--method", default="mixture")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--mesh", default="data=2,fsdp=2,tensor=2")
    ap.add_argument("--coordinator", default=None)
    ap.add_argument("--num_processes", type=int, default=None)
    ap.add_argument("--process_id", type=int, default=None)
    args = ap.parse_args()

    from cliffdistill.run import distributed

    info = distributed.initialize(coordinator_address=args.coordinator,
                                  num_processes=args.num_processes, process_id=args.process_id)

    import jax
    import numpy as np

    # The same numerics as the in-process tests (tests/conftest.py).
    jax.config.update("jax_default_matmul_precision", "highest")

    from cliffdistill.engine import methods
    from cliffdistill.run import lock, loop, rundir
    from cliffdistill.run import assembly
    from cliffdistill.models import sharding
    from tests.tiny import tiny_run_config

    paths = {k: Path(v) for k, v in json.loads(Path(args.pair).read_text()).items()}
    cfg = tiny_run_config(paths, args.method, steps=args.steps)
    cfg.mesh.update({k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))})
    t0 = time.time()
    summary = loop.run(cfg, args.workdir, progress=False)
    seconds = time.time() - t0

    # Restore what the run checkpointed (every process reads the shared directory), and gather
    # the LoRA params (replicated global arrays) to host numpy on every process.
    s = assembly.make_setup(cfg)
    target = assembly.init_state(s, methods.num_steps(cfg.method, cfg.schedule))
    with rundir.Checkpoints(args.workdir) as ckpt:
        restored = ckpt.restore(ckpt.latest(), target)
    flat = jax.tree_util.tree_flatten_with_path(restored["lora"])[0]
    arrays = {"/".join(str(getattr(k, "key", k)) for k in path): sharding.to_host(leaf)
              for path, leaf in flat}
    if info.process_id == 0:
        np.savez(args.out, **arrays)
    distributed.barrier("mp-worker-done")
    print("RESULT " + json.dumps({
        "process_id": info.process_id, "num_processes": info.num_processes,
        "global_devices": info.global_devices, "local_devices": info.local_devices,
        "state": summary["state"], "final_step": summary["final_step"],
        "restored_step": int(restored["step"]), "seconds": seconds,
        "lora_sum": float(sum(np.abs(a).sum() for a in arrays.values())),
        "pid": os.getpid(), "lock_owner_pid": (lock.read_owner(args.workdir) or {}).get("pid"),
    }), flush=True)


if __name__ == "__main__":
    main()
