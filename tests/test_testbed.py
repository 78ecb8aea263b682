"""The toy testbed's held-out eval and its method-neutral headroom checks (issue #14)."""

import json

import pytest

from cliffdistill.study import testbed
from cliffdistill.data import synthetic
from cliffdistill.study import toy_config, toy_data


# ----------------------------------------------------------------------------- held-out eval


def small_config():
    c = toy_config.default_prepare_config()
    c.n_eval, c.n_dev, c.n_train_prompts, c.run.n_fewshot = 64, 16, 32, 8
    c.teacher.update(steps=40, batch=32, episode_every=4)
    return c


def test_no_eval_solution_occurs_in_pretraining(tmp_path):
    """Every eval solution (plain and each context value) is absent from N pretraining batches
    of the teacher's stream (plain steps and context episodes, format-only ones included) --
    as a whole solution and as a line-aligned tail of a longer one."""
    c = small_config()
    data = toy_data.write_data(tmp_path, c)
    assert len(data.eval_solutions) == c.n_eval * (2 + len(c.context_values))  # plain, size, contexts
    seen = set()
    for step in range(c.teacher.steps):
        for item in toy_data.stream_items(c, c.teacher, seed=1, step=step):
            seen.update(item.shown)
    assert len(seen) > 1000
    assert not any(s in text for s in data.eval_solutions[:64] for text in seen)  # raw substring
    assert toy_data.pretrain_overlap(data.eval_solutions, [(c.teacher, 1)], c) == 0.0


def test_overlap_measure_detects_verbatim_tails():
    """The measure is not vacuous: a stream's own solutions, and their line-aligned tails,
    count as overlap; the held-out split is what keeps the eval at zero."""
    c = small_config()
    m = c.teacher.copy_and_resolve_references()
    m.steps = 3
    shown = [t for step in range(3) for it in toy_data.stream_items(c, m, 1, step) for t in it.shown]
    tails = [list(toy_data.line_suffixes(s))[1] for s in shown if s.count("\n") >= 2]
    assert toy_data.pretrain_overlap(shown[:20] + tails[:20], [(m, 1)], c) == 1.0
    unseen = synthetic.generate(20, seed=99, difficulty=4, style="worked", split="held_out")
    assert toy_data.pretrain_overlap([p.solution for p in unseen], [(m, 1)], c) == 0.0


def test_eval_and_train_prompts_are_held_out_and_distinct(tmp_path):
    c = small_config()
    toy_data.write_data(tmp_path, c)
    from cliffdistill.data import gsm8k

    plain = {s: gsm8k.load_jsonl(tmp_path / "plain" / f"{s}.jsonl") for s in ("train", "test", "dev")}
    assert [len(plain[s]) for s in ("train", "test", "dev")] == [40, 64, 16]
    questions = [e.question for exs in plain.values() for e in exs]
    assert len(set(questions)) == len(questions)
    dirs = {v: toy_data.context_dir(tmp_path, v) for v in c.context_values}
    for v, d in {**dirs, c.size_value: toy_data.size_dir(tmp_path)}.items():
        test = gsm8k.load_jsonl(d / "test.jsonl")
        assert all(e.solution.startswith(e.question.split()[0]) and f"*{v}=" in e.solution
                   for e in test)
    assert len(gsm8k.load_jsonl(toy_data.size_dir(tmp_path) / "dev.jsonl")) == 16


def test_only_the_teacher_learns_the_size_value():
    """The size setup's knowledge gap: the teacher's zero-shot unit problems all use
    `size_value`; the student's use every other value and never it (episodes always show >= 1
    solved example, so a zero-shot unit problem is unambiguous)."""
    c = small_config()
    c.student.update(episode_every=0)

    def unit_values(m):
        out = []
        for step in range(8):
            for it in toy_data.stream_items(c, m, seed=1, step=step):
                if "zorp" in it.prompt and it.prompt.count("zorp") == 1:
                    out.append(int(it.answer.split("*")[1].split("=")[0]))
        return out

    c.teacher.update(episode_every=0)
    teacher, student = unit_values(c.teacher), unit_values(c.student)
    assert teacher and set(teacher) == {c.size_value}
    assert len(student) >= 40 and c.size_value not in student and len(set(student)) >= 5


# ----------------------------------------------------------------------------- headroom checks


def measured(teacher=0.9, student=0.2, oracle_gain=0.3, n=512, overlap=0.0):
    setup = {"teacher": {"accuracy": teacher}, "student": {"accuracy": student},
             "oracle_gain": oracle_gain}
    return {"size": dict(setup), "context": dict(setup, teacher={"accuracy": 0.5}),
            "eval_ci_halfwidth": testbed.ci_halfwidth(n), "eval_pretrain_overlap": overlap}


def test_ci_halfwidth():
    assert testbed.ci_halfwidth(512) == pytest.approx(1.96 * (0.25 / 512) ** 0.5, rel=1e-3)
    assert testbed.ci_halfwidth(512) <= 0.045 < testbed.ci_halfwidth(128)


@pytest.mark.parametrize("kw,needle", [
    ({}, None),
    ({"teacher": 0.55}, "capability gap"),
    ({"oracle_gain": 0.1}, "oracle gain"),
    ({"n": 128}, "too few eval questions"),
    ({"overlap": 0.01}, "recall"),
])
def test_failed_checks(kw, needle):
    tb = measured(**kw)
    failed = testbed.failed_checks(tb["size"], tb, testbed.default_checks())
    assert (failed == []) if needle is None else (len(failed) == 1 and needle in failed[0])


def test_judge_marks_a_failing_setup_not_testable_and_says_so_loudly():
    tb = testbed.judge(measured(), testbed.default_checks())
    assert tb["size"]["testable"] and not tb["context"]["testable"]  # context gap 0.5 - 0.2
    assert "capability gap" in tb["context"]["failed_checks"][0]
    loud = "\n".join(testbed.loud_lines(tb))
    assert "setup 'context' is NOT TESTABLE" in loud and "'size' passes" in loud


def test_gate_claims_gives_a_not_testable_setup_no_verdicts(tmp_path):
    tb = testbed.judge(measured(), testbed.default_checks())
    (tmp_path / testbed.TESTBED_JSON).write_text(json.dumps(tb))
    claims = [{"claim": "x", "setup": s, "verdict": "supported", "evidence": "a 1.0"}
              for s in ("size", "context")]
    gated = testbed.gate_claims(claims, testbed.read(tmp_path))
    assert [g["verdict"] for g in gated] == ["supported", testbed.NOT_TESTABLE]
    assert "capability gap" in gated[1]["evidence"] and "a 1.0" in gated[1]["evidence"]
    assert claims[1]["verdict"] == "supported"  # the input is not modified
    assert testbed.gate_claims(claims, None) == claims
    assert testbed.read(tmp_path / "missing") is None


def test_default_testbed_is_calibrated_by_neutral_checks_only():
    """The prepare config's knobs that decide headroom: an eval of >= 512 problems and the runs'
    own budget for the oracle (read by the toy's run config, so the two cannot drift apart)."""
    c = toy_config.default_prepare_config()
    assert c.n_eval >= 512 and testbed.ci_halfwidth(c.n_eval) <= c.checks.max_ci_halfwidth
    run = toy_config.get_config("size")
    assert (run.lora.rank, run.optim.lr, run.schedule.num_steps, run.rollout.batch_size) == (
        c.run.lora_rank, c.run.lr, c.run.steps, c.run.batch_size)
    assert run.data.n_eval == c.n_eval and run.rollout.max_new_tokens == c.run.max_new_tokens
    assert run.schedule.seed_max_tokens == round(20 / 256 * c.run.max_new_tokens)
    assert len(c.context_values) >= 3
