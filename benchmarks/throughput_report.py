"""The derived numbers of benchmarks/throughput.py: the decode roofline, the 100-step run
estimate, the ratios against HF with their targets, and the printed table. Pure functions of the
results dict (no timing here).
"""

from __future__ import annotations

import math
from typing import Any

from cliffdistill.engine import methods
from cliffdistill.run import memplan
from cliffdistill.models.config import ModelConfig

# The study's teacher_seeded run (DESIGN §1, configs/base.py defaults) that --estimate prices.
STUDY = dict(steps=100, prompts_per_step=64, samples_per_prompt=1, prompt_len=128,
             max_new_tokens=256, seed_bucket=32, lora_rank=32, eval_every=25, n_eval=500, eval_batch=64, eval_max_new_tokens=1024)


def kv_bytes(cfg: ModelConfig, B: int, ctx: float) -> float:
    """bf16 KV cache of B rows x ctx positions on one device (the memory planner's formula)."""
    return memplan.kv_cache_bytes(cfg, B, ctx, memplan.MeshShape(), 2)


def roofline(student: ModelConfig, weight_bytes: int, bw: float | None,
             roll: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, r in roll.items():
        if not isinstance(r, dict) or "error" in r or not bw:
            continue
        B, P, G = r["B"], r["P"], r["G"]
        ctx_mean = P + (G + 1) / 2  # keys read by the t-th new token: P + t + 1
        kv = kv_bytes(student, B, ctx_mean)
        floor_s = (weight_bytes + kv) / bw
        out[name] = {
            "weights_bytes": weight_bytes, "kv_bytes_mean_ctx": kv, "mean_ctx": ctx_mean,
            "kv_bytes_full_cache": kv_bytes(student, B, P + G),  # what our static cache reads
            "floor_ms_per_step": 1e3 * floor_s, "floor_new_tokens_per_s": B / floor_s,
            "ours_ms_per_step": r["decode_ms_per_step"],
            "pct_of_floor": 100.0 * floor_s * 1e3 / r["decode_ms_per_step"]}
    return out


def estimate(res: dict[str, Any], student: ModelConfig) -> dict[str, Any]:
    """Σ over 100 steps of (rollout + teacher seeding + teacher scoring + update) + evals."""
    roll = res.get("rollout", {})
    good = lambda d: isinstance(d, dict) and "error" not in d  # noqa: E731
    r = roll.get("b64_lora") if good(roll.get("b64_lora")) else roll.get("b64")
    td = res.get("teacher_decode")
    sc = res.get("score", {}).get("teacher_study") or res.get("score", {}).get("teacher")
    up = res.get("update")
    missing = [n for n, v in (("rollout b64", r), ("teacher decode", td), ("teacher score", sc),
                              ("update", up)) if not isinstance(v, dict) or "error" in v]
    if missing:
        return {"error": f"needs the measured {missing} (run rollout, score and update phases)"}
    # teacher scoring: measured at the study shape when --estimate ran it, else scaled by tokens
    study_tokens = STUDY["prompts_per_step"] * (STUDY["prompt_len"] + STUDY["max_new_tokens"])
    smoke = res["meta"]["smoke"]
    score_s = sc["median_s"]
    score_note = "measured at the study shape"
    if "teacher_study" not in res["score"] and not smoke:
        score_s *= study_tokens / (sc["B"] * (sc["P"] + sc["G"]))
        score_note = "scaled by token count from B=32x512"
    schedule = methods.get("teacher_seeded")  # the default schedule of configs/base.py
    steps = []
    for step in range(STUDY["steps"]):
        n = schedule(step).seed_tokens
        seed_s = td["prefill_median_s"] + n * td["decode_ms_per_step"] / 1e3 if n else 0.0
        steps.append({"seed_tokens": n, "rollout": r["median_s"], "seed": seed_s,
                      "score": score_s, "update": up["median_s"]})
    train_s = sum(s["rollout"] + s["seed"] + s["score"] + s["update"] for s in steps)
    # evals: greedy decode of eval_max_new_tokens at the eval batch; the per-step time is the
    # measured B=64 decode step scaled by bytes read (weights + KV at the mean context).
    n_evals = len({0, STUDY["steps"]} | set(range(STUDY["eval_every"], STUDY["steps"] + 1,
                                                  STUDY["eval_every"])))
    batches = math.ceil(STUDY["n_eval"] / STUDY["eval_batch"])
    W = res["meta"]["student_weight_bytes"]
    Bq, Pq, Gq = r["B"], r["P"], r["G"]
    Ge = STUDY["eval_max_new_tokens"] if not smoke else 4 * Gq
    step_s = r["decode_ms_per_step"] / 1e3 * (W + kv_bytes(student, Bq, Pq + Ge / 2)) / (
        W + kv_bytes(student, Bq, Pq + Gq / 2))
    eval_s = n_evals * batches * (r["prefill_median_s"] + Ge * step_s)
    total = train_s + eval_s
    per_phase = {k: sum(s[k] for s in steps) for k in ("rollout", "seed", "score", "update")}
    return {"settings": {**STUDY, **({"smoke_shapes": True, "eval_max_new_tokens": Ge,
                                      "prompts_per_step": Bq, "prompt_len": Pq,
                                      "max_new_tokens": Gq, "eval_batch": Bq} if smoke else {})},
            "rollout_source": "b64_lora" if good(roll.get("b64_lora")) else "b64",
            "score_source": score_note, "per_phase_s": per_phase, "train_s": train_s,
            "evals": n_evals, "eval_batches": batches, "eval_s": eval_s,
            "eval_note": "full-length greedy decode (no early EOS); decode step scaled by bytes",
            "total_s": total, "total_min": total / 60,
            "excludes": "model loading, compilation, checkpoints, host-side metrics"}


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    hf, out = res.get("hf", {}), {}

    def ok(d):
        return isinstance(d, dict) and bool(d) and "error" not in d and "skipped" not in d

    for name in ("b64", "b256"):
        ours, base = res.get("rollout", {}).get(name), hf.get(f"generate_{name}")
        if ok(ours) and ok(base):
            out[f"rollout_{name}_vs_hf"] = ours["new_tokens_per_s"] / base["new_tokens_per_s"]
    for role in ("student", "teacher"):
        ours, base = res.get("score", {}).get(role), hf.get(f"score_{role}")
        if ok(ours) and ok(base):
            out[f"score_{role}_vs_hf"] = ours["tokens_per_s"] / base["tokens_per_s"]
    rf = res.get("roofline", {}).get("b64")
    if rf:
        out["rollout_b64_pct_of_floor"] = rf["pct_of_floor"]
    up = res.get("update")
    if ok(up) and up.get("mfu") is not None:
        out["update_mfu_pct"] = 100 * up["mfu"]
    est = res.get("estimate")
    if ok(est):
        out["estimate_min"] = est["total_min"]
    return out


TARGETS = {  # key -> (threshold, direction, label)
    "rollout_b64_vs_hf": (15.0, ">=", ">= 15x HF"),
    "rollout_b64_pct_of_floor": (50.0, ">=", ">= 50% floor"),
    "score_student_vs_hf": (1.2, ">=", ">= 1.2x HF"),
    "score_teacher_vs_hf": (2.0, ">=", ">= 2x HF"),
    "update_mfu_pct": (35.0, ">=", ">= 35% MFU"),
    "estimate_min": (10.0, "<=", "<= 10 min"),
}


# ============================================================================ table


def _f(x: Any, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def table(res: dict[str, Any]) -> str:
    m, hf, rt = res["meta"], res.get("hf", {}), res.get("ratios", {})
    smoke = m["smoke"]
    lines = [
        "=" * 100,
        (f"cliffdistill throughput  |  {m['device_kind']} ({m['platform']})  |  jax {m['jax']}"
         f"  |  torch {hf.get('torch', '-')} / transformers {hf.get('transformers', '-')}"
         f"  |  {m['date']}"),
        f"student {m['student']}  teacher {m['teacher']}  |  bf16 random weights, EOS ignored"
        + ("  |  SMOKE: tiny models on CPU, numbers NOT comparable to GPU" if smoke else ""),
        "-" * 100,
        f"{'measurement':<44}{'ours':>14}{'HF':>12}{'ratio':>10}  {'target':<14}{'met':>4}",
    ]

    def met(key):
        if smoke or key not in rt:
            return "-"
        thr, d, _ = TARGETS[key]
        return "yes" if (rt[key] >= thr if d == ">=" else rt[key] <= thr) else "NO"

    def row(label, ours, base, key=None, fmt=",.0f"):
        ratio = rt.get(key) if key else None
        tgt = TARGETS[key][2] if key in TARGETS else ""
        lines.append(f"{label:<44}{_f(ours, fmt):>14}{_f(base, fmt):>12}"
                     f"{(_f(ratio, '.2f') + 'x') if ratio is not None else '-':>10}  "
                     f"{tgt:<14}{met(key) if key else '-':>4}")

    def compare(label, ours_rec, hf_rec, field, key):
        """One ours-vs-HF row (+ a line per side that recorded an error)."""
        for who, d in (("ours", ours_rec), ("HF", hf_rec)):
            if isinstance(d, dict) and "error" in d:
                lines.append(f"{label} {who}: ERROR {d['error']}"[:100])
        row(label, ours_rec.get(field) if isinstance(ours_rec, dict) else None,
            hf_rec.get(field) if isinstance(hf_rec, dict) else None, key)

    bw = res.get("bandwidth", {}).get("copy_bandwidth_bytes_per_s")
    lines.append(f"{'copy bandwidth (GB/s, read+write)':<44}{_f(bw and bw / 1e9, ',.1f'):>14}")
    roll = res.get("rollout", {})
    shape_of = {n: (B, P, G) for n, B, P, G in m["shapes"]["rollout"]}
    shape_of["b64_lora"] = shape_of.get("b64")
    for name in ("b64", "b256", "b64_lora"):
        r, h = roll.get(name), hf.get(f"generate_{name}")
        if not isinstance(r, dict) and not isinstance(h, dict):
            continue
        B, P, G = shape_of[name]
        lora = "+LoRA " if name == "b64_lora" else ""
        label = f"rollout {lora}B={B} P={P} G={G} new tok/s"
        compare(label, r, h, "new_tokens_per_s", f"rollout_{name}_vs_hf" if name != "b64_lora" else None)
        rf = res.get("roofline", {}).get(name)
        if rf:
            lines.append(
                f"{'  decode ms/step  (floor ms/step)':<44}{_f(rf['ours_ms_per_step'], ',.3f'):>14}"
                f"{'(' + _f(rf['floor_ms_per_step'], ',.3f') + ')':>12}"
                f"{_f(rf['pct_of_floor'], '.1f') + '%':>10}  "
                f"{TARGETS['rollout_b64_pct_of_floor'][2] if name == 'b64' else '':<14}"
                f"{met('rollout_b64_pct_of_floor') if name == 'b64' else '-':>4}")
    for role in ("student", "teacher", "teacher_study"):
        s, h = res.get("score", {}).get(role), hf.get(f"score_{role}")
        if not isinstance(s, dict) and not isinstance(h, dict):
            continue
        B, P, G = m["shapes"]["update" if role == "teacher_study" else "score"]
        who = m["student"] if role == "student" else m["teacher"]
        label = f"score {who} B={B}x{P + G} tok/s" + (" (study)" if role == "teacher_study" else "")
        compare(label, s, h, "tokens_per_s", f"score_{role}_vs_hf" if role != "teacher_study" else None)
    td = res.get("teacher_decode")
    if isinstance(td, dict) and "error" not in td:
        label = f"teacher decode B={td['B']} (seeding) ms/step"
        lines.append(f"{label:<44}"
                     f"{_f(td['decode_ms_per_step'], ',.3f'):>14}")
    up = res.get("update")
    if isinstance(up, dict):
        if "error" in up:
            lines.append(f"update: ERROR {up['error'][:80]}")
        else:
            row(f"LoRA r{up['lora_rank']} update B={up['B']}x{up['P'] + up['G']} tok/s",
                up["tokens_per_s"], None)
            lines.append(f"{'  MFU % (model FLOPs / peak)':<44}"
                         f"{_f(up['mfu'] and 100 * up['mfu'], '.1f'):>14}{'':>12}{'':>10}  "
                         f"{TARGETS['update_mfu_pct'][2]:<14}{met('update_mfu_pct'):>4}")
    est = res.get("estimate")
    if isinstance(est, dict):
        if "error" in est or "skipped" in est:
            lines.append(f"estimate: {est.get('error') or est['skipped']}"[:100])
        else:
            lines.append(f"{'estimate: 100-step teacher_seeded run (min)':<44}"
                         f"{_f(est['total_min'], ',.2f'):>14}{'':>12}{'':>10}  "
                         f"{TARGETS['estimate_min'][2]:<14}{met('estimate_min'):>4}")
            pp = est["per_phase_s"]
            lines.append(f"  = rollout {pp['rollout']:.1f}s + seeding {pp['seed']:.1f}s + score "
                         f"{pp['score']:.1f}s + update {pp['update']:.1f}s + evals "
                         f"{est['eval_s']:.1f}s")
    warm = {k: v for k, v in res.get("warmup_s", {}).items()}
    if warm:
        lines.append("warm-up (compile + first run, s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in warm.items()))
    if "error" in hf:
        lines.append(f"HF baseline: {hf['error'][:90]}")
    for k, v in res.get("errors", {}).items():
        lines.append(f"ERROR in {k}: {v[:90]}")
    lines.append("=" * 100)
    return "\n".join(lines)
