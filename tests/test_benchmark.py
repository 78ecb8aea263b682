"""benchmarks/throughput.py: the CPU smoke run end to end, and the formulas it reports with.

No timing is asserted: only that every section exists and holds positive numbers.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import throughput as bench
from benchmarks import throughput_phases as phases
from benchmarks import throughput_report as report
from cliffdistill.models import transformer
from cliffdistill.models.config import preset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "throughput.py"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_smoke_run_writes_every_section_and_prints_the_table(tmp_path):
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "cliffdistill throughput" in proc.stdout and "SMOKE" in proc.stdout
    assert "measurement" in proc.stdout and "estimate: 100-step teacher_seeded" in proc.stdout
    r = json.loads(out.read_text())
    assert "errors" not in r, r.get("errors")
    assert r["partial"] is False

    meta = r["meta"]
    assert meta["smoke"] is True and meta["platform"] == "cpu"
    assert _positive(meta["student_weight_bytes"]) and _positive(meta["teacher_weight_bytes"])
    assert _positive(r["bandwidth"]["copy_bandwidth_bytes_per_s"])

    for name in ("b64", "b256", "b64_lora"):
        roll = r["rollout"][name]
        assert roll["ran_full_length"] and roll["min_length"] == roll["G"], name
        for k in ("new_tokens_per_s", "decode_ms_per_step", "median_s", "prefill_median_s",
                  "warmup_s"):
            assert _positive(roll[k]), (name, k, roll[k])
    assert r["rollout"]["b64_lora"]["lora"] is True and r["rollout"]["b64"]["lora"] is False
    for name in ("b64", "b256"):
        rf = r["roofline"][name]
        for k in ("floor_ms_per_step", "floor_new_tokens_per_s", "ours_ms_per_step",
                  "pct_of_floor", "weights_bytes", "kv_bytes_mean_ctx"):
            assert _positive(rf[k]), (name, k)

    for role in ("student", "teacher", "teacher_study"):
        s = r["score"][role]
        assert s["finite"] and _positive(s["tokens_per_s"]), role
    assert _positive(r["teacher_decode"]["decode_ms_per_step"])

    up = r["update"]
    assert up["loss_finite"]
    assert up["lora_rank"] == 32 and len(up["lora_targets"]) == 7
    for k in ("tokens_per_s", "trained_tokens_per_s", "model_flops", "achieved_flops_per_s"):
        assert _positive(up[k]), k
    assert up["mfu"] is None and up["peak_flops_per_s"] is None  # CPU: no peak, no MFU

    hf = r["hf"]
    assert hf["device"] == "cpu" and hf["torch"] and hf["transformers"]
    for name in ("generate_b64", "generate_b256"):
        assert hf[name]["new_tokens_per_row"] == hf[name]["G"], name
        assert _positive(hf[name]["new_tokens_per_s"]), name
    for name in ("score_student", "score_teacher"):
        assert hf[name]["finite"] and _positive(hf[name]["tokens_per_s"]), name

    for k in ("rollout_b64_vs_hf", "rollout_b256_vs_hf", "score_student_vs_hf",
              "score_teacher_vs_hf", "rollout_b64_pct_of_floor", "estimate_min"):
        assert _positive(r["ratios"][k]), k

    est = r["estimate"]
    assert est["settings"]["steps"] == 100 and est["evals"] == 5
    assert _positive(est["total_s"]) and _positive(est["eval_s"])
    assert all(_positive(v) for v in est["per_phase_s"].values())
    assert est["total_s"] == pytest.approx(est["train_s"] + est["eval_s"])
    assert set(r["warmup_s"]) >= {"rollout.b64", "rollout.b256", "score.student", "update",
                                  "score.teacher", "score.teacher_grouped", "teacher_decode"}


def test_formulas_agree_with_the_trainer():
    from cliffdistill.models import count_params, param_shapes

    # active params = every matmul weight (norms and the embedding lookup excluded)
    llama, qwen = preset("llama31_8b"), preset("qwen3_4b")  # untied / tied embeddings
    L, D = llama.num_layers, llama.hidden_size
    assert bench.active_params(llama) == (count_params(param_shapes(llama))
                                          - llama.vocab_size * D - (2 * L + 1) * D)
    L, D, hd = qwen.num_layers, qwen.hidden_size, qwen.head_dim
    assert bench.active_params(qwen) == count_params(param_shapes(qwen)) - L * (2 * D + 2 * hd) - D


def test_peak_flops_lookup():
    assert bench.peak_flops("NVIDIA H200", None) == 989e12
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert bench.peak_flops("cpu", None) is None
    assert bench.peak_flops("cpu", 1e12) == 1e12


def test_decode_floor_matches_the_design_figure():
    """DESIGN §2: Qwen3-4B bf16 at B=64 on ~4.3 TB/s has a floor of ~2.7 ms/step (~24k tok/s)."""
    cfg = preset("qwen3_4b")
    W = 2 * transformer.count_params(transformer.param_shapes(cfg))
    roll = {"b64": {"B": 64, "P": 128, "G": 256, "decode_ms_per_step": 5.0}}
    rf = report.roofline(cfg, W, 4.3e12, roll)["b64"]
    assert 2.0 < rf["floor_ms_per_step"] < 3.0
    assert 20e3 < rf["floor_new_tokens_per_s"] < 32e3
    assert rf["pct_of_floor"] == pytest.approx(100 * rf["floor_ms_per_step"] / 5.0)
    assert rf["kv_bytes_full_cache"] > rf["kv_bytes_mean_ctx"]


def test_update_flops_are_at_least_the_4n_rule():
    cfg = preset("qwen3_4b")
    B, P, G = 64, 128, 256
    fl = phases.update_flops(cfg, B, P, G, rank=32)
    n_body = bench.active_params(cfg) - cfg.hidden_size * cfg.vocab_size
    assert fl["model_flops"] > 4 * n_body * B * (P + G)
    assert fl["lora_fwd"] < 0.1 * fl["linear_fwd"]  # rank 32 adapters are a small extra
    assert fl["remat_recompute_flops"] < fl["model_flops"]


def test_init_on_device_has_the_param_tree_and_scale():
    cfg = phases.SMOKE_TEACHER
    params = phases.init_params_on_device(cfg, seed=0, dtype=jnp.float32)
    ref = transformer.param_shapes(cfg, jnp.float32)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref)
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
        assert got.shape == want.shape and got.dtype == want.dtype
    assert np.all(np.asarray(params["layers"]["attn_norm"]) == 1.0)
    gate = np.asarray(params["layers"]["gate_proj"])  # [L, E, D, F], generated layer by layer
    assert abs(gate.std() - 0.02) < 0.002
    assert not np.allclose(gate[0], gate[1])  # layers differ


def test_benchmark_times_the_trainers_update():
    """One benchmark update step reports the loss of `update.loss_terms` on the same inputs."""
    from cliffdistill.engine import update
    from cliffdistill.models import lora as lora_lib

    cfg = phases.SMOKE_STUDENT
    params = transformer.init_params(cfg, jax.random.key(0), jnp.float32)
    lora = lora_lib.init_lora(cfg, phases.LORA, jax.random.key(1), transformer.param_shapes(cfg))
    layers = jax.tree_util.tree_map(lambda x: x + 0.01, lora.layers)  # adapters matter
    batch, plan = phases.update_batch(cfg, 2, 8, 8)
    spec = update.UpdateSpec(
        student=cfg, teacher=phases.SMOKE_TEACHER, scale=phases.LORA.scale, has_on=True,
        has_off=False, has_anchor=False, on_loss="sampled_rkl", off_loss="nll", shift_off=True,
        vocab_chunk=phases.VOCAB_CHUNK, remat=True, moe_impl="ragged",
        optim=update.OptimConfig(), num_steps=0)
    want, _ = update.loss_terms(spec, layers, params, None, batch, plan)
    fn, opt = phases.make_update(cfg, phases.SMOKE_TEACHER, phases.LORA.scale)
    new, _, aux = fn(layers, jax.jit(opt.init)(layers), params, batch, plan)  # donates layers
    assert float(aux["loss/total"]) == pytest.approx(float(want), rel=1e-5)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(new),
                                                     jax.tree_util.tree_leaves(lora.layers)))
