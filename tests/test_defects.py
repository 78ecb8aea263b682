"""The study's training defects as switches, each against its definition (DESIGN §1)."""

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from cliffdistill.engine import defects, methods, update
from cliffdistill.run import loop
from cliffdistill.run import assembly
from cliffdistill.models import lora as lora_lib
from tests.tiny import tiny_run_config


@pytest.fixture(scope="module")
def pieces(tiny_pair):
    """A tiny student, an on- and an off-policy batch, perturbed adapters and a base spec."""
    s = assembly.make_setup(tiny_run_config(tiny_pair, "mixture", steps=1))
    rng = np.random.default_rng(0)
    B, G = 3, 6
    prompt, pmask = s.train.student[:B], s.train.student_mask[:B]
    comp = rng.integers(5, s.student_cfg.vocab_size, (B, G)).astype(np.int32)
    mask = np.ones((B, G), bool)
    mask[1, 4:] = False
    lp = lambda: (-rng.gamma(2.0, 1.0, (B, G))).astype(np.float32)  # noqa: E731
    batch = {"on": {"prompt": prompt, "prompt_mask": pmask, "completion": comp, "loss_mask": mask,
                    "lp_old": lp(), "lp_teacher": lp()},
             "off": {"prompt": prompt, "prompt_mask": pmask, "completion": comp[::-1].copy(),
                     "loss_mask": mask}}
    lcfg = lora_lib.LoraConfig(rank=2, alpha=4.0)
    lora = lora_lib.init_lora(s.student_cfg, lcfg, jax.random.key(0), s.student_params)
    layers = jax.tree_util.tree_map(lambda x: x + 0.02, lora.layers)  # B != 0: anchor KL > 0
    spec = update.UpdateSpec(student=s.student_cfg, teacher=s.teacher_cfg, scale=lcfg.scale,
                             has_on=True, has_off=True, has_anchor=False, on_loss="sampled_rkl",
                             off_loss="nll", shift_off=True, vocab_chunk=7, remat="none",
                             moe_impl="ragged", optim=update.OptimConfig(lr=1e-2), num_steps=0)
    return s, batch, layers, spec


def _plan(on, off, anchor):
    return {"on_weight": np.float32(on), "off_weight": np.float32(off),
            "anchor_beta": np.float32(anchor), "kl_discount": np.float32(0.0),
            "jsd_beta": np.float32(1.0)}


def _run(spec, s, layers, batch, plan):
    optimizer = update.make_optimizer(spec.optim, 1)
    fn = update.update_fn(spec)
    copy = jax.tree_util.tree_map(np.array, layers)  # update_fn donates its inputs
    return fn(copy, optimizer.init(copy), s.student_params, None, batch, plan)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_two_step_mixture_is_two_sequential_optimizer_steps(pieces):
    s, batch, layers, spec = pieces
    plan = _plan(0.7, 0.3, 0.0)
    one, _, aux_one = _run(spec, s, layers, batch, plan)
    two, _, aux_two = _run(dataclasses.replace(spec, two_step_mixture=True), s, layers, batch, plan)
    assert _max_diff(one, two) > 1e-4  # a different update than one weighted step
    # ... and exactly the definition: on-policy term first, then the off-policy term
    optimizer = update.make_optimizer(spec.optim, 1)
    cur = jax.tree_util.tree_map(np.array, layers)
    opt_state = optimizer.init(cur)
    for part in (dataclasses.replace(spec, has_off=False), dataclasses.replace(spec, has_on=False)):
        grads, _ = jax.grad(update.loss_terms, argnums=1, has_aux=True)(
            part, cur, s.student_params, None, batch, plan)
        upd, opt_state = optimizer.update(grads, opt_state, cur)
        cur = optax.apply_updates(cur, upd)
    assert _max_diff(two, cur) < 1e-6
    assert float(aux_two["loss/total"]) == pytest.approx(
        0.7 * float(aux_two["loss/on"]) + 0.3 * float(aux_two["loss/off"]), rel=1e-5)
    # the switch changes nothing on a step with only one kind of batch
    off_only = dataclasses.replace(spec, has_on=False)
    a, _, _ = _run(off_only, s, layers, batch, plan)
    b, _, _ = _run(dataclasses.replace(off_only, two_step_mixture=True), s, layers, batch, plan)
    assert _max_diff(a, b) == 0.0


def test_zero_kl_anchor_gives_the_off_policy_gradient_alone(pieces):
    s, batch, layers, spec = pieces
    off = dataclasses.replace(spec, has_on=False)
    anchored = dataclasses.replace(off, has_anchor=True)
    plan = _plan(0.0, 1.0, 0.5)
    grad = lambda sp: jax.grad(update.loss_terms, argnums=1, has_aux=True)(  # noqa: E731
        sp, layers, s.student_params, None, batch, plan)
    g_off, _ = grad(off)
    g_zero, aux_zero = grad(dataclasses.replace(anchored, zero_kl_anchor=True))
    g_anchor, aux_anchor = grad(anchored)
    assert float(aux_zero["loss/anchor"]) == pytest.approx(0.0, abs=1e-6)
    assert _max_diff(g_zero, g_off) < 1e-6
    assert float(aux_anchor["loss/anchor"]) > 1e-4  # the correct anchor is a real KL ...
    assert _max_diff(g_anchor, g_off) > 1e-5  # ... with a gradient of its own


# ----------------------------------------------------------------------------- applicability

# (defect, setup, a method it leaves alone): the factorial in cliffdistill.main skips these runs
# and reuses the correct ones, so they must be identical, not just close.
UNTOUCHED = [("unshifted_off_policy", "size", "on_policy_gkd"),
             ("on_policy_no_prompt", "size", "off_policy"),
             ("teacher_no_context", "context", "off_policy"),
             ("two_step_mixture", "size", "hybrid"),
             ("zero_kl_anchor", "size", "mixture")]


def test_defect_applicability_table():
    touched = {d: [m for m in methods.STUDY_METHODS if defects.defect_applies(d, m, "context")]
               for d in defects.TRAINING_DEFECTS}
    assert touched["unshifted_off_policy"] == ["hybrid", "mixture", "replay_buffer", "kl_anchored",
                                               "reverse_curriculum", "off_policy"]
    assert touched["zero_kl_anchor"] == ["kl_anchored"]
    assert touched["two_step_mixture"] == ["mixture", "replay_buffer"]
    assert "off_policy" not in touched["on_policy_no_prompt"]
    assert touched["teacher_no_context"] == touched["on_policy_no_prompt"]
    assert not any(defects.defect_applies("teacher_no_context", m, "size")
                   for m in methods.STUDY_METHODS)
    for defect, setup, method in UNTOUCHED:
        assert not defects.defect_applies(defect, method, setup)


def _metrics(cfg, workdir):
    loop.run(cfg, workdir, progress=False)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.parametrize("defect,setup,method", UNTOUCHED)
def test_a_defect_that_touches_no_step_leaves_the_run_identical(tiny_pair, tmp_path, defect, setup,
                                                                 method):
    cfg = tiny_run_config(tiny_pair, method, setup, steps=2)
    correct = _metrics(cfg, tmp_path / "correct")
    with cfg.unlocked():
        cfg.ablation[defect] = True
    assert _metrics(cfg, tmp_path / "defect") == correct


def test_study_eval_scores_the_first_train_questions_beside_the_held_out_eval(tiny_pair, tmp_path):
    """`ablation.study_eval` changes no training (same metrics as without it) and adds the
    study's protocol -- the first `eval.study_n` *training* questions -- to the first and the
    final eval, and with `eval.study_every` = N to every eval at a multiple of N."""
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=3)
    with cfg.unlocked():
        cfg.eval.study_n, cfg.eval.study_max_new_tokens, cfg.eval.every = 5, 6, 1
    plain = _metrics(cfg, tmp_path / "plain")
    with cfg.unlocked():
        cfg.ablation.study_eval = True
    assert _metrics(cfg, tmp_path / "study") == plain

    def evals(name):
        lines = (tmp_path / name / "eval.jsonl").read_text().splitlines()
        return {e["step"]: e for e in map(json.loads, lines)}

    got = evals("study")
    assert sorted(got) == [0, 1, 2, 3]
    assert sorted(st for st, e in got.items() if "study" in e) == [0, 3]  # first and final
    for e in got.values():
        assert e["n"] == cfg.data.n_eval  # the held-out eval is unchanged
        if "study" in e:
            assert e["study"]["n"] == 5 and 0.0 <= e["study"]["accuracy"] <= 1.0
    with cfg.unlocked():
        cfg.eval.study_every = 2
    _metrics(cfg, tmp_path / "every2")
    assert sorted(st for st, e in evals("every2").items() if "study" in e) == [0, 2, 3]
    with cfg.unlocked():
        cfg.eval.study_n = cfg.data.n_train + 1
    with pytest.raises(ValueError, match="eval.study_n"):
        assembly.validate_config(cfg)
