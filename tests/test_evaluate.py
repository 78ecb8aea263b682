"""Checkpoint-based evaluation and step-0 baselines on a tiny run directory (CPU).

The run directory is written the way the trainer writes it (`config.json` = the resolved config,
orbax checkpoints of `setup.init_state`'s tree), with adapters whose `b` is non-zero, so the
evaluated model is not the base model. Random tiny models never answer a question, so the eval
golds are rewritten to the numbers the model's greedy answers happen to contain: the accuracy the
CLI reports must then be exactly what an independent, one-question-at-a-time loop computes.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from cliffdistill import models
from cliffdistill.engine import sampling
from cliffdistill.run import evaluation, rundir
from cliffdistill.run import assembly
from cliffdistill.data import gsm8k, prompts
from tests.tiny import tiny_run_config

BUDGET = 16
N_EVAL = 16


def _lora_with_b(lora_layers, seed, scale=1.0):
    """The given adapters with a random, non-zero `b` (same pytree, dtypes and shardings)."""
    rng = np.random.default_rng(seed)
    return {name: {"a": ab["a"], "b": jax.device_put(
        (scale * rng.standard_normal(ab["b"].shape)).astype(ab["b"].dtype), ab["b"].sharding)}
        for name, ab in sorted(lora_layers.items())}


def _direct_loop(cfg, lora_layers):
    """Independent reference: fresh tokenizer/params/prompts, `sampling.generate` greedy on ONE
    unpadded question at a time, decode, extract, grade."""
    tok = transformers.AutoTokenizer.from_pretrained(cfg.student.path)
    mcfg, params = models.load_hf(cfg.student.path, dtype=jnp.float32)
    examples = list(assembly.load_splits(cfg).eval)
    instruction = prompts.INSTRUCTION if cfg.data.instruction is None else cfg.data.instruction
    ids, _ = prompts.build_views(tok, examples, [], system=cfg.data.system, instruction=instruction)
    lora = models.LoraParams(jax.device_get(lora_layers), cfg.lora.alpha / cfg.lora.rank)
    eos = tuple(sorted({tok.eos_token_id, *mcfg.eos_token_ids}))
    rows = []
    for ex, prompt in zip(examples, ids):
        out = sampling.generate(mcfg, params, [prompt], jax.random.key(0), BUDGET, temperature=0.0,
                                lora=lora, eos_ids=eos, pad_id=tok.pad_token_id)
        n = int(out.lengths[0])
        text = tok.decode([int(t) for t in np.asarray(out.tokens)[0, :n]], skip_special_tokens=True)
        rows.append({"question": ex.question, "completion": text,
                     "extracted": gsm8k.extract_answer(text), "gold": ex.answer})
    return rows


@pytest.fixture(scope="module")
def run(tiny_pair, tmp_path_factory):
    """A run dir with checkpoints at steps 1 and 2 (different non-zero adapters) and eval golds
    rewritten so that some (not all) greedy answers of the step-2 adapters are correct."""
    root = tmp_path_factory.mktemp("eval_run")
    shutil.copytree(tiny_pair["data"], root / "data")
    cfg = tiny_run_config({**tiny_pair, "data": root / "data"}, "on_policy_gkd", steps=2)
    cfg.data.n_eval, cfg.eval.max_new_tokens = N_EVAL, BUDGET
    s = assembly.make_setup(cfg)
    state = assembly.init_state(s, 2)
    # adapters whose greedy answers contain numbers for a few questions (most random ones don't)
    for seed in range(100):
        layers = _lora_with_b(state["lora"], seed)
        _, records = evaluation.evaluate_arrays(
            s, s.student_cfg, s.student_params, models.LoraParams(layers, models.LoraConfig.from_section(cfg.lora).scale),
            s.eval.student, s.eval.student_mask, max_new_tokens=BUDGET)
        if sum(r.extracted is not None for r in records) >= 3:
            break
    else:
        pytest.fail("no adapter seed gives numeric answers; the comparison would have no teeth")
    lora = {1: _lora_with_b(state["lora"], 1000 + seed, 0.5), 2: layers}
    run_dir = root / "run"
    run_dir.mkdir()
    rundir.write_json(run_dir / rundir.CONFIG_FILE, cfg.to_dict())  # what train.run writes
    with rundir.Checkpoints(run_dir) as ckpt:
        for step in (1, 2):
            ckpt.save({**state, "step": np.asarray(step, np.int64), "lora": lora[step]}, wait=True)

    expected = {step: _direct_loop(cfg, lora[step]) for step in (1, 2)}
    # golds := the step-2 answer for all but one of the questions that have a numeric answer
    numeric = [r for r in expected[2] if r["extracted"] is not None]
    new_gold = {r["question"]: r["extracted"] for r in numeric[:-1]}
    test_file = root / "data" / "test.jsonl"
    lines = [json.loads(x) for x in test_file.read_text().splitlines()]
    for rec in lines:
        if rec["question"] in new_gold:
            rec["answer"] = f"rewritten\n#### {new_gold[rec['question']]}"
    test_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for rows in expected.values():
        for r in rows:
            r["gold"] = new_gold.get(r["question"], r["gold"])
            r["correct"] = gsm8k.is_correct(r["extracted"], r["gold"])
    return {"dir": run_dir, "cfg": cfg, "lora": lora, "expected": expected}


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_checkpoint_eval_matches_independent_loop(run):
    out = evaluation.evaluate_run(run["dir"], "all", baselines=True, echo=None)
    ev = run["dir"] / "eval"
    assert sorted(out["steps"]) == [0, 1, 2]  # step 0 + one entry per checkpoint
    for step in (1, 2):
        exp = run["expected"][step]
        got = _records(ev / f"step_{step}.jsonl")
        assert len(got) == N_EVAL
        for g, e in zip(got, exp):
            assert (g["question"], g["completion"], g["extracted"], g["gold"], g["correct"]) == (
                e["question"], e["completion"], e["extracted"], e["gold"], e["correct"]), step
            assert set(g) == {"question", "completion", "extracted", "gold", "correct",
                              "truncated", "empty", "repetitive", "length"}
        acc = sum(e["correct"] for e in exp) / N_EVAL
        assert out["steps"][step]["accuracy"] == pytest.approx(acc)
    assert 0 < out["steps"][2]["accuracy"] < 1  # the comparison has teeth
    # step 0 is the base model (b = 0): the adapters really change the answers
    step0 = _records(ev / "step_0.jsonl")
    assert [r["completion"] for r in step0] != [r["completion"] for r in run["expected"][2]]

    summary = json.loads((ev / "summary.json").read_text())
    assert sorted(summary["steps"], key=int) == ["0", "1", "2"]
    for e in summary["steps"].values():
        for key in ("accuracy", "ci_low", "ci_high", "n", "truncation_rate", "empty_rate",
                    "repetition_rate", "mean_length", "max_new_tokens", "status"):
            assert key in e, key
        assert e["n"] == N_EVAL and e["max_new_tokens"] == BUDGET
        assert e["ci_low"] <= e["accuracy"] <= e["ci_high"]
    curve = json.loads((ev / "curve.json").read_text())
    assert [c["step"] for c in curve] == [0, 1, 2]
    assert [c["accuracy"] for c in curve] == [out["steps"][n]["accuracy"] for n in (0, 1, 2)]

    base = json.loads((ev / "baselines.json").read_text())
    assert set(base) == {"student", "teacher", "teacher_with_context"}
    assert base["teacher_with_context"] is None  # size setup without context
    assert base["student"]["accuracy"] == out["steps"][0]["accuracy"]
    assert base["teacher"]["model"] == run["cfg"].teacher.path
    assert base["teacher"]["view"] == "student"
    assert summary["baselines"] == base == out["baselines"]
    assert "baseline: teacher" in out["table"] and "step 2" in out["table"]


def test_restore_lora_returns_the_saved_step(run):
    s = assembly.make_setup(run["cfg"])
    for step in (1, 2):
        got = evaluation.restore_lora(s, run["cfg"], run["dir"], step)
        assert got.scale == run["cfg"].lora.alpha / run["cfg"].lora.rank
        jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(got.layers),
                               jax.device_get(run["lora"][step]))
    latest = evaluation.restore_lora(s, run["cfg"], run["dir"])
    np.testing.assert_array_equal(latest.layers["q_proj"]["b"], run["lora"][2]["q_proj"]["b"])


def test_overrides_and_bad_steps(run, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(run["dir"], work)
    out = evaluation.evaluate_run(work, 0, max_new_tokens=12, n_eval=4, echo=None)
    rec = _records(work / "eval" / "step_0.jsonl")
    assert len(rec) == 4 == out["steps"][0]["n"] and out["steps"][0]["max_new_tokens"] == 12
    assert all(r["length"] <= 12 for r in rec) and any(r["length"] == 12 for r in rec)
    with pytest.raises(ValueError, match=r"no checkpoint for step 7.*\[1, 2\]"):
        evaluation.evaluate_run(work, 7, echo=None)
    with pytest.raises(ValueError, match="step"):
        evaluation.evaluate_run(work, "newest", echo=None)
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluation.evaluate_run(tmp_path / "nothing", echo=None)


def _spy(monkeypatch):
    calls = []

    def fake(model_cfg, params, lora, tokenizer, prompts_, prompt_mask, questions, golds, **kw):
        calls.append({"cfg": model_cfg, "params": params, "lora": lora, "prompts": prompts_,
                      "mask": prompt_mask, "budget": kw["max_new_tokens"]})
        recs = [evaluation.Record(q, "", None, g, False, False, True, False, 1)
                for q, g in zip(questions, golds)]
        return evaluation.summarize(recs), recs

    monkeypatch.setattr(evaluation, "evaluate_prompts", fake)
    return calls


def test_baselines_context_setup_teacher_is_base_with_context(tiny_pair, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", setup="context")
    s = assembly.make_setup(cfg)
    calls = _spy(monkeypatch)
    out = evaluation.run_baselines(cfg, tmp_path / "b" / "context.json", setup_obj=s)
    assert json.loads((tmp_path / "b" / "context.json").read_text()) == out
    assert set(out) == {"student", "teacher", "teacher_with_context"}
    assert out["teacher_with_context"] is None and out["teacher"]["view"] == "teacher"
    student, teacher = calls
    assert s.eval.teacher.shape[1] > s.eval.student.shape[1]  # the context is really there
    for call, view in ((student, "student"), (teacher, "teacher")):
        assert call["params"] is s.student_params and call["lora"] is None  # base weights, LoRA off
        np.testing.assert_array_equal(call["prompts"], getattr(s.eval, view))
        np.testing.assert_array_equal(call["mask"], getattr(s.eval, f"{view}_mask"))
        assert call["budget"] == cfg.eval.max_new_tokens


def test_baselines_size_setup_with_context(tiny_pair, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", setup="size")
    cfg.data.context = "fewshot"
    calls = _spy(monkeypatch)
    out = evaluation.run_baselines(cfg, tmp_path / "size.json", max_new_tokens=3)  # builds its setup
    assert all(out[k] is not None for k in ("student", "teacher", "teacher_with_context"))
    s = assembly.make_setup(cfg)  # memoised models: the same param objects
    student, teacher, with_context = calls
    assert student["params"] is s.student_params and student["cfg"] == s.student_cfg
    assert teacher["params"] is s.teacher_params and teacher["cfg"] == s.teacher_cfg
    assert with_context["params"] is s.teacher_params
    np.testing.assert_array_equal(student["prompts"], s.eval.student)
    np.testing.assert_array_equal(teacher["prompts"], s.eval.student)  # teacher without context
    np.testing.assert_array_equal(with_context["prompts"], s.eval.teacher)
    assert all(c["lora"] is None and c["budget"] == 3 for c in calls)
