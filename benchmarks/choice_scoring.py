"""Multiple-choice scoring throughput: each context encoded once for all its choices
(`multiple_choice.score_shared`) against one (context, choice) row per choice
(`multiple_choice.score_pairs`, the harness's request layout).

    python benchmarks/choice_scoring.py [--docs 32] [--batch 8] [--reps 3]

A Llama-shaped random model (4 layers, d_model 256, vocab 8192, fp32) scores synthetic documents
of four shapes, token ids drawn at random (the cost depends on shapes only): `mmlu_5shot`
(480-token context, 4 one-token choices), `arc` (48-token context, 4 choices of 6-12 tokens),
`hellaswag` (96-token context, 4 endings of 18-30 tokens) and `toy_retention` (100-token
context, 4 choices of 1-2 tokens, the main job's retention benchmark). Both paths run
interleaved A/B after one warm-up pass (compilation excluded); the median over `--reps` is
reported as documents/s, with the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliffdistill.models import config as mconfig  # noqa: E402
from cliffdistill.models import transformer  # noqa: E402
from cliffdistill.tasks import multiple_choice  # noqa: E402

SHAPES = {  # name -> (context tokens, choices, continuation token range [lo, hi])
    "mmlu_5shot": (480, 4, (1, 1)),
    "arc": (48, 4, (6, 12)),
    "hellaswag": (96, 4, (18, 30)),
    "toy_retention": (100, 4, (1, 2)),
}


def requests(shape: tuple[int, int, tuple[int, int]], n: int, vocab: int, seed: int
             ) -> list[tuple[list[int], list[list[int]]]]:
    ctx_len, n_choices, (lo, hi) = shape
    rng = np.random.default_rng(seed)
    draw = lambda k: rng.integers(3, vocab, k).tolist()  # noqa: E731
    return [(draw(ctx_len), [draw(int(rng.integers(lo, hi + 1))) for _ in range(n_choices)])
            for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=",".join(SHAPES))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfg = mconfig.ModelConfig(model_type="llama", vocab_size=8192, hidden_size=256, num_layers=4,
                              num_heads=8, num_kv_heads=4, head_dim=32, intermediate_size=768,
                              max_position_embeddings=1024, pad_token_id=0)
    model = multiple_choice.Model(cfg, transformer.init_params(cfg, jax.random.key(0)), None)
    load0 = os.getloadavg()[0]
    rows = {}
    for name in args.only.split(","):
        reqs = requests(SHAPES[name], args.docs, cfg.vocab_size, seed=len(rows))
        pairs = [(ctx, cont) for ctx, conts in reqs for cont in conts]
        paths = {
            "shared context": lambda: multiple_choice.score_shared(
                model, reqs, batch_size=args.batch, pad_id=0),
            "one row per choice": lambda: multiple_choice.score_pairs(
                model, pairs, batch_size=args.batch * SHAPES[name][1], pad_id=0),
        }
        results = {k: f() for k, f in paths.items()}  # warm-up: compiles every bucket
        got = np.concatenate(results["shared context"])
        diff = float(np.max(np.abs(got - results["one row per choice"])))
        times = {k: [] for k in paths}
        for _ in range(args.reps):
            for k, f in paths.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[name] = {"docs_per_s": {k: args.docs / v for k, v in med.items()},
                      "speedup": med["one row per choice"] / med["shared context"],
                      "max_abs_diff": diff}
        print(f"{name:>14}: shared {args.docs / med['shared context']:8.1f} docs/s, per choice "
              f"{args.docs / med['one row per choice']:8.1f} docs/s, x{rows[name]['speedup']:.2f}, "
              f"max |d loglik| {diff:.1e}", flush=True)
    meta = {"load_before": load0, "load_after": os.getloadavg()[0], "cpus": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(), "docs": args.docs,
            "batch_docs": args.batch, "reps": args.reps}
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
