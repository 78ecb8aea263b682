"""The distillation engine end to end on tiny models (CPU)."""

import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliffdistill import models, stats
from cliffdistill.engine import losses, methods, sampling, scoring, update
from cliffdistill.run import loop, offpolicy, rundir
from cliffdistill.run import assembly
from cliffdistill.models import transformer
from cliffdistill.models import lora as lora_lib
from tests.tiny import tiny_run_config

ALL = sorted(methods.METHODS)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_state(s, run_dir, num_steps):
    """The run's latest checkpoint restored onto its step-0 state tree."""
    with rundir.Checkpoints(run_dir) as ckpt:
        return ckpt.restore(ckpt.latest(), assembly.init_state(s, num_steps))


def _no_time(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "mfu", "seconds"))}
            for r in records]


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["size", "context"])
def test_every_method_runs_end_to_end(tiny_pair, tmp_path, setup):
    for method in ALL:
        cfg = tiny_run_config(tiny_pair, method, setup, steps=4)
        run_dir = tmp_path / setup / method
        summary = loop.run(cfg, run_dir, progress=False)
        assert summary["state"] == "done", method
        records = _metrics(run_dir)
        assert [r["step"] for r in records] == list(range(methods.num_steps(method, cfg.schedule)))
        for r in records:
            assert np.isfinite(r["loss/total"]), (method, r)
            plan = methods.get(method, cfg.schedule)(r["step"])
            assert ("loss/on" in r) == (plan.on_weight > 0), (method, r["step"])
            assert ("loss/off" in r) == (plan.off_weight > 0), (method, r["step"])
            assert ("loss/dpo" in r) == (plan.dpo_weight > 0), (method, r["step"])
            assert r["seed_tokens"] == plan.seed_tokens
        evals = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
        n = len(records)
        expected = sorted({0, n} | set(range(cfg.eval.every, n + 1, cfg.eval.every)))
        assert [e["step"] for e in evals] == expected
        assert all(e["status"] in stats.STATUSES for e in evals)
        assert (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
        assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


def test_mixture_is_one_update_on_the_weighted_sum(tiny_pair, tmp_path):
    cfg = tiny_run_config(tiny_pair, "mixture", steps=2)
    loop.run(cfg, tmp_path / "m", progress=False)
    for r in _metrics(tmp_path / "m"):
        assert r["loss/total"] == pytest.approx(0.7 * r["loss/on"] + 0.3 * r["loss/off"], rel=1e-5)


def test_teacher_samples_are_cached_and_shared(tiny_pair, tmp_path):
    for method, seed in (("hybrid", 0), ("mixture", 1)):
        cfg = tiny_run_config(tiny_pair, method, steps=1)
        cfg.seed = seed
        loop.run(cfg, tmp_path / "runs" / f"{method}{seed}", progress=False)
    cached = list((tmp_path / "runs" / "offpolicy_cache").glob("teacher_samples_*.npz"))
    assert len(cached) == 1  # one teacher-sample set for both methods and seeds


def test_teacher_samples_per_run_seed(tiny_pair, tmp_path):
    """off_policy.per_run_seed: each run seed draws its own samples (a different set), shared
    by the methods run with that seed."""
    for method, seed in (("hybrid", 0), ("mixture", 1), ("off_policy", 1)):
        cfg = tiny_run_config(tiny_pair, method, steps=1)
        cfg.seed, cfg.off_policy.per_run_seed = seed, True
        assert offpolicy.sample_seed_of(cfg) == cfg.off_policy.seed + seed
        loop.run(cfg, tmp_path / "runs" / f"{method}{seed}", progress=False)
    cached = sorted((tmp_path / "runs" / "offpolicy_cache").glob("teacher_samples_*.npz"))
    assert len(cached) == 2  # seeds 0 and 1; mixture and off_policy share seed 1's
    a, b = (np.load(f) for f in cached)
    assert not np.array_equal(a["tokens"], b["tokens"])


def test_step0_eval_is_computed_once_and_shared(tiny_pair, tmp_path):
    """Runs of one setup share the step-0 eval (the base student's): the second run reads what the
    first computed -- equal to computing it (a run with the cache off) -- and adapters that are
    not the zero update get no cache file."""
    def step0(method, seed, parent, cache_dir=""):
        cfg = tiny_run_config(tiny_pair, method, steps=1)
        cfg.seed, cfg.eval.step0_cache_dir = seed, cache_dir
        loop.run(cfg, parent / f"{method}{seed}", progress=False)
        return _no_time([json.loads((parent / f"{method}{seed}" / "eval.jsonl").read_text()
                                    .splitlines()[0])])[0]

    first = step0("hybrid", 0, tmp_path / "a")
    files = list((tmp_path / "a" / "eval_cache").glob("step0_*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert step0("on_policy_gkd", 1, tmp_path / "a") == first
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert step0("on_policy_gkd", 1, tmp_path / "b", cache_dir="none") == first
    assert not (tmp_path / "b" / "eval_cache").exists()

    s = assembly.make_setup(tiny_run_config(tiny_pair, "hybrid", steps=1))
    lora = assembly.init_state(s, 1)["lora"]
    assert loop.step0_cache_file(s, tmp_path / "c" / "run", lora) is not None
    moved = jax.tree_util.tree_map(lambda x: x + 1e-3, lora)
    assert loop.step0_cache_file(s, tmp_path / "c" / "run", moved) is None


def _train_loss_pieces(tiny_pair, shift):
    """The trainer's off-policy loss term vs the dense reference `losses.off_policy_nll`."""
    cfg = tiny_run_config(tiny_pair, "hybrid", steps=1)
    s = assembly.make_setup(cfg)
    prompt, pmask = s.train.student[:3], s.train.student_mask[:3]
    rng = np.random.default_rng(0)
    comp = rng.integers(5, s.student_cfg.vocab_size, (3, 6)).astype(np.int32)
    cmask = np.ones((3, 6), bool)
    cmask[1, 4:] = False
    spec = update.UpdateSpec(student=s.student_cfg, teacher=s.teacher_cfg, scale=2.0, has_on=False,
                            has_off=True, has_anchor=False, on_loss="sampled_rkl", off_loss="nll",
                            shift_off=shift, vocab_chunk=7, remat=False,
                            moe_impl="ragged", optim=update.OptimConfig(), num_steps=1)
    lcfg = lora_lib.LoraConfig(rank=2, alpha=4.0)
    lora = lora_lib.init_lora(s.student_cfg, lcfg, jax.random.key(0), s.student_params)
    layers = jax.tree_util.tree_map(lambda x: x + 0.01, lora.layers)
    batch = {"off": {"prompt": prompt, "prompt_mask": pmask, "completion": comp, "loss_mask": cmask}}
    plan = {"on_weight": 0.0, "off_weight": 1.0, "anchor_beta": 0.0, "kl_discount": 0.0,
            "jsd_beta": 1.0}
    got, _ = update.loss_terms(spec, layers, s.student_params, None, batch, plan)
    seq = np.concatenate([prompt, comp], 1)
    logits = transformer.apply(s.student_cfg, s.student_params, seq,
                               lora_lib.LoraParams(layers, 2.0),
                               mask=np.concatenate([pmask, np.ones_like(cmask)], 1))
    full_mask = np.concatenate([np.zeros_like(pmask), cmask], 1)
    ref = losses.off_policy_nll(logits, seq, full_mask, shift=shift)
    return float(got), float(ref)


@pytest.mark.parametrize("shift", [True, False])
def test_trainer_off_policy_loss_equals_reference_nll(tiny_pair, shift):
    got, ref = _train_loss_pieces(tiny_pair, shift)
    assert got == pytest.approx(ref, abs=1e-5)


def test_cutting_padding_columns_changes_only_rounding(tiny_pair):
    """What `rollout.trim_multiple` relies on: the teacher's scores and the update's loss and
    gradients of a batch equal, to float rounding, those of the same batch with extra all-padding
    columns -- prompt padding on the left, completion padding on the right."""
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", setup="context", steps=1)
    s = assembly.make_setup(cfg)
    rng = np.random.default_rng(0)
    B, G, extra = 4, 6, 5
    comp = rng.integers(5, s.student_cfg.vocab_size, (B, G)).astype(np.int32)
    cmask = np.ones((B, G), bool)
    cmask[1, 3:] = cmask[2, 5:] = False
    lp_old = np.where(cmask, -rng.random((B, G)), 0.0).astype(np.float32)

    def widen(prompt, pmask, completion, mask, fill):
        """`extra` more pad columns left of the prompt and right of the completion."""
        pad = np.full((B, extra), s.pad_id, np.int32)
        return (np.concatenate([pad, prompt], 1),
                np.concatenate([np.zeros((B, extra), bool), pmask], 1),
                np.concatenate([completion, pad], 1),
                np.concatenate([mask, np.full((B, extra), fill, mask.dtype)], 1))

    def teacher_scores(prompt, pmask, completion, mask):
        return np.asarray(scoring.score(s.teacher_cfg, s.teacher_params, prompt, pmask,
                                        completion, mask, vocab_chunk=7))

    t_view = (s.train.teacher[:B], s.train.teacher_mask[:B])
    lp_t = teacher_scores(*t_view, comp, cmask)
    lp_t_wide = teacher_scores(*widen(*t_view, comp, cmask, False))
    np.testing.assert_allclose(lp_t_wide[:, :G], lp_t, rtol=1e-5, atol=1e-5)
    assert not lp_t_wide[:, G:].any()

    spec = update.UpdateSpec(student=s.student_cfg, teacher=s.teacher_cfg, scale=2.0, has_on=True,
                             has_off=True, has_anchor=True, on_loss="sampled_rkl", off_loss="nll",
                             shift_off=True, vocab_chunk=7, remat=False, moe_impl="ragged",
                             optim=update.OptimConfig(), num_steps=1)
    lora = lora_lib.init_lora(s.student_cfg, lora_lib.LoraConfig(rank=2, alpha=4.0),
                              jax.random.key(0), s.student_params)
    layers = jax.tree_util.tree_map(lambda x: x + 0.01, lora.layers)
    plan = update.plan_arrays(methods.StepPlan(on_weight=0.7, off_weight=0.3, anchor_beta=0.1),
                              kl_discount=0.0, jsd_beta=1.0, dpo_beta=0.1,
                              confidence_temperature=1.0)
    s_view = (s.train.student[:B], s.train.student_mask[:B])

    def loss_and_grads(prompt, pmask, completion, mask, lp_o, lp_te):
        on = {"prompt": prompt, "prompt_mask": pmask, "completion": completion, "loss_mask": mask,
              "lp_old": lp_o, "lp_teacher": lp_te}
        off = {k: on[k] for k in ("prompt", "prompt_mask", "completion", "loss_mask")}
        (loss, _), grads = jax.value_and_grad(update.loss_terms, argnums=1, has_aux=True)(
            spec, layers, s.student_params, None, {"on": on, "off": off}, plan)
        return float(loss), grads

    loss, grads = loss_and_grads(*s_view, comp, cmask, lp_old, lp_t)
    wide = widen(*s_view, comp, cmask, False)
    pad_g = lambda x: np.concatenate([x, np.zeros((B, extra), x.dtype)], 1)  # noqa: E731
    loss_w, grads_w = loss_and_grads(*wide, pad_g(lp_old), pad_g(lp_t))
    assert loss_w == pytest.approx(loss, rel=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           grads_w, grads)


def test_trim_completions_cuts_the_columns_every_row_pads():
    B, G = 3, 16
    mask = np.zeros((B, G), bool)
    mask[0, :5], mask[1, :9], mask[2, :2] = True, True, True
    toks = np.where(mask, np.arange(1, G + 1), 0).astype(np.int32)
    out = sampling.GenerateOutput(tokens=jnp.asarray(toks), mask=jnp.asarray(mask),
                                  student_mask=jnp.asarray(mask),
                                  logprobs=jnp.asarray(np.where(mask, -0.5, 0.0), jnp.float32),
                                  lengths=jnp.asarray(mask.sum(1), jnp.int32),
                                  finished=jnp.ones((B,), bool), truncated=jnp.zeros((B,), bool))
    cut = loop.trim_completions(out, 4)  # longest row 9 -> 12 columns
    assert cut.tokens.shape == cut.mask.shape == cut.student_mask.shape == cut.logprobs.shape == (B, 12)
    np.testing.assert_array_equal(cut.tokens, toks[:, :12])
    np.testing.assert_array_equal(cut.mask, mask[:, :12])
    assert cut.lengths is out.lengths and cut.finished is out.finished
    assert loop.trim_completions(out, 0) is out  # 0: the static bucket is kept
    assert loop.trim_completions(out, 32).tokens.shape == (B, G)  # never past the bucket


def test_trim_multiple_pads_prompt_views_to_a_multiple(tiny_pair):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", setup="context", steps=1)
    wide = assembly.make_setup(cfg).train
    cfg.rollout.trim_multiple = 8
    narrow = assembly.make_setup(cfg).train
    for view in ("student", "teacher"):
        w, n = getattr(wide, view), getattr(narrow, view)
        longest = int(getattr(narrow, f"{view}_mask").sum(1).max())
        assert n.shape[1] == min(w.shape[1], -(-longest // 8) * 8)
        np.testing.assert_array_equal(n, w[:, w.shape[1] - n.shape[1]:])  # left padding cut


# ----------------------------------------------------------------------------- objectives


@pytest.fixture(scope="module")
def tiny_setup(tiny_pair):
    """One setup (mesh, views, models) for runs that differ only in method or loss options."""
    return assembly.make_setup(tiny_run_config(tiny_pair))


def _run(tiny_setup, cfg, run_dir):
    return loop.run(cfg, run_dir, setup_obj=dataclasses.replace(tiny_setup, cfg=cfg),
                     progress=False)


def _finite_losses(records):
    for r in records:
        losses_ = {k: v for k, v in r.items() if k.startswith("loss/")}
        assert losses_ and all(np.isfinite(v) for v in losses_.values()), r


@pytest.mark.parametrize("method", methods.EXTENSION_METHODS)
def test_extension_method_trains_its_adapters(tiny_pair, tiny_setup, tmp_path, method):
    cfg = tiny_run_config(tiny_pair, method, steps=2)
    s = dataclasses.replace(tiny_setup, cfg=cfg)
    assert _run(tiny_setup, cfg, tmp_path / method)["state"] == "done"
    records = _metrics(tmp_path / method)
    _finite_losses(records)
    for r in records:
        plan = methods.get(method, cfg.schedule)(r["step"])
        assert ("loss/dpo" in r) == (plan.dpo_weight > 0) and ("loss/on" in r) == (plan.on_weight > 0)
        assert ("confidence/weight_max" in r) == plan.confidence_weighted
        if plan.dpo_weight > 0:  # K=2 samples of batch_size/2 prompts: 2 pairs, all trained on
            assert 0.0 <= r["dpo/tie_rate"] <= 1.0
            assert r["tokens/trained"] == r["tokens/sampled"] or r["dpo/tie_rate"] > 0
    before = assembly.init_state(s, 2)["lora"]
    after = _final_state(s, tmp_path / method, 2)["lora"]
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after))]
    assert any(changed), f"{method}: no LoRA parameter moved"


@pytest.mark.parametrize("method", ["on_policy_gkd", "hybrid", "mixture", "reward_weighted_gkd"])
def test_full_vocab_jsd_is_the_on_policy_objective_of_any_method(tiny_pair, tiny_setup, tmp_path,
                                                                   method):
    """loss.on_policy="jsd" trains end to end at beta 0 (forward KL), 0.5 and 1 (reverse KL)."""
    first_on = {}
    for beta in (0.0, 0.5, 1.0):
        cfg = tiny_run_config(tiny_pair, method, steps=2)
        cfg.loss.on_policy, cfg.loss.jsd_beta = "jsd", beta
        assert _run(tiny_setup, cfg, tmp_path / str(beta))["state"] == "done"
        records = _metrics(tmp_path / str(beta))
        _finite_losses(records)
        on = [r["loss/on"] for r in records if "loss/on" in r]
        assert on and all(v >= -1e-6 for v in on)  # a divergence
        first_on[beta] = on[0]
    # the first on-policy step sees the same adapters and rollout at every beta: beta decides
    assert len({round(v, 7) for v in first_on.values()}) == 3, first_on


def test_trainer_dpo_term_uses_the_lora_off_reference(tiny_pair, tiny_setup):
    """update.loss_terms' DPO term vs log-probs scored separately with LoRA on and off."""
    s = tiny_setup
    rows = np.array([0, 1, 0, 1])  # 2 pairs: chosen rows 0-1, rejected rows 2-3
    prompt, pmask = s.train.student[rows], s.train.student_mask[rows]
    comp = np.random.default_rng(1).integers(5, s.student_cfg.vocab_size, (4, 6)).astype(np.int32)
    cmask = np.ones((4, 6), bool)
    cmask[2, 3:] = False
    valid = np.array([True, False])  # the second pair is a tie: left out
    spec = update.UpdateSpec(student=s.student_cfg, teacher=s.teacher_cfg, scale=2.0, has_on=False,
                            has_off=False, has_anchor=False, has_dpo=True, on_loss="sampled_rkl",
                            off_loss="nll", shift_off=True, vocab_chunk=7, remat=False,
                            moe_impl="ragged", optim=update.OptimConfig(), num_steps=1)
    lora = lora_lib.init_lora(s.student_cfg, lora_lib.LoraConfig(rank=2, alpha=4.0),
                              jax.random.key(0), s.student_params)
    layers = jax.tree_util.tree_map(lambda x: x + 0.01, lora.layers)
    batch = {"dpo": {"prompt": prompt, "prompt_mask": pmask, "completion": comp,
                     "loss_mask": cmask, "valid": valid}}
    plan = {"dpo_weight": np.float32(2.0), "dpo_beta": np.float32(0.5)}
    got, aux = jax.jit(update.loss_terms, static_argnums=0)(spec, layers, s.student_params, None,
                                                            batch, plan)
    seq = {}
    for name, l in (("policy", lora_lib.LoraParams(layers, 2.0)), ("ref", None)):
        lp = np.asarray(scoring.score(s.student_cfg, s.student_params, prompt, pmask, comp, cmask,
                                      l, vocab_chunk=7), np.float64)
        seq[name] = (lp * cmask).sum(-1)  # [4]
    z = 0.5 * ((seq["policy"][:2] - seq["ref"][:2]) - (seq["policy"][2:] - seq["ref"][2:]))
    assert abs(z[0]) > 1e-4  # the adapters moved the policy away from the reference
    want = np.log1p(np.exp(-z[0]))  # pair 0 only
    assert float(aux["loss/dpo"]) == pytest.approx(want, abs=1e-5)
    assert float(got) == pytest.approx(2.0 * want, abs=1e-5)


def test_on_policy_learning_lowers_reverse_kl(tiny_pair, tmp_path):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=30)
    cfg.optim.lr = 3e-2
    cfg.lora.rank, cfg.lora.alpha = 8, 16.0
    cfg.rollout.batch_size = 8
    cfg.eval.every = 1000
    s = assembly.make_setup(cfg)

    def held_out_kl(lora):
        """Sampled KL(student || teacher) on held-out (eval) prompts, fixed key."""
        out = sampling.generate_arrays(
            s.student_cfg, s.student_params, lora, s.eval.student, s.eval.student_mask,
            jax.random.key(123), jnp.arange(s.eval.student.shape[0]),
            sampling.SamplingParams.of(8), gen_len=8, eos_ids=s.eos_ids, pad_id=s.pad_id)
        lp_t = scoring.score(s.teacher_cfg, s.teacher_params, s.eval.teacher, s.eval.teacher_mask,
                             out.tokens, out.mask)
        m = np.asarray(out.mask)
        return float(((np.asarray(out.logprobs) - np.asarray(lp_t)) * m).sum() / m.sum())

    before = held_out_kl(None)
    loop.run(cfg, tmp_path / "r", setup_obj=s, progress=False)
    restored = _final_state(s, tmp_path / "r", 30)
    after = held_out_kl(lora_lib.LoraParams(restored["lora"], models.LoraConfig.from_section(cfg.lora).scale))
    assert after < 0.7 * before, (before, after)


def test_resume_after_sigterm_is_exact(tiny_pair, tmp_path):
    cfg = tiny_run_config(tiny_pair, "mixture", steps=6)
    cfg.checkpoint.every, cfg.eval.every = 100, 2
    loop.run(cfg, tmp_path / "straight", progress=False)

    def preempt(step, _):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(loop.Preempted, match="step 3"):
        loop.run(cfg, tmp_path / "resumed", step_hook=preempt, progress=False)
    status = json.loads((tmp_path / "resumed" / "status.json").read_text())
    assert status["state"] == "preempted" and status["final_step"] == 3
    loop.run(cfg, tmp_path / "resumed", progress=False)

    def final_state(d):
        return _final_state(assembly.make_setup(cfg), d, 6)

    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _no_time(_metrics(tmp_path / "straight")) == _no_time(_metrics(tmp_path / "resumed"))
    evals = lambda d: _no_time([json.loads(x) for x in (d / "eval.jsonl").read_text().splitlines()])  # noqa: E731
    assert evals(tmp_path / "straight") == evals(tmp_path / "resumed")


def test_sharded_update_equals_single_device(tiny_pair, tmp_path):
    assert len(jax.devices()) == 8
    finals = {}
    for name, mesh in (("single", dict(data=1, fsdp=1, tensor=1)),
                       ("sharded", dict(data=2, fsdp=2, tensor=2))):
        cfg = tiny_run_config(tiny_pair, "mixture", steps=2)
        cfg.mesh.update(mesh)
        loop.run(cfg, tmp_path / name, progress=False)
        s = assembly.make_setup(cfg)
        st = _final_state(s, tmp_path / name, 2)
        finals[name] = st
        if name == "sharded":
            q = s.student_params["layers"]["q_proj"]
            assert len(q.sharding.device_set) == 8
    for x, y in zip(jax.tree_util.tree_leaves(finals["single"]["lora"]),
                    jax.tree_util.tree_leaves(finals["sharded"]["lora"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)
    m1, m2 = _metrics(tmp_path / "single"), _metrics(tmp_path / "sharded")
    for a, b in zip(m1, m2):
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)


# ----------------------------------------------------------------------------- bad config


def _expect(cfg, match):
    with pytest.raises(ValueError, match=match):
        assembly.validate_config(cfg)
        assembly.make_setup(cfg)


def test_error_unknown_method(tiny_pair):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd")
    cfg.method = "on_policy_gdk"
    _expect(cfg, r"on_policy_gdk.*`method`.*hybrid")


def test_error_vocab_mismatch(tiny_pair, tmp_path):
    import shutil

    bad = tmp_path / "teacher"
    shutil.copytree(tiny_pair["teacher"], bad)
    hf = json.loads((bad / "config.json").read_text())
    hf["vocab_size"] += 1
    (bad / "config.json").write_text(json.dumps(hf))
    from cliffdistill.data import toy_tokenizer  # a different tokenizer: different merges
    size = len(toy_tokenizer.SPECIAL_TOKENS) + 97 + 20
    toy_tokenizer.save_tokenizer(toy_tokenizer.train_tokenizer(["zz qq 12 + 34 = 46"] * 20, size), bad)
    cfg = tiny_run_config(tiny_pair)
    cfg.teacher.path = str(bad)
    _expect(cfg, "teacher/student tokenizer mismatch")  # (same tokenizer, padded: tests/test_vocab.py)


def test_error_dpo_samples_must_divide_the_batch(tiny_pair):
    cfg = tiny_run_config(tiny_pair, "dpo_teacher")
    cfg.schedule.dpo_samples = 3
    _expect(cfg, r"`schedule.dpo_samples`=3 does not divide `rollout.batch_size`=4")
    cfg.method = "on_policy_gkd"  # a method that never samples K per prompt does not care
    assembly.validate_config(cfg)
    cfg.method, cfg.schedule.dpo_samples = "dpo_teacher", 1
    _expect(cfg, r"`dpo_samples`=1 is invalid: must be >= 2")


def test_error_passage_context_needs_its_text(tiny_pair):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", "context")
    cfg.data.context = "passage"
    _expect(cfg, r"data.context='passage' needs the retrieved text in `data.passage`")
    cfg.data.passage = "1 zorp = 5."
    assembly.validate_config(cfg)


def test_error_mesh_bigger_than_devices(tiny_pair):
    cfg = tiny_run_config(tiny_pair)
    cfg.mesh.data, cfg.mesh.tensor = 4, 4
    _expect(cfg, r"`mesh`.*needs 16 devices")


def test_error_batch_not_divisible(tiny_pair):
    cfg = tiny_run_config(tiny_pair)
    cfg.mesh.data = 8
    _expect(cfg, r"`rollout.batch_size`=4 is not divisible")


def test_error_prompt_longer_than_cache(tiny_pair):
    cfg = tiny_run_config(tiny_pair)
    cfg.rollout.max_prompt_len = 5
    _expect(cfg, r"longer than the KV cache.*`rollout.max_prompt_len`")


def test_nan_loss_halts_with_step_and_diagnostics(tiny_pair, tmp_path):
    cfg = tiny_run_config(tiny_pair, "hybrid", steps=4)
    cfg.optim.lr = 1e30  # valid (lr > 0, finite), but the first update blows the adapters up
    with pytest.raises(FloatingPointError, match=r"non-finite values at step 1 .*loss/total"):
        loop.run(cfg, tmp_path / "nan", progress=False)
    status = json.loads((tmp_path / "nan" / "status.json").read_text())
    assert status["state"] == "failed" and "step 1" in status["error"]


def test_relative_workdir(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=2)
    assert loop.run(cfg, "relative/run", progress=False)["state"] == "done"
    assert (tmp_path / "relative" / "run" / "checkpoints").is_dir()


def test_match_widths_pads_the_narrower_batch_and_a_mixed_update_compiles_once_per_width(tiny_pair):
    """`rollout.match_update_widths`: the step's on- and off-policy batches are padded on the right
    to the wider one's width (padding: pad id, mask False, 0), so width pairs (6, 4), (4, 6), (6, 6)
    share one compiled update where unmatched each pair needs its own."""
    s = assembly.make_setup(tiny_run_config(tiny_pair, "mixture", steps=1))
    rng = np.random.default_rng(0)
    B = 2
    prompt, pmask = s.train.student[:B], s.train.student_mask[:B]

    def part(g, on):
        comp = rng.integers(5, s.student_cfg.vocab_size, (B, g)).astype(np.int32)
        b = {"prompt": prompt, "prompt_mask": pmask, "completion": comp,
             "loss_mask": np.ones((B, g), bool)}
        if on:
            b.update(lp_old=np.full((B, g), -1.0, np.float32),
                     lp_teacher=np.full((B, g), -2.0, np.float32))
        return {k: jnp.asarray(v) for k, v in b.items()}

    on, off = part(6, True), part(4, False)
    got = loop.match_widths({"on": on, "off": off}, s.pad_id)
    assert got["on"] is on  # the wider batch is untouched
    np.testing.assert_array_equal(got["off"]["completion"][:, :4], off["completion"])
    assert (np.asarray(got["off"]["completion"][:, 4:]) == s.pad_id).all()
    assert got["off"]["loss_mask"].shape == (B, 6) and not np.asarray(got["off"]["loss_mask"][:, 4:]).any()
    assert got["off"]["prompt"] is off["prompt"]  # prompts keep their own width
    alone = {"off": off}
    assert loop.match_widths(alone, s.pad_id)["off"] is off  # one batch: nothing to match

    spec = update.UpdateSpec(student=s.student_cfg, teacher=s.teacher_cfg, scale=2.0, has_on=True,
                             has_off=True, has_anchor=False, on_loss="sampled_rkl", off_loss="nll",
                             shift_off=True, vocab_chunk=7, remat="none", moe_impl="ragged",
                             optim=update.OptimConfig(lr=1.25e-3), num_steps=0)
    plan = update.plan_arrays(methods.StepPlan(on_weight=0.3, off_weight=0.7), kl_discount=0.0,
                              jsd_beta=1.0, dpo_beta=0.1, confidence_temperature=1.0)

    def new_compiles(match):
        """Programs compiled for width pairs (6, 4) and (4, 6) after a step at (6, 6)."""
        fn = update.update_fn(spec)
        state = update.init_state(s.student_cfg, s.student_params, lora_lib.LoraConfig(2, 4.0),
                                  s.mesh, update.make_optimizer(spec.optim, 1), seed=0,
                                  lora_dtype="float32", replay_capacity=1)
        layers, opt, before = state["lora"], state["opt_state"], None
        for g_on, g_off in ((6, 6), (6, 4), (4, 6)):
            batch = {"on": part(g_on, True), "off": part(g_off, False)}
            batch = loop.match_widths(batch, s.pad_id) if match else batch
            layers, opt, _ = fn(layers, opt, s.student_params, None, batch, plan)
            before = fn._cache_size() if before is None else before
        return fn._cache_size() - before

    assert new_compiles(True) == 0
    assert new_compiles(False) == 2
