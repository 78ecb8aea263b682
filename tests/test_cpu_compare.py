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
    assert bench.main(["--smoke", "--reps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert _positive(res["rollout"]["ours"]["new_tokens_per_s"])
    assert _positive(res["rollout"]["hf"]["new_tokens_per_s"])
    assert _positive(res["score"]["ours"]["tokens_per_s"]) and _positive(res["score"]["hf"]["tokens_per_s"])
    assert set(res["update"]["ours"]) == {"none", "dots", "full"}
    assert all(_positive(v["tokens_per_s"]) for v in res["update"]["ours"].values())
    assert _positive(res["update"]["hf"]["tokens_per_s"])
    assert set(res["moe_score"]["ours"]) == {"ragged", "grouped", "dense"}
    for k in ("sampler_ms", "live_prefix_ms", "whole_cache_ms"):
        assert len(res["decode"][k]) == 2
    assert res["decode"]["capacities"][1] == 4 * res["decode"]["capacities"][0]
    table = capsys.readouterr().out
    assert "ours / HF" in table and "live-prefix windows" in table


def test_mid_model_has_real_proportions():
    bench = _load()
    from cliffdistill.models import transformer

    cfg = bench.dense_config(smoke=False)
    n = transformer.count_params(transformer.param_shapes(cfg))
    assert 10e6 < n < 100e6  # tens of millions
    assert cfg.num_heads // cfg.num_kv_heads == 4 and cfg.head_dim == 64  # GQA, Qwen3-like heads
