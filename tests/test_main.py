"""The embedded default end to end at micro scale: prepare -> sweep -> report -> verdicts."""

import json

import pytest

from cliffdistill import main, report, toy


@pytest.mark.slow
def test_main_pipeline_micro(tmp_path):
    results, sweep_result = main.run_main(
        tmp_path / "run", tmp_path / "cache", quick=True, prepare_cfg=main.smoke_prepare_config(),
        methods=main.SMOKE_METHODS, steps=main.SMOKE_STEPS, overrides=main.SMOKE_OVERRIDES)
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
        tmp_path / "run", tmp_path / "cache", quick=True, prepare_cfg=main.smoke_prepare_config(),
        methods=main.SMOKE_METHODS, steps=main.SMOKE_STEPS, overrides=main.SMOKE_OVERRIDES)
    assert again.ran == [] and len(again.skipped) == 8
