#!/usr/bin/env python
"""The HF transformers (PyTorch) baseline of benchmarks/throughput.py, run as its child process.

    python benchmarks/hf_baseline.py SPEC.json OUT.json

SPEC names the device, dtype, the two models' HF config.json dicts and the jobs (`generate` at
the rollout shapes, forward `score` at the scoring shapes). Only the standard library, torch and
transformers are imported: the process exits before JAX touches the GPU, so the two frameworks'
allocators never share it.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _hf_build(hf_cfg: dict[str, Any], dtype: Any, device: str) -> Any:
    import torch
    import transformers

    hf_cfg = dict(hf_cfg)
    hf_cfg.pop("torch_dtype", None)
    hf_cfg.pop("architectures", None)
    config = transformers.AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)
    with torch.device(device):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    model = model.to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # defined values whatever the init path did (norms 1, weights N(0, .02))
        for p in model.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model


def _hf_generate(model: Any, job: dict[str, Any], device: str, sync: Callable) -> dict[str, Any]:
    import torch

    B, P, G, V = job["B"], job["P"], job["G"], model.config.vocab_size
    ids = torch.randint(0, V, (B, P), device=device)
    mask = torch.ones_like(ids)
    eos = model.config.eos_token_id

    def run(new: int) -> Any:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                                 min_new_tokens=new, pad_token_id=0, eos_token_id=eos)
        sync()
        return out

    t0 = time.perf_counter()
    run(min(G, 4))  # kernels, cuBLAS handles, allocator
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(job["reps"]):
        t0 = time.perf_counter()
        out = run(G)
        times.append(time.perf_counter() - t0)
    new_tokens = int(out.shape[1]) - P
    t = statistics.median(times)
    return {"B": B, "P": P, "G": G, "new_tokens_per_row": new_tokens, "warmup_s": warmup,
            "times_s": times, "median_s": t, "new_tokens_per_s": B * new_tokens / t,
            "cache_implementation": getattr(model.generation_config, "cache_implementation", None)
            or "dynamic (default)"}


def _hf_score(model: Any, job: dict[str, Any], device: str, sync: Callable) -> dict[str, Any]:
    import torch

    B, P, G, V = job["B"], job["P"], job["G"], model.config.vocab_size
    ids = torch.randint(0, V, (B, P + G), device=device)
    mask = torch.ones_like(ids)
    target = ids[:, P:]
    keep = {"used": True}

    def run() -> Any:
        with torch.inference_mode():
            try:  # unembed only the positions that predict the completion (as ours does)
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=G + 1).logits
            except TypeError:
                keep["used"] = False
                logits = model(input_ids=ids, attention_mask=mask).logits[:, -(G + 1):]
            logits = logits[:, :-1]  # position P-1+t predicts completion token t
            out = [torch.log_softmax(logits[i:i + 4].float(), dim=-1)
                   .gather(-1, target[i:i + 4, :, None])[..., 0] for i in range(0, B, 4)]
            lp = torch.cat(out)
        sync()
        return lp

    t0 = time.perf_counter()
    lp = run()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(job["reps"]):
        t0 = time.perf_counter()
        lp = run()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"B": B, "P": P, "G": G, "warmup_s": warmup, "times_s": times, "median_s": t,
            "tokens_per_s": B * (P + G) / t, "logits_to_keep": keep["used"],
            "finite": bool(torch.isfinite(lp).all())}


def hf_child_main(spec_path: str, out_path: str) -> int:
    import torch
    import transformers

    spec = json.loads(Path(spec_path).read_text())
    device = spec["device"]
    res: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "device": device}
    if device == "cuda" and not torch.cuda.is_available():
        res["error"] = "torch has no CUDA device (CPU-only torch build?): HF baseline skipped"
        Path(out_path).write_text(json.dumps(res))
        return 3
    if device == "cuda":
        res["device_name"] = torch.cuda.get_device_name()
        sync = torch.cuda.synchronize
    else:
        res["device_name"] = platform.processor() or platform.machine()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        sync = lambda: None  # noqa: E731
    torch.manual_seed(0)
    dtype = getattr(torch, spec["dtype"])
    for role in ("student", "teacher"):
        jobs = [j for j in spec["jobs"] if j["model"] == role]
        if not jobs:
            continue
        t0 = time.perf_counter()
        try:
            model = _hf_build(spec[f"{role}_hf"], dtype, device)
        except Exception as e:  # noqa: BLE001 - recorded, the other model still runs
            for j in jobs:
                res[j["name"]] = {"error": f"building the HF {role}: {type(e).__name__}: {e}"}
            continue
        res[f"{role}_model"] = {
            "init_s": time.perf_counter() - t0,
            "params": int(sum(p.numel() for p in model.parameters())),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "experts_implementation": getattr(model.config, "_experts_implementation", None)}
        for j in jobs:
            print(f"[hf] {j['name']} ...", file=sys.stderr, flush=True)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                fn = _hf_generate if j["kind"] == "generate" else _hf_score
                res[j["name"]] = fn(model, j, device, sync)
            except Exception as e:  # noqa: BLE001
                res[j["name"]] = {"error": f"{type(e).__name__}: {e}"}
            if device == "cuda":
                res[j["name"]]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    Path(out_path).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(hf_child_main(sys.argv[1], sys.argv[2]))
