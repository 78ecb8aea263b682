"""The study's next steps (cliffdistill.extensions): arms, shared runs, statistics."""

import json

import numpy as np
import pytest

from cliffdistill import stats
from cliffdistill.engine import methods
from cliffdistill.run import rundir
from cliffdistill.run import config_io
from cliffdistill.study import extensions, grid, runner
from configs import toy as toy_config

STEPS, BUDGET, LR, RANK = 40, 128, 3e-3, 8
BASE = {"schedule.num_steps": STEPS, "schedule.seed_max_tokens": 10}


def _arms():
    return extensions.arms(STEPS, BUDGET, LR, RANK)


def test_arms_cover_the_three_parts_and_share_runs():
    arms = _arms()
    parts = {a.part for a in arms}
    assert parts == {"objectives", "sensitivity: teacher_seeded", "sensitivity: on_policy_gkd",
                     "retrieval vs few-shot"}
    labels = {a.label for a in arms if a.part == "objectives"}
    assert {m for m in methods.EXTENSION_METHODS} <= labels
    assert {"JSD beta=0 (on_policy_gkd)", "JSD beta=0.5 (on_policy_gkd)"} <= labels
    knobs = {(a.part, a.knob) for a in arms if a.knob}
    assert {k for p, k in knobs if p.endswith("teacher_seeded")} == {
        "seed prefix tokens", "seed decay steps", "LoRA rank", "learning rate", "steps"}
    assert {k for p, k in knobs if p.endswith("on_policy_gkd")} == {
        "LoRA rank", "learning rate", "steps"}
    base = extensions.arm_base(BASE)
    forms = [extensions.normal_form(a.setup, dict(a.overrides), base) for a in arms]
    # the default on_policy_gkd run serves the objectives and every on_policy_gkd knob
    assert forms.count((extensions.SETUP, (("method", "on_policy_gkd"),))) == 4
    assert forms.count(("context", (("method", "on_policy_gkd"),))) == 1  # retrieval's reference
    assert len(set(forms)) < len(forms)
    # one reference per sensitivity knob, at the toy default
    for part, knob in knobs:
        refs = [a for a in arms if a.part == part and a.knob == knob and a.reference]
        assert len(refs) == 1


def test_sweep_config_rows_set_every_varied_field(tmp_path):
    arms = _arms()
    cfg = extensions.sweep_config(tmp_path, arms, (3, 5, 8), BASE, seeds=2)
    base = extensions.arm_base(BASE)
    n_forms = len({extensions.normal_form(a.setup, dict(a.overrides), base) for a in arms})
    assert len(cfg.zip.seed) == 2 * n_forms
    assert set(cfg.zip.data.context) == {"none", "fewshot", "passage"}
    assert set(cfg.zip.setup) == {"size", "context"}
    passages = [p for p, c in zip(cfg.zip.data.passage, cfg.zip.data.context) if c == "passage"]
    assert all("1 zorp = " in p for p in passages)
    # every arm's schedule is valid (the short-run arm moves the phase boundaries to its end)
    base_cfg = config_io.load_config_file(cfg.base_config)
    for spec in grid.expand(cfg, base_cfg):
        run = grid.build_run_config(base_cfg, {f"schedule.{k}": v for k, v in
                                                cfg.base_overrides.schedule.items()}, spec)
        methods.validate_schedule_config(run.schedule)


def _fake_run(workdir, name, cfg, start, final):
    d = workdir / rundir.RUNS_SUBDIR / name
    d.mkdir(parents=True)
    rundir.write_json(d / rundir.CONFIG_FILE, cfg.to_dict())
    rundir.write_json(d / rundir.STATUS_FILE, {"state": "done", "final_step": STEPS})
    rows = [{"step": 0, "accuracy": start.mean(), "per_question": "".join(map(str, start))},
            {"step": STEPS, "accuracy": final.mean(), "per_question": "".join(map(str, final))}]
    rundir.write_jsonl(d / rundir.EVAL_FILE, rows)


def test_analyze_pairs_each_arm_with_its_reference(tmp_path):
    """A constructed sweep: the JSD(0) arm is better than the reference on every question of
    three seeds (significant after Holm); dpo_teacher equals the reference (not significant)."""
    rng = np.random.default_rng(0)
    q = 200
    start = (rng.random(q) < 0.1).astype(int)
    worse = (rng.random((3, q)) < 0.3).astype(int)
    better = np.maximum(worse, (rng.random((3, q)) < 0.5).astype(int))
    arms = [a for a in _arms() if a.part == "objectives"]
    base = extensions.arm_base(BASE)
    entries = []
    for arm, finals in ((arms[0], worse), (arms[1], better), (arms[4], worse)):
        for seed in range(3):
            cfg = toy_config.get_config(extensions.SETUP)
            for field, value in {**BASE, **dict(arm.overrides), "seed": seed}.items():
                config_io.set_field(cfg, field, value)
            name = f"{arm.label}-{seed}".replace(" ", "_").replace("(", "").replace(")", "")
            _fake_run(tmp_path, name, cfg, start, finals[seed])
            entries.append({"name": name})
    rundir.write_json(tmp_path / "sweep.json", {"runs": entries})
    t = stats.default_claim_thresholds()
    rows = {r["label"]: r for r in extensions.analyze(tmp_path, arms, BASE, t)}
    ref, jsd0, dpo = rows[arms[0].label], rows[arms[1].label], rows[arms[4].label]
    assert ref["reference"] and ref["n_seeds"] == 3 and ref["final"] == pytest.approx(worse.mean())
    assert ref["low"] < ref["final"] < ref["high"] and ref["start"] == pytest.approx(start.mean())
    assert jsd0["diff"] == pytest.approx(better.mean() - worse.mean()) and jsd0["significant"]
    assert dpo["diff"] == 0.0 and not dpo["significant"]
    assert rows[arms[2].label]["n_seeds"] == 0  # no runs: reported, never invented
    lines = extensions.markdown(list(rows.values()))
    assert any("**significant**" in line for line in lines)
    extensions.plot(list(rows.values()), tmp_path / "plots" / "x.png")
    assert (tmp_path / "plots" / "x.png").stat().st_size > 1000
    assert json.dumps(list(rows.values()))  # JSON-able
