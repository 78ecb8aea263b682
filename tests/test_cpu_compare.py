"""benchmarks/cpu_compare.py: the smoke mode end to end (tiny models). No timing is asserted:
only that every section exists and holds positive numbers, and that the table prints."""

import importlib.util
import json
import math
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_compare.py"


def _load():
    spec = importlib.util.spec_from_file_location("cliffdistill_bench_cpu_compare", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_cpu_compare_smoke(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "r.json"
    assert bench.main(["--smoke", "--reps", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    comparisons = [res["rollout"], res["score"]] + [res["update"][r] for r in ("none", "dots", "full")] \
        + [res["moe_score"][i] for i in ("ragged", "grouped", "dense")]
    for c in comparisons:
        for side in ("ours", "hf"):
            assert len(c[side]["times_s"]) == 2 and all(_positive(t) for t in c[side]["times_s"])
            assert c[side]["min_s"] <= c[side]["median_s"] <= c[side]["max_s"]
        assert c["ratio"]["min"] <= c["ratio"]["median"] <= c["ratio"]["max"]
        assert len(c["load"]) == 2
    assert _positive(res["rollout"]["ours"]["new_tokens_per_s"])
    assert _positive(res["score"]["hf"]["tokens_per_s"])
    for k in ("sampler_ms", "live_prefix_ms", "whole_cache_ms"):
        assert len(res["decode"][k]) == 2
    assert res["decode"]["capacities"][1] == 4 * res["decode"]["capacities"][0]
    for key in ("state_before", "state_after"):
        assert res[key]["torch_threads"] >= 1 and len(res[key]["load_average"]) == 3
    assert isinstance(res["busy"], bool)
    table = capsys.readouterr().out
    assert "ours / HF" in table and "live-prefix windows" in table


def test_interleaved_alternates_sides_and_times_each_call():
    bench = _load()
    calls = []
    t = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3,
                          {"b": lambda: calls.append("warm b")})
    assert calls == ["a", "warm b"] + ["a", "b"] * 3
    assert len(t["a"]["times_s"]) == len(t["b"]["times_s"]) == 3


def test_pair_ratio_is_per_repetition():
    bench = _load()
    r = bench.pair_ratio({"times_s": [1.0, 2.0, 4.0]}, {"times_s": [2.0, 2.0, 2.0]})
    assert (r["min"], r["median"], r["max"]) == (0.5, 1.0, 2.0)


def test_busy_flags_a_loaded_machine():
    bench = _load()
    assert bench.busy(1.0, 2) and not bench.busy(0.3, 2) and bench.busy(3.0, 8)


def test_mid_model_has_real_proportions():
    bench = _load()
    from cliffdistill.models import transformer

    cfg = bench.dense_config(smoke=False)
    n = transformer.count_params(transformer.param_shapes(cfg))
    assert 10e6 < n < 100e6  # tens of millions
    assert cfg.num_heads // cfg.num_kv_heads == 4 and cfg.head_dim == 64  # GQA, Qwen3-like heads


def test_profile_cpu_smoke_finds_matmuls(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "cliffdistill_bench_profile_cpu", SCRIPT.parent / "profile_cpu.py")
    prof = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = prof
    spec.loader.exec_module(prof)
    out = tmp_path / "p.json"
    assert prof.main(["--smoke", "--steps", "1", "--out", str(out)]) == 0
    ops = json.loads(out.read_text())["ops_ms_per_step"]
    assert set(ops) == {"lora_update_remat_none", "lora_update_remat_full", "moe_score_grouped",
                        "moe_score_dense"}
    for kinds in ops.values():  # every program multiplies matrices, and every time is positive
        assert kinds and all(_positive(v) for v in kinds.values())
        assert not any(k.startswith(("ThunkExecutor", "$")) for k in kinds)
