"""The embedded default end to end at micro scale: prepare -> sweep -> report -> verdicts."""

import json

import ml_collections
import pytest

from cliffdistill.engine.defects import TRAINING_DEFECTS
from cliffdistill import report
from cliffdistill.run import loop
from cliffdistill.study import modes, testbed, toy
from cliffdistill.data import toy_tokenizer
from cliffdistill.study import design, results

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
    cfg = design.sweep_config(tmp_path, design.MODES["default"], context_values=(3, 5, 8))
    rows = list(zip(cfg.zip.setup, cfg.zip.method, cfg.zip.seed, cfg.zip.data.path))
    context = [(seed, path) for setup, method, seed, path in rows
               if setup == "context" and method == "hybrid"]
    # seeds 0,1,2 of the correct implementation, then seed 0 of each defect row touching hybrid
    assert [p.rsplit("_v", 1)[1] for _, p in context][:3] == ["3", "5", "8"]
    assert cfg.base_overrides.schedule.seed_max_tokens == 10  # 20/256 of the 128-token budget
    assert cfg.base_overrides.ablation.study_eval is True
    assert set(cfg.zip.method) == set(design.METHODS) and "off_policy" in cfg.zip.method
    # correct runs evaluate every 10 of 40 steps; defect variants at half-time and the end
    defect = [any(cfg.zip.ablation[d][i] for d in TRAINING_DEFECTS) for i in range(len(rows))]
    assert {(d, e) for d, e in zip(defect, cfg.zip.eval.every)} == {(False, 10), (True, 20)}
    small = design.sweep_config(tmp_path, design.MODES["quick"], overrides={"rollout.max_new_tokens": 64})
    assert small.base_overrides.schedule.seed_max_tokens == 5


def test_factorial_rows_cover_each_defect_alone_and_together_on_the_methods_it_touches():
    full = design.MODES["full"]
    rows = design.sweep_rows(full, design.METHODS, full.factorial_methods)
    correct = [r for r in rows if not r[3]]
    # size: 5 seeds; context: 6, two per context value (seed i trains on value i mod 3)
    assert len(correct) == len(design.METHODS) * (5 + 6)
    assert full.seeds("size") == 5 and full.seeds("context") == 6
    combos = {(setup, defects) for setup, _, _, defects in rows if defects}
    for setup in ("size", "context"):
        singles = {d for s, c in combos if s == setup and len(c) == 1 for d in c}
        pairs = [c for s, c in combos if s == setup and len(c) == 2]
        bundle = [c for s, c in combos if s == setup and len(c) > 2]
        assert len(bundle) == 1 and set(bundle[0]) == singles
        assert len(pairs) == len(singles) * (len(singles) - 1) // 2  # --full: every pair
        assert ("teacher_no_context" in singles) == (setup == "context")
    by_combo = {}
    for setup, method, seed, defects in rows:
        if defects:
            by_combo.setdefault((setup, defects), set()).add((method, seed))
    assert by_combo[("size", ("zero_kl_anchor",))] == {("kl_anchored", s) for s in range(3)}
    # --full: every method a defect touches, replay_buffer and reverse_curriculum included
    assert {m for m, _ in by_combo[("size", ("unshifted_off_policy",))]} == {
        "off_policy", "hybrid", "mixture", "kl_anchored", "replay_buffer", "reverse_curriculum"}
    default = design.MODES["default"]
    assert {m for _, m, _, d in design.sweep_rows(default, design.METHODS,
                                                   default.factorial_methods)
            if d == ("unshifted_off_policy",)} == {"off_policy", "hybrid", "mixture", "kl_anchored"}
    assert "on_policy_gkd" not in {m for m, _ in by_combo[("context", ("unshifted_off_policy",))]}


@pytest.mark.slow
def test_main_pipeline_micro(tmp_path):
    run = tmp_path / "run"
    # two workers: the teacher pretrains in a worker process, the runs train in two (checked below)
    results_md, sweep_result = modes.run_smoke(run, tmp_path / "cache", workers=2)
    assert not sweep_result.failed
    assert len(sweep_result.ran) == 2 * 4  # 2 methods x (2 setups x {correct, defects})
    text = results_md.read_text()
    for needle in ("## Testbed", "NOT TESTABLE", "The study's claims on this testbed", "Retention",
                   "### `size`", "### `context`", "on_policy_gkd", "off_policy",
                   "format-only", "What this testbed can and cannot show",
                   "[config.json](config.json)", "[REPORT.md](REPORT.md)"):
        assert needle in text, needle
    assert "Setup `size`" in (run / report.REPORT_MD).read_text()  # the full report, linked
    assert json.loads((run / results.CONFIG_FILE).read_text())["runs"]["runs"]
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
    published = results.publish(run, tmp_path / "docs")
    assert (tmp_path / "docs" / "results" / testbed.TESTBED_JSON).exists()
    docs_text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "](results/" in docs_text and "](results/config.json)" in docs_text
    assert (tmp_path / "docs" / "results" / report.REPORT_MD).exists() and len(published) > 3
    # a second call reuses the testbed and skips every finished run
    _, again = modes.run_smoke(run, tmp_path / "cache")
    assert again.ran == [] and len(again.skipped) == 8
    _worker_processes_compute_what_one_process_computes(tmp_path, tmp_path / "cache", run)


def _worker_processes_compute_what_one_process_computes(tmp_path, cache, run):
    """`workers=2` changes where the work runs, not its numbers: the teacher pretrained in a
    worker process and a run trained in one equal, bit for bit, the same work done here."""
    c = design.smoke_prepare_config()
    root = next(cache.glob("toy-*"))
    tok = toy_tokenizer.load_tokenizer(root / "tokenizer")
    toy.pretrain_model(tmp_path / "here", "teacher", c.teacher, c, tok, c.seed + 1, say=print)
    assert ((tmp_path / "here" / "teacher" / "model.safetensors").read_bytes()
            == (root / "teacher" / "model.safetensors").read_bytes())
    worker_run = next(d for d in (run / "runs").iterdir() if d.name.startswith(
        "setup=context.method=on_policy_gkd") and "=True" not in d.name)
    cfg = ml_collections.ConfigDict(json.loads((worker_run / "config.json").read_text()))
    loop.run(cfg, tmp_path / "rerun", progress=False)
    for name in ("eval.jsonl", "metrics.jsonl"):  # every number but the timings
        rows = [[{k: v for k, v in json.loads(line).items()
                  if not k.startswith(("time/", "seconds", "mfu"))}
                 for line in (d / name).read_text().splitlines()]
                for d in (worker_run, tmp_path / "rerun")]
        assert rows[0] == rows[1], name



def test_limits_paragraph_derives_the_headroom_sentence_from_the_testbed():
    """The 'what the testbed can show' sentence follows the oracle and teacher numbers: it says
    the gap is capacity only when the oracle closes less than half of it."""
    def setup(teacher: float, student: float, oracle: float) -> dict:
        return {"teacher": {"accuracy": teacher}, "student": {"accuracy": student},
                "oracle": {"accuracy": oracle}}

    narrow = results.headroom_phrase(setup(0.773, 0.066, 0.295))
    assert "22.9 of the 70.7 pp" in narrow and "(32%)" in narrow and "capacity" in narrow
    wide = results.headroom_phrase(setup(0.95, 0.05, 0.80))
    assert "(83%)" in wide and "within the student's reach" in wide and "capacity" not in wide
    assert "no gap" in results.headroom_phrase(setup(0.10, 0.20, 0.30))
