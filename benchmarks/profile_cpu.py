"""Where the time goes: op-level XLA profiles of the LoRA update and MoE scoring on CPU.

    python benchmarks/profile_cpu.py [--smoke] [--steps 3] [--out profile.json]

Runs the two programs of `cpu_compare.py` (same models and shapes) under `jax.profiler`, reads
the trace it writes (`*.trace.json.gz`, no TensorBoard needed) and sums the time of every XLA
operation, grouped by kind (the fusion name without its number: `ynn_fusion` = matmuls,
`copy_bitcast_fusion` / `transpose_copy_fusion` = layout copies, `cond` = the grouped MoE's
rounds, ...). The table says which kind of work a change must remove; the HLO of each program is
written beside the JSON so a kind can be traced to its source line (`metadata={op_name=...}`).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cpu_compare as cc  # noqa: E402
from cliffdistill.models import transformer  # noqa: E402

#: Trace events that are not XLA operations (executor bookkeeping, Python frames, waits).
_NOT_OPS = re.compile(r"^(ThunkExecutor|\$|SlinkyThreadPool|while)|Await")


def op_times(trace_dir: Path, steps: int) -> dict[str, float]:
    """ms per step of each XLA operation kind in the newest trace under `trace_dir`."""
    trace = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))[-1]
    events = json.loads(gzip.open(trace).read())["traceEvents"]
    total: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not _NOT_OPS.search(e["name"]):
            total[re.sub(r"(\.\d+)+(\.clone)?$", "", e["name"])] += e["dur"] / 1e3 / steps
    return dict(total.most_common())


def profile(fn: Callable[[], Any], steps: int, trace_dir: Path) -> dict[str, float]:
    """Op-kind times of `steps` calls of a warmed-up, blocking `fn`."""
    fn()
    jax.profiler.start_trace(str(trace_dir))
    for _ in range(steps):
        fn()
    jax.profiler.stop_trace()
    return op_times(trace_dir, steps)


def programs(smoke: bool) -> dict[str, Callable[[], Any]]:
    sh = cc.shapes(smoke)
    cfg = cc.dense_config(smoke)
    params = transformer.init_params(cfg, jax.random.key(0))
    batch = cc.update_batch(cfg.vocab_size, *sh.update)
    mcfg = cc.moe_config(smoke)
    mparams = transformer.init_params(mcfg, jax.random.key(1))
    out = {f"lora_update_remat_{r}": cc.ours_update(cfg, params, batch, r) for r in ("none", "full")}
    out |= {f"moe_score_{impl}": cc.ours_score(mcfg, mparams, *sh.score, impl)
            for impl in ("grouped", "dense")}
    return out


def table(res: dict[str, dict[str, float]], top: int = 8) -> str:
    lines = []
    for name, ops in res.items():
        total = sum(ops.values())
        lines += [f"{name}: {total:.0f} ms/step of XLA operations", "",
                  "| operation kind | ms/step | share |", "|---|---|---|"]
        lines += [f"| `{k}` | {v:.1f} | {100 * v / total:.1f}% |" for k, v in list(ops.items())[:top]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models (tests)")
    ap.add_argument("--steps", type=int, default=3, help="profiled calls per program")
    ap.add_argument("--out", type=Path, default=None, help="write the op times as JSON")
    args = ap.parse_args(argv)
    res = {"load_average_before": cc.load_average()}
    ops = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in programs(args.smoke).items():
            cc.log(f"profiling {name}")
            ops[name] = profile(fn, args.steps, Path(tmp) / name)
    res |= {"ops_ms_per_step": ops, "load_average_after": cc.load_average(),
            "versions": {"jax": jax.__version__}, "smoke": args.smoke, "steps": args.steps}
    print(table(ops))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
