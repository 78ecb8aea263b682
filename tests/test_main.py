"""The embedded default end to end at micro scale: prepare -> sweep -> report -> verdicts."""

import json

import pytest

from cliffdistill import main, report, toy


def micro_prepare_config():
    c = toy.default_prepare_config()
    c.n_eval, c.n_train_prompts, c.context_k, c.eval_max_new_tokens = 16, 32, 2, 16
    c.teacher.update(layers=2, hidden=32, heads=4, kv_heads=2, head_dim=8, mlp=64, steps=30,
                     batch=16, episode_every=3)
    c.student.update(snapshots=(10, 20), max_accuracy=1.0)
    return c


MICRO_OVERRIDES = {
    "data.n_train": 32, "data.n_fewshot": 16, "data.n_eval": 16, "data.context_k": 2,
    "rollout.batch_size": 8, "rollout.max_new_tokens": 8, "off_policy.max_new_tokens": 8,
    "eval.max_new_tokens": 8, "eval.batch_size": 16, "schedule.seed_max_tokens": 2,
}


@pytest.mark.slow
def test_main_pipeline_micro(tmp_path):
    results, sweep_result = main.run_main(
        tmp_path / "run", tmp_path / "cache", quick=True, prepare_cfg=micro_prepare_config(),
        methods=("on_policy_gkd", "hybrid"), steps=4, overrides=MICRO_OVERRIDES)
    assert not sweep_result.failed
    assert len(sweep_result.ran) == 2 * 4  # 2 methods x (2 setups x {correct, defects})
    text = results.read_text()
    for needle in ("Toy models", "The study's claims on this testbed", "Setup `size`",
                   "Setup `context`", "on_policy_gkd", "hybrid"):
        assert needle in text, needle
    claims = json.loads((tmp_path / "run" / "claims.json").read_text())
    assert {c["setup"] for c in claims} == {"size", "context"}
    assert all(c["verdict"] in report.VERDICTS for c in claims)
    for setup in ("size", "context"):
        assert (tmp_path / "run" / "plots" / f"accuracy_{setup}.png").stat().st_size > 1000
        assert json.loads((tmp_path / "run" / "baselines" / f"{setup}.json").read_text())["student"]
    prepared = json.loads(next((tmp_path / "cache").glob("toy-*/prepared.json")).read_text())
    assert prepared["student"]["snapshot_step"] in (10, 20)
    # a second call reuses the testbed and skips every finished run
    _, again = main.run_main(
        tmp_path / "run", tmp_path / "cache", quick=True, prepare_cfg=micro_prepare_config(),
        methods=("on_policy_gkd", "hybrid"), steps=4, overrides=MICRO_OVERRIDES)
    assert again.ran == [] and len(again.skipped) == 8
