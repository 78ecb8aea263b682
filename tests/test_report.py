"""cliffdistill.report on hand-built run dirs: every number below is computed by hand in comments."""

import importlib
import json
import math
import struct
from pathlib import Path

import pytest

import numpy as np

from cliffdistill import report, stats
from cliffdistill.report import claims as claims_lib

T2 = 4.302653  # t_{0.975, 2}
T1 = 12.706205  # t_{0.975, 1}


def _write_jsonl(path: Path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def _run(
    root: Path,
    name: str,
    *,
    setup="size",
    method="on_policy_gkd",
    seed=0,
    ablation=None,
    state="done",
    evals=(),
    metric_steps=3,
    cost=(0.1, 0.5),
    error=None,
    statuses=None,
    extra_metrics=(),
):
    """One run dir. ``evals`` = [(step, accuracy)], n = 100 questions; metrics: ``metric_steps`` steps
    of 100 sampled / 100 scored / 80 trained tokens, 1 s rollout, 0.5 s score, 0.25 s update, 2 s step,
    teacher_score = -1 - 0.1 * step - 0.01 * seed."""
    d = root / "runs" / name
    d.mkdir(parents=True)
    ablation = {"no_shift": False} if ablation is None else ablation
    (d / "config.json").write_text(
        json.dumps({"name": name, "setup": setup, "method": method, "seed": seed, "ablation": ablation})
    )
    statuses = statuses or {}
    _write_jsonl(
        d / "eval.jsonl",
        [
            {
                "step": s,
                "accuracy": a,
                "n": 100,
                "correct": round(a * 100),
                "truncation_rate": 0.1,
                "empty_rate": 0.0,
                "repetition_rate": 0.05,
                "mean_length": 120.0,
                **({"status": statuses[s]} if s in statuses else {}),
            }
            for s, a in evals
        ],
    )
    metrics = [
        {
            "step": s,
            "tokens/sampled": 100,
            "tokens/scored": 100,
            "tokens/trained": 80,
            "time/rollout": 1.0,
            "time/score": 0.5,
            "time/update": 0.25,
            "time/eval": 0.0,
            "time/step": 2.0,
            "flops": 1e9,
            "teacher_score": -1.0 - 0.1 * s - 0.01 * seed,
        }
        for s in range(metric_steps)
    ]
    _write_jsonl(d / "metrics.jsonl", list(extra_metrics) + metrics)
    if state != "missing":
        status = {"state": state, "error": error, "final_step": metric_steps - 1, "wall_seconds": 10.0}
        if cost is not None:
            status["cost"] = {"device_hours": cost[0], "usd": cost[1]}
        (d / "status.json").write_text(json.dumps(status))
    return {"name": name, "setup": setup, "method": method, "seed": seed, "ablation": ablation}


def _baseline(acc_correct):
    return {"accuracy": acc_correct / 100, "correct": acc_correct, "n": 100, "ci_low": 0.0, "ci_high": 1.0}


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    entries = []
    # size / on_policy_gkd: finals 0.5, 0.6, 0.7 from start 0.5 (seed 1 re-logged step 1 after a resume).
    for seed, curve in enumerate([[0.5, 0.55, 0.5], [0.5, 0.6, 0.6], [0.5, 0.65, 0.7]]):
        extra = [{"step": 1, "tokens/sampled": 999, "teacher_score": 5.0}] if seed == 1 else ()
        entries.append(
            _run(
                root,
                f"gkd{seed}",
                seed=seed,
                evals=list(zip([0, 5, 10], curve, strict=True)),
                extra_metrics=extra,
            )
        )
    # size / hybrid: finals 0.0, 0.3, 0.5 from 0.5 -> collapsed, partial, stable (seed 1 records its status).
    for seed, curve in enumerate([[0.5, 0.2, 0.0], [0.5, 0.4, 0.3], [0.5, 0.5, 0.5]]):
        entries.append(
            _run(
                root,
                f"hyb{seed}",
                method="hybrid",
                seed=seed,
                evals=list(zip([0, 5, 10], curve, strict=True)),
                statuses={10: "partial"} if seed == 1 else None,
            )
        )
    # size / hybrid with the no-shift defect: both seeds at 0.
    for seed in range(2):
        entries.append(
            _run(
                root,
                f"hybns{seed}",
                method="hybrid",
                seed=seed,
                ablation={"no_shift": True},
                evals=[(0, 0.5), (5, 0.1), (10, 0.0)],
            )
        )
    # size / teacher_seeded: one done, one failed, one still running.
    entries.append(_run(root, "ts0", method="teacher_seeded", evals=[(0, 0.5), (10, 0.6)]))
    entries.append(
        _run(
            root,
            "ts1",
            method="teacher_seeded",
            seed=1,
            state="failed",
            evals=[(0, 0.5)],
            metric_steps=2,
            cost=(0.05, 0.25),
            error="RuntimeError: out of memory\nTraceback ...",
        )
    )
    entries.append(
        _run(
            root,
            "ts2",
            method="teacher_seeded",
            seed=2,
            state="running",
            evals=[(0, 0.5)],
            metric_steps=1,
            cost=None,
        )
    )
    # context: one run without a step-0 eval -> its start is the baseline student (0.4).
    entries.append(_run(root, "ctx0", setup="context", evals=[(5, 0.5), (10, 0.55)]))
    (root / "sweep.json").write_text(json.dumps({"name": "unit", "runs": entries}))
    (root / "baselines").mkdir()
    (root / "baselines" / "size.json").write_text(
        json.dumps({"student": _baseline(50), "teacher": _baseline(80), "teacher_with_context": None})
    )
    (root / "baselines" / "context.json").write_text(
        json.dumps(
            {"student": _baseline(40), "teacher": _baseline(70), "teacher_with_context": _baseline(85)}
        )
    )
    return root


def _group(agg, setup, method, variant="correct"):
    [g] = [g for g in agg["groups"] if (g["setup"], g["method"], g["variant"]) == (setup, method, variant)]
    return g


def test_group_statistics_match_hand_computation(sweep_dir):
    agg = report.aggregate(sweep_dir)
    assert agg["counts"] == {"runs": 12, "done": 10, "failed": 1, "pending": 1}
    assert [(g["setup"], g["method"], g["variant"]) for g in agg["groups"]] == [
        ("context", "on_policy_gkd", "correct"),
        ("size", "on_policy_gkd", "correct"),
        ("size", "hybrid", "correct"),
        ("size", "hybrid", "no_shift"),
        ("size", "teacher_seeded", "correct"),
    ]

    g = _group(agg, "size", "on_policy_gkd")
    # finals 0.5, 0.6, 0.7: mean 0.6, s = 0.1, half = T2 * 0.1 / sqrt(3) = 0.2484138
    assert g["final_per_seed"] == [0.5, 0.6, 0.7]
    assert g["final_mean"] == pytest.approx(0.6)
    assert g["final_ci_low"] == pytest.approx(0.6 - 0.2484138, abs=1e-6)
    assert g["final_ci_high"] == pytest.approx(0.6 + 0.2484138, abs=1e-6)
    assert g["status_counts"] == {"stable": 3, "partial": 0, "collapsed": 0,
                                  "near_zero": 0, "transient_collapse": 0}
    assert g["delta_mean"] == pytest.approx(0.1)  # (0 + 0.1 + 0.2) / 3
    assert g["best_mean"] == pytest.approx((0.55 + 0.6 + 0.7) / 3)
    assert (g["n_done"], g["n_failed"], g["n_pending"]) == (3, 0, 0)
    # accuracy curve at step 5: 0.55, 0.6, 0.65 -> mean 0.6, s = 0.05, half = T2 * 0.05 / sqrt(3) = 0.1242069
    acc = g["curves"]["accuracy"]
    assert acc["steps"] == [0, 5, 10] and acc["n"] == [3, 3, 3]
    assert acc["mean"][1] == pytest.approx(0.6)
    assert acc["ci_high"][1] - 0.6 == pytest.approx(0.1242069, abs=1e-6)
    # teacher score at step 1: -1.1 - 0.01 * seed -> mean -1.11 (the duplicate step-1 line with 5.0 was replaced)
    ts = g["curves"]["teacher_score"]
    assert ts["steps"] == [0, 1, 2] and ts["mean"][1] == pytest.approx(-1.11)

    g = _group(agg, "size", "hybrid")
    # finals 0.0, 0.3, 0.5: mean 0.2666667; squared deviations .0711111 + .0011111 + .0544444 = .1266667,
    # s^2 = .0633333, se = sqrt(.0633333 / 3) = .1452966, half = T2 * se = .6251613
    assert g["final_mean"] == pytest.approx(0.2666667, abs=1e-6)
    assert g["final_ci_low"] == pytest.approx(0.2666667 - 0.6251613, abs=1e-5)
    assert g["final_ci_high"] == pytest.approx(0.2666667 + 0.6251613, abs=1e-5)
    assert g["status_counts"] == {"stable": 1, "partial": 1, "collapsed": 1,
                                  "near_zero": 0, "transient_collapse": 0}
    assert g["delta_mean"] == pytest.approx((-0.5 - 0.2 + 0.0) / 3)

    g = _group(agg, "size", "hybrid", "no_shift")
    assert (g["final_mean"], g["final_ci_low"], g["final_ci_high"]) == (0.0, 0.0, 0.0)
    assert g["status_counts"]["collapsed"] == 2

    g = _group(agg, "size", "teacher_seeded")
    assert (g["n_done"], g["n_failed"], g["n_pending"]) == (1, 1, 1)
    assert g["final_mean"] == 0.6 and math.isnan(g["final_ci_low"])

    g = _group(agg, "context", "on_policy_gkd")
    assert g["delta_mean"] == pytest.approx(0.55 - 0.4)  # start from the baseline student
    assert g["status_counts"]["stable"] == 1  # 0.55 >= 0.9 * 0.4


def test_costs_baselines_and_failures(sweep_dir):
    agg = report.aggregate(sweep_dir)
    gkd = agg["cost"]["by_setup_method"]["size"]["on_policy_gkd"]
    # 3 runs x 3 steps x 100 tokens (the resumed run's duplicate step counts once)
    assert (gkd["tokens_sampled"], gkd["tokens_trained"], gkd["runs"]) == (900, 720, 3)
    assert gkd["seconds_rollout"] == 9.0 and gkd["device_hours"] == pytest.approx(0.3)
    ts = agg["cost"]["by_setup_method"]["size"]["teacher_seeded"]
    # done 3 steps + failed 2 + running 1 = 6 steps; device-hours 0.1 + 0.05 + 0
    assert (
        ts["tokens_sampled"] == 600
        and ts["device_hours"] == pytest.approx(0.15)
        and ts["usd"] == pytest.approx(0.75)
    )
    assert agg["cost"]["by_setup"]["size"]["runs"] == 11
    assert agg["cost"]["total"]["tokens_sampled"] == 100 * (9 + 9 + 6 + 6 + 3)

    student = agg["baselines"]["size"]["student"]
    assert (student["ci_low"], student["ci_high"]) == stats.wilson_interval(50, 100)
    assert agg["baselines"]["size"]["teacher_with_context"] is None
    assert agg["baselines"]["context"]["teacher_with_context"]["accuracy"] == 0.85

    [failed] = [r for r in agg["runs"] if r["state"] == "failed"]
    assert failed["name"] == "ts1" and failed["error"] == "RuntimeError: out of memory"


def test_recorded_status_wins_over_recomputed(tmp_path):
    root = tmp_path / "s"
    # final 0.5 from 0.5 is "stable" by the rule, but the trainer recorded "collapsed" with its thresholds.
    _run(root, "r0", evals=[(0, 0.5), (10, 0.5)], statuses={10: "collapsed"})
    g = report.aggregate(root)["groups"][0]  # no sweep.json: runs/ is scanned
    assert g["status_counts"] == {"stable": 0, "partial": 0, "collapsed": 1,
                                  "near_zero": 0, "transient_collapse": 0}


def test_status_from_the_whole_curve(tmp_path):
    root = tmp_path / "s"
    # fell from 49% to 8% (collapsed by the documented rule) and recovered: not "stable"
    _run(root, "dip", seed=0, evals=[(0, 0.49), (10, 0.08), (20, 0.45), (40, 0.48)])
    _run(root, "flat", seed=1, evals=[(0, 0.49), (10, 0.45), (20, 0.47), (40, 0.48)])
    # the trainer's recorded status of an intermediate eval counts as well
    _run(root, "rec", seed=2, evals=[(0, 0.5), (10, 0.5), (40, 0.5)], statuses={10: "collapsed"})
    agg = report.aggregate(root)
    runs = {r["name"]: r for r in agg["runs"]}
    assert runs["dip"]["final_status"] == "transient_collapse"
    assert runs["dip"]["min_accuracy"] == pytest.approx(0.08)
    assert runs["flat"]["final_status"] == "stable"
    assert runs["rec"]["final_status"] == "transient_collapse"
    assert agg["groups"][0]["status_counts"] == {"stable": 1, "partial": 0, "collapsed": 0,
                                                 "near_zero": 0, "transient_collapse": 2}


def test_jsonl_reading_is_robust(tmp_path):
    p = tmp_path / "m.jsonl"
    _write_jsonl(p, [{"step": 2, "x": 1}, {"step": 1, "x": 2}, {"step": 2, "x": 3}], tail='{"step": 3, "x"')
    assert report.by_step(report.read_jsonl(p)) == [{"step": 1, "x": 2}, {"step": 2, "x": 3}]
    assert report.read_jsonl(tmp_path / "missing.jsonl") == []


def test_variant_names():
    assert report.variant_name({}) == "correct"
    assert report.variant_name({"b": False, "a": False}) == "correct"
    assert report.variant_name({"b": True, "a": True, "c": False}) == "a+b"
    assert report.variant_name(None) == "correct"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_write_report_files_tables_plots_and_determinism(sweep_dir):
    paths = report.write_report(sweep_dir)
    for setup in ("size", "context"):
        for kind in ("accuracy", "teacher_score", "bars"):
            w, h = _png_size(sweep_dir / "plots" / f"{kind}_{setup}.png")
            assert w > 300 and h > 200
    _png_size(sweep_dir / "plots" / "accuracy_size_ablations.png")
    assert not (sweep_dir / "plots" / "accuracy_context_ablations.png").exists()

    md = paths["md"].read_text()
    for row in (
        "| on_policy_gkd |",
        "| hybrid |",
        "| teacher_seeded |",
        "| student (step 0) |",
        "| teacher |",
        "| teacher + context |",
        "| **total** |",
    ):
        assert row in md, row
    # no per-question results in these runs: t-interval over seeds; step 0 beside every row
    assert "| on_policy_gkd | 50.0 | 60.0 ± 24.8 | 3 / 0 / 0 / 0 / 0 | +10.0 pp |" in md
    assert "| hybrid | 50.0 | 26.7 ± 62.5 | 1 / 1 / 1 / 0 / 0 | -23.3 pp |" in md
    assert "| method | correct | no_shift |" in md  # ablations side by side
    assert "![accuracy_size](plots/accuracy_size.png)" in md and "plots/bars_context.png" in md
    assert "| ts1 | RuntimeError: out of memory |" in md
    assert "Generated at" not in md and str(sweep_dir) not in md

    rows = paths["csv"].read_text().splitlines()
    assert len(rows) == 1 + 5 and rows[0].startswith("setup,method,variant,")
    assert rows[2].startswith("size,on_policy_gkd,correct,3,0,0,0.6,")
    results = json.loads(paths["json"].read_text())  # strict JSON: NaN became null
    assert results["groups"][4]["final_ci_low"] is None

    before = {p: p.read_bytes() for p in paths.values()}
    paths2 = report.write_report(sweep_dir)
    assert paths2 == paths and all(p.read_bytes() == b for p, b in before.items())
    md = report.write_report(sweep_dir, generated_at="2025-01-01T00:00Z", plots=False)["md"].read_text()
    assert "Generated at 2025-01-01T00:00Z." in md


def test_accuracy_plot_image(sweep_dir, tmp_path):
    """Renders the accuracy plot alone (the PNG a reviewer looks at for the cliff)."""
    agg = report.aggregate(sweep_dir)
    out = tmp_path / "acc.png"
    report.plot_accuracy(agg, "size", out)
    assert _png_size(out)[0] > 300


def test_out_of_range_accuracy_is_reported_invalid_not_crashing(tmp_path):
    root = tmp_path / "s"
    _run(root, "pct", evals=[(0, 50.0), (10, 58.0)])  # a trainer that logged percentages
    g = report.aggregate(root)["groups"][0]
    assert g["status_counts"] == {"stable": 0, "partial": 0, "collapsed": 0,
                                  "near_zero": 0, "transient_collapse": 0, "invalid": 1}
    assert "0 / 0 / 0, invalid: 1" in report.write_report(root, plots=False)["md"].read_text()


# ----------------------------------------------------------------------------- study claims


def _per_question(acc, q=400, seed=0):
    """A 0/1 string with round(acc * q) ones at random (seeded) positions."""
    bits = np.zeros(q, int)
    bits[np.random.default_rng(seed).permutation(q)[:round(acc * q)]] = 1
    return "".join(map(str, bits))


def _claim_group(method, finals, start, statuses, setup="size", variant="correct"):
    counts = {s: statuses.count(s) for s in ("stable", "partial", "collapsed")}
    mean, low, high = stats.mean_ci(finals)
    return {"setup": setup, "method": method, "variant": variant, "n_done": len(finals),
            "final_mean": mean, "final_ci_low": low, "final_ci_high": high,
            "status_counts": counts, "start_mean": start,
            "delta_per_seed": [f - start for f in finals],
            "final_per_question": [_per_question(f, seed=i) for i, f in enumerate(finals)]}


def test_study_claims_verdicts_follow_the_documented_rules():
    from cliffdistill import report as rep

    off = ("hybrid", "mixture", "replay_buffer", "kl_anchored", "reverse_curriculum")

    def world(n_seeds, on=(0.5, 0.55, 0.6, 0.52, 0.58), off_correct=(0.4, 0.42, 0.41, 0.4, 0.43),
              off_status="stable", on_status="stable"):
        groups = [_claim_group("on_policy_gkd", list(on[:n_seeds]), 0.3, [on_status] * n_seeds),
                  _claim_group("extended_on_policy", [x + 0.05 for x in on[:n_seeds]], 0.3,
                               [on_status] * n_seeds),
                  _claim_group("teacher_seeded", [0.9, 0.91, 0.92, 0.9, 0.91][:n_seeds], 0.3,
                               ["stable"] * n_seeds)]
        groups += [_claim_group(m, list(off_correct[:n_seeds]), 0.3, [off_status] * n_seeds)
                   for m in off]
        groups += [_claim_group(m, [0.0, 0.0, 0.01, 0.0, 0.0][:n_seeds], 0.3,
                                ["collapsed"] * n_seeds, variant="defects") for m in off]
        return {v["claim"]: v for v in rep.study_claims({"setups": ["size"], "groups": groups})}

    five = world(5)
    assert five["Every method with an off-policy part collapses"]["verdict"] == "contradicted"
    assert five["Pure on-policy distillation works"]["verdict"] == "supported"
    assert five["Teacher seeding is the best method"]["verdict"] == "supported"
    assert "Holm over the 28 method pairs" in five["Teacher seeding is the best method"]["evidence"]
    # 3 seeds: a t-test on 2 df cannot clear a Holm family of 28 pairs at these differences
    three = world(3)
    assert three["Teacher seeding is the best method"]["verdict"] == "inconclusive"
    assert three["Pure on-policy distillation works"]["verdict"] == "supported"
    one = world(1)  # one seed: no interval, no test
    assert one["Pure on-policy distillation works"]["verdict"] == "inconclusive"
    assert "descriptive only" in one["Teacher seeding is the best method"]["evidence"]
    # (the defects claim needs every variant's cliff pattern: test_cliff_pattern_on_...)
    # the study's world: off-policy collapses even when implemented correctly
    collapsed = world(5, off_correct=(0.0, 0.01, 0.0, 0.0, 0.01), off_status="collapsed")
    assert collapsed["Every method with an off-policy part collapses"]["verdict"] == "supported"
    # on-policy losing accuracy with a CI below zero
    worse = world(5, on=(0.1, 0.12, 0.11, 0.1, 0.12), on_status="partial")
    assert worse["Pure on-policy distillation works"]["verdict"] == "contradicted"


def test_extension_methods_rank_after_the_study_and_stay_out_of_its_claims():
    from cliffdistill.engine import methods
    from cliffdistill import report as rep
    from cliffdistill.report.aggregate import method_rank

    ranks = [method_rank(m) for m in methods.STUDY_METHODS + methods.EXTENSION_METHODS]
    assert ranks == sorted(ranks) and method_rank("unknown") > ranks[-1]
    # reward_weighted_gkd is pure on-policy, dpo_teacher has no off-policy part: neither is judged
    assert claims_lib.ON_POLICY_METHODS == ("on_policy_gkd", "extended_on_policy")
    assert set(claims_lib.OFF_POLICY_METHODS) <= set(methods.STUDY_METHODS)
    groups = [_claim_group("on_policy_gkd", [0.5, 0.55, 0.6], 0.3, ["stable"] * 3),
              _claim_group("teacher_seeded", [0.9, 0.91, 0.92], 0.3, ["stable"] * 3),
              _claim_group("hybrid", [0.4, 0.42, 0.41], 0.3, ["stable"] * 3)]
    agg = {"setups": ["size"], "groups": groups}
    before = {v["claim"]: v["verdict"] for v in rep.study_claims(agg)}
    assert before["Teacher seeding is the best method"] == "supported"
    # an extension that beats teacher_seeded and one that collapses change no verdict
    agg["groups"] = groups + [
        _claim_group("dpo_teacher", [0.99, 0.99, 0.98], 0.3, ["stable"] * 3),
        _claim_group("reward_weighted_gkd", [0.0, 0.01, 0.0], 0.3, ["collapsed"] * 3)]
    assert {v["claim"]: v["verdict"] for v in rep.study_claims(agg)} == before


def _world(off_correct, on_defects="stable", variant="defects"):
    """Groups of one setup: pure on-policy, teacher_seeded and off-policy methods, correct and
    one defect variant whose off-policy methods collapse."""
    off = ("hybrid", "mixture", "kl_anchored", "off_policy")
    on = ("on_policy_gkd", "extended_on_policy")
    good, dead = [0.5, 0.52, 0.51], [0.0, 0.01, 0.0]
    gs = [_claim_group(m, good, 0.3, ["stable"] * 3) for m in on]
    gs += [_claim_group(m, dead if off_correct == "collapsed" else good, 0.3, [off_correct] * 3)
           for m in off]
    gs += [_claim_group(m, dead, 0.3, ["collapsed"] * 3, variant=variant) for m in off]
    gs += [_claim_group(m, dead if on_defects == "collapsed" else good, 0.3, [on_defects] * 3,
                        variant=variant) for m in on]
    return {"setups": ["size"], "groups": gs}


def _by(verdicts):
    return {(v["claim"], v["variant"]): v for v in verdicts}


def test_cliff_pattern_on_constructed_aggregates():
    from cliffdistill import report as rep

    v = _by(rep.study_claims(_world("stable")))
    assert v[("Cliff pattern under `correct`", "correct")]["verdict"] == "no cliff"
    assert v[("Cliff pattern under `defects`", "defects")]["verdict"] == "reproduces the study's cliff"
    assert v[("The study's picture is produced by its implementation defects", None)][
        "verdict"] == "supported"
    # a defect that kills pure on-policy too destroys every method: no selective cliff
    v = _by(rep.study_claims(_world("stable", on_defects="collapsed")))
    assert v[("Cliff pattern under `defects`", "defects")]["verdict"] == "destroys every method"
    assert v[("The study's picture is produced by its implementation defects", None)][
        "verdict"] == "inconclusive"  # only destruction seen
    # the study's world: the cliff appears with the correct implementation
    v = _by(rep.study_claims(_world("collapsed")))
    assert v[("Cliff pattern under `correct`", "correct")]["verdict"] == "reproduces the study's cliff"
    assert v[("The study's picture is produced by its implementation defects", None)][
        "verdict"] == "contradicted"
    for row in v.values():
        assert row["rule"] in claims_lib.RULES and row["verdict"] in claims_lib.PATTERNS + rep.VERDICTS


def test_every_variant_is_judged():
    from cliffdistill import report as rep

    agg = _world("stable")
    agg["groups"] += _world("stable", variant="zero_kl_anchor")["groups"][6:]
    variants = {v["variant"] for v in rep.study_claims(agg) if v["rule"] == "cliff_pattern"}
    assert variants == {"correct", "defects", "zero_kl_anchor"}


def test_no_significant_winner_and_holm():
    from cliffdistill import report as rep

    same = [0.5, 0.5, 0.5]
    groups = {m: _claim_group(m, same, 0.3, ["stable"] * 3)
              for m in ("on_policy_gkd", "hybrid", "teacher_seeded")}
    pairs = claims_lib.pairwise(groups)
    assert len(pairs) == 3 and all(r["p_holm"] >= r["p"] for r in pairs.values())
    assert claims_lib.best_method(groups, pairs) is None
    assert claims_lib.claim_seeding_best(groups)[0] == "inconclusive"
    groups["teacher_seeded"] = _claim_group("teacher_seeded", [0.9, 0.9, 0.9], 0.3, ["stable"] * 3)
    pairs = claims_lib.pairwise(groups)
    assert claims_lib.best_method(groups, pairs) == "teacher_seeded"
    groups["teacher_seeded"] = _claim_group("teacher_seeded", [0.1, 0.1, 0.1], 0.3, ["stable"] * 3)
    assert claims_lib.claim_seeding_best(groups)[0] == "contradicted"


def test_on_policy_gain_is_seed_level():
    """The gain over step 0 is `stats.seed_interval` of the per-question differences: one seed has
    no interval (question noise alone says nothing about another seed), two seeds have one."""
    g = _claim_group("on_policy_gkd", [0.6], 0.1, ["stable"])
    g["start_per_question"] = [_per_question(0.1, seed=7)]
    mean, low, high, how = claims_lib.gain_ci(g)
    assert how == aggregate_seed_level() and mean == pytest.approx(0.5, abs=0.01)
    assert math.isnan(low) and math.isnan(high)
    two = _claim_group("on_policy_gkd", [0.6, 0.5], 0.1, ["stable"] * 2)
    two["start_per_question"] = [_per_question(0.1, seed=7), _per_question(0.1, seed=8)]
    mean, low, high, _ = claims_lib.gain_ci(two)
    final = np.array([[int(c) for c in q] for q in two["final_per_question"]], float)
    start = np.array([[int(c) for c in q] for q in two["start_per_question"]], float)
    assert (mean, low, high) == tuple(stats.seed_interval(final - start)[k]
                                      for k in ("mean", "low", "high"))
    assert low < mean < high
    assert claims_lib.RULES["on_policy_works"]
    no_pq = _claim_group("on_policy_gkd", [0.6], 0.1, ["stable"])
    assert claims_lib.gain_ci(no_pq)[3] == "t over seeds"  # one seed: no interval -> inconclusive


def aggregate_seed_level() -> str:
    return importlib.import_module("cliffdistill.report.aggregate").SEED_LEVEL


def test_on_policy_that_falls_far_below_its_correct_result_does_not_survive():
    """Under a defect variant, pure on-policy at 4% (start 11%, so "partial" by its own step 0)
    while the correct implementation reached 51%: the defects destroy it too -- no clean cliff."""
    agg = _world("stable")
    for g in agg["groups"]:
        if g["variant"] == "defects" and g["method"] in ("on_policy_gkd", "extended_on_policy"):
            g.update(_claim_group(g["method"], [0.04, 0.05, 0.04], 0.11, ["partial"] * 3,
                                  variant="defects"))
    v = _by(report.study_claims(agg))
    assert v[("Cliff pattern under `defects`", "defects")]["verdict"] == "destroys every method"
    assert v[("The study's picture is produced by its implementation defects", None)][
        "verdict"] == "inconclusive"  # only destruction seen
    assert claims_lib.cliff_pattern({g["method"]: g for g in agg["groups"]
                                     if g["variant"] == "defects"})[0] == (
        "reproduces the study's cliff")  # judged against step 0 alone it would pass


def test_group_ci_is_seed_level():
    """With per-question results the CI is `stats.seed_interval` of the seeds x questions matrix;
    one seed has none (NaN); without per-question results, a t-interval over seeds."""
    aggregate_lib = importlib.import_module("cliffdistill.report.aggregate")  # `aggregate` is also a function

    one = aggregate_lib.final_ci([0.5], ["10" * 256])
    assert one["how"] == aggregate_lib.SEED_LEVEL and one["n"] == 1 and one["mean"] == 0.5
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    seeds = aggregate_lib.final_ci([0.5, 0.6])
    assert seeds["how"] == "t over seeds" and seeds["ci_low"] < 0.5
    matrix = np.array([[1, 0] * 128, [1, 1, 1, 0] * 64], float)
    per_q = ["".join(str(int(v)) for v in row) for row in matrix]
    got = aggregate_lib.final_ci([0.5, 0.75], per_q)
    r = stats.seed_interval(matrix)
    assert (got["mean"], got["ci_low"], got["ci_high"]) == (r["mean"], r["low"], r["high"])
    # wider than the t-interval over the two seeds' means alone: question noise is added
    _, t_low, _ = stats.mean_ci([0.5, 0.75])
    assert got["ci_low"] < t_low


def test_collapse_is_judged_against_the_correct_implementation_when_step0_is_zero():
    """A student that starts at ~0% cannot fall below its step 0, so its runs read "stable" at
    0.0%. Under a defect variant, off-policy parts at 0% while the same methods reach ~88% when
    implemented correctly ARE the study's collapse; pure on-policy at its correct level survives."""
    agg = _world("stable")
    for g in agg["groups"]:
        start = 0.001
        if g["method"] in claims_lib.OFF_POLICY_METHODS:
            finals = [0.0, 0.0, 0.004] if g["variant"] == "defects" else [0.88, 0.87, 0.9]
        else:
            finals = [0.58, 0.6, 0.55]
        g.update(_claim_group(g["method"], finals, start, ["stable"] * 3, variant=g["variant"]))
    v = _by(report.study_claims(agg))
    assert v[("Cliff pattern under `correct`", "correct")]["verdict"] == "no cliff"
    assert v[("Cliff pattern under `defects`", "defects")]["verdict"] == "reproduces the study's cliff"
    # judged against step 0 alone, 0.0% would count as "stable": no cliff
    assert claims_lib.cliff_pattern({g["method"]: g for g in agg["groups"]
                                     if g["variant"] == "defects"})[0] == "no cliff"


def test_results_summary_tables_are_compact_and_paired_with_teacher_seeded():
    """RESULTS.md's first tables: one row per method with its per-seed finals, the paired
    seed-level difference with teacher_seeded (= `stats.seed_interval` of the per-question
    differences), tokens per run; the verdict table prints the status legend once."""
    from cliffdistill.report import summary

    def group(method, finals):
        g = _claim_group(method, finals, 0.3, ["stable"] * len(finals))
        return {**g, "final_per_seed": finals, "cost": {"tokens_trained": 900.0, "runs": 3}}

    agg = {"setups": ["size"], "groups": [group("on_policy_gkd", [0.5, 0.55, 0.6]),
                                          group("teacher_seeded", [0.9, 0.91, 0.92])]}
    lines = summary.method_table(agg, "size")
    on = next(line for line in lines if line.startswith("| on_policy_gkd"))
    assert "| 50.0 / 55.0 / 60.0 |" in on and "| 300 |" in on and on.endswith("| 3/0/0/0/0 |")
    mats = [np.array([[int(c) for c in q] for q in g["final_per_question"]], float)
            for g in agg["groups"]]
    r = stats.seed_interval(mats[0] - mats[1])
    assert f"| {100 * r['mean']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] |" in on
    assert "(reference)" in next(line for line in lines if line.startswith("| teacher_seeded"))

    verdicts = report.study_claims({"setups": ["size"], "groups": agg["groups"]})
    text = "\n".join(summary.verdict_table(verdicts))
    assert text.count(" / ".join(stats.STATUSES)) == 1  # the legend, once
    assert "transient_collapse)" not in text.split("Numbers:")[0]  # never inside a cell


def test_cliff_verdicts_show_their_margin_and_flip_where_the_threshold_moves():
    """A defect variant whose off-policy methods end at 24% of their correct runs reproduces the
    cliff at collapse_frac 0.25 and 0.3 but not at 0.2: the row says so, shows the margin to the
    threshold, and names the affected methods that did not run under the defect."""
    from cliffdistill.report import claims as claims_lib

    def group(method, finals, variant="correct"):
        g = _claim_group(method, finals, 0.03, ["stable"] * len(finals), variant=variant)
        return {**g, "final_per_seed": finals, "start_per_seed": [0.03] * len(finals)}

    off = ("hybrid", "mixture", "kl_anchored", "off_policy")
    groups = [group(m, [0.5, 0.5, 0.5]) for m in off + ("on_policy_gkd",)]
    groups += [group(m, [0.12, 0.12, 0.12], "unshifted_off_policy") for m in off]
    v = _by(report.study_claims({"setups": ["size"], "groups": groups}))
    row = v[("Cliff pattern under `unshifted_off_policy`", "unshifted_off_policy")]
    assert row["verdict"] == claims_lib.REPRODUCES
    assert "closest to the collapse threshold: hybrid 12.0 vs 12.5 (0.25 x 50.0, its correct " \
           "run), -0.5 pp" in row["evidence"]
    assert (f"at collapse_frac 0.2 / 0.3: {claims_lib.NO_CLIFF} / {claims_lib.REPRODUCES}"
            in row["evidence"])
    assert "though it touches them: replay_buffer, reverse_curriculum" in row["evidence"]
    defects = v[("The study's picture is produced by its implementation defects", None)]
    assert defects["verdict"] == "supported"
    assert defects["evidence"].endswith("at collapse_frac 0.2 / 0.3: inconclusive / supported")
    # the seeds' own statuses are re-derived too (vs their step 0 of 55%)
    g = {"g": {**group("hybrid", [0.10, 0.12, 0.20]), "start_per_seed": [0.55] * 3}}
    at_02 = claims_lib.groups_at(g, claims_lib.status_thresholds_at(0.2))["g"]["status_counts"]
    at_03 = claims_lib.groups_at(g, claims_lib.status_thresholds_at(0.3))["g"]["status_counts"]
    assert (at_02["collapsed"], at_02["partial"]) == (1, 2)  # below 11%: 10% only
    assert (at_03["collapsed"], at_03["partial"]) == (2, 1)  # below 16.5%: 10% and 12%
    assert claims_lib.groups_at({"g": {**g["g"], "start_per_seed": [None] * 3}},
                                claims_lib.status_thresholds_at(0.2)) is None
