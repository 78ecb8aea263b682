"""The embedded default end to end at micro scale: prepare -> sweep -> report -> verdicts."""

import json

import pytest

from cliffdistill import main, report, testbed, toy

# testbed.json keys the issue (#14) requires; dotted paths into the nested JSON
TESTBED_KEYS = (
    "size.teacher.params", "size.student.params", "size.teacher.accuracy", "size.student.accuracy",
    "size.oracle_gain", "size.testable", "context.values", "context.teacher.accuracy",
    "context.student.accuracy", "context.format_only.accuracy", "context.testable", "n_eval",
    "eval_ci_halfwidth", "eval_pretrain_overlap", "mean_answer_tokens", "seed_fraction")


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_sweep_config_cycles_context_values_and_scales_the_seed_prefix(tmp_path):
    cfg = main.sweep_config(tmp_path, quick=False, context_values=(3, 5, 8))
    rows = list(zip(cfg.zip.setup, cfg.zip.seed, cfg.zip.data.path))
    context = [(seed, path) for setup, seed, path in rows if setup == "context"]
    assert [p.rsplit("_v", 1)[1] for _, p in context] == ["3", "5", "8", "3"]  # seeds 0,1,2 + defects
    assert cfg.base_overrides.schedule.seed_max_tokens == 10  # 20/256 of the 128-token budget
    assert "off_policy" in cfg.product.method and len(cfg.product.method) == 9
    small = main.sweep_config(tmp_path, quick=True, overrides={"rollout.max_new_tokens": 64})
    assert small.base_overrides.schedule.seed_max_tokens == 5


@pytest.mark.slow
def test_main_pipeline_micro(tmp_path):
    run = tmp_path / "run"
    results, sweep_result = main.run_main(
        run, tmp_path / "cache", quick=True, prepare_cfg=main.smoke_prepare_config(),
        methods=main.SMOKE_METHODS, steps=main.SMOKE_STEPS, overrides=main.SMOKE_OVERRIDES)
    assert not sweep_result.failed
    assert len(sweep_result.ran) == 2 * 4  # 2 methods x (2 setups x {correct, defects})
    text = results.read_text()
    for needle in ("## Testbed", "NOT TESTABLE", "The study's claims on this testbed", "Retention",
                   "Setup `size`", "Setup `context`", "on_policy_gkd", "off_policy",
                   "format-only"):
        assert needle in text, needle
    tb = json.loads((run / testbed.TESTBED_JSON).read_text())
    for key in TESTBED_KEYS:
        _get(tb, key)
    for key in ("size.teacher.accuracy", "size.student.accuracy", "context.teacher.accuracy",
                "context.format_only.accuracy", "eval_pretrain_overlap"):
        assert 0.0 <= _get(tb, key) <= 1.0, key
    assert tb["size"]["student"]["params"] < tb["size"]["teacher"]["params"]
    assert tb["eval_pretrain_overlap"] == 0.0 and tb["seed_fraction"] == 20 / 256
    # a 16-question eval fails the CI check: both setups are not testable, and get no verdicts
    assert not tb["size"]["testable"] and not tb["context"]["testable"]
    claims = json.loads((run / "claims.json").read_text())
    assert {c["setup"] for c in claims} == {"size", "context"}
    assert all(c["verdict"] == testbed.NOT_TESTABLE for c in claims)
    assert testbed.NOT_TESTABLE in report.VERDICTS
    retention = sorted(run.glob("runs/*/retention.json"))
    assert len(retention) == 2 * 2  # every context run: 2 methods x {correct, defects}
    for path in retention:
        r = json.loads(path.read_text())
        assert r["before"] == tb["context"]["retention_before"] and 0.0 <= r["after"] <= 1.0
    for setup in ("size", "context"):
        assert (run / "plots" / f"accuracy_{setup}.png").stat().st_size > 1000
        assert json.loads((run / "baselines" / f"{setup}.json").read_text())["student"]
    prepared = json.loads(next((tmp_path / "cache").glob("toy-*/prepared.json")).read_text())
    assert prepared["student"]["snapshot_step"] in (10, 20)
    published = main.publish(run, tmp_path / "docs")
    assert (tmp_path / "docs" / "results" / testbed.TESTBED_JSON).exists()
    assert "](results/" in (tmp_path / "docs" / "RESULTS.md").read_text() and len(published) > 3
    # a second call reuses the testbed and skips every finished run
    _, again = main.run_main(
        run, tmp_path / "cache", quick=True, prepare_cfg=main.smoke_prepare_config(),
        methods=main.SMOKE_METHODS, steps=main.SMOKE_STEPS, overrides=main.SMOKE_OVERRIDES)
    assert again.ran == [] and len(again.skipped) == 8
