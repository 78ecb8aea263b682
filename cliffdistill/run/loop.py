"""The distillation trainer: the loop plan -> rollout -> score -> update -> record/eval/checkpoint.

    python -m cliffdistill.train --config configs/qwen_size.py --workdir DIR [--config.method=hybrid]

Every method is a schedule (`cliffdistill.engine.methods`) that only decides the numbers of a
`StepPlan`; this file never branches on the method's name. Each phase of a step is one named
function below (`rollout`, `score`, `preference_batch`, `off_policy_batch`, `update_step`,
`record`); `run` is the loop that calls them. Setup (config checks, views, models) is
`cliffdistill.run.assembly`, the jitted update `cliffdistill.engine.update`, the teacher-sample cache and
replay buffer `cliffdistill.run.offpolicy`, the run directory's files and checkpoints
`cliffdistill.rundir`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from cliffdistill import stats
from cliffdistill.engine import losses, methods, sampling, scoring
from cliffdistill.run import (benchmarks, distributed, evaluation, integrity, lock, offpolicy,
                              rundir, validation)
from cliffdistill.engine import update
from cliffdistill.data import prompts
from cliffdistill.models import flops as flops_lib
from cliffdistill.models import sharding, transformer
from cliffdistill.models.lora import LoraConfig, LoraParams
from cliffdistill.run.rundir import Preempted  # noqa: F401  (raised here; part of train's API)
from cliffdistill.run.assembly import Setup, init_state, make_setup, optim_config

log = logging.getLogger(__name__)


def _masked_mean(x: np.ndarray, m: np.ndarray) -> float:
    return float((x * m).sum() / max(m.sum(), 1))


@dataclasses.dataclass
class Context:
    """What every step of one run shares: setup, schedule facts, off-policy data, cost model."""

    s: Setup
    uses: methods.PlanSummary
    gen_len: int  # G: static generation bucket
    seed_len: int  # static teacher-seed bucket (0 when the schedule never seeds)
    off_tokens: np.ndarray | None  # [N, G_off] cached teacher samples
    off_mask: np.ndarray | None
    teacher_unembed: jax.Array | None  # [D, V] for full-vocab losses
    flops_per_token: tuple[float, float]  # (student, teacher) forward FLOPs per token

    @property
    def cfg(self) -> ml_collections.ConfigDict:
        return self.s.cfg

    def put(self, x: np.ndarray) -> jax.Array:
        return sharding.put_batch(x, self.s.mesh)


@dataclasses.dataclass
class StepLog:
    """What one step records: metrics, seconds per phase, token counts and FLOPs."""

    metrics: dict[str, Any]
    seconds: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"rollout": 0.0, "score": 0.0, "update": 0.0})
    tokens: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"sampled": 0, "scored": 0, "trained": 0})
    flops: float = 0.0

    @classmethod
    def start(cls, step: int, plan: methods.StepPlan) -> StepLog:
        return cls({"step": step, "seed_tokens": plan.seed_tokens,
                    "plan/on_weight": plan.on_weight, "plan/off_weight": plan.off_weight,
                    "plan/anchor_beta": plan.anchor_beta, "plan/dpo_weight": plan.dpo_weight})

    def finish(self, step_seconds: float, peak_flops: float | None, n_devices: int) -> dict:
        m = dict(self.metrics)
        m.update({f"time/{k}": v for k, v in self.seconds.items()})
        m.update({f"tokens/{k}": v for k, v in self.tokens.items()})
        m["flops"] = self.flops
        m["time/step"] = step_seconds
        if peak_flops:
            m["mfu"] = self.flops / max(step_seconds, 1e-9) / (peak_flops * n_devices)
        return m


def make_context(s: Setup, workdir: epath.Path) -> Context:
    cfg, uses = s.cfg, s.plan
    off_tokens = off_mask = None
    if uses.off:
        cache_dir = epath.Path(cfg.off_policy.cache_dir or (workdir.parent / "offpolicy_cache"))
        t0 = time.time()
        off_tokens, off_mask = offpolicy.teacher_samples(s, cache_dir)
        log.info("teacher samples ready (%d, %.1fs)", len(off_tokens), time.time() - t0)
    full_vocab = cfg.loss.on_policy == "jsd" or cfg.loss.off_policy == "forward_kl"
    return Context(
        s=s, uses=uses, gen_len=prompts.bucket_length(cfg.rollout.max_new_tokens, 1),
        seed_len=prompts.bucket_length(cfg.schedule.seed_max_tokens, 1) if uses.seed else 0,
        off_tokens=off_tokens, off_mask=off_mask,
        teacher_unembed=(transformer.unembed_matrix(s.teacher_cfg, s.teacher_params)
                         if full_vocab else None),
        flops_per_token=(2 * flops_lib.active_params(s.student_cfg),
                         2 * flops_lib.active_params(s.teacher_cfg)))


# ============================================================================ the phases of a step


def rollout(c: Context, lora: LoraParams, plan: methods.StepPlan, prompt_idx: np.ndarray,
            rows: np.ndarray, key: jax.Array, log_: StepLog) -> sampling.GenerateOutput:
    """The student samples a completion per row (teacher-seeded when the plan says so)."""
    s, r = c.s, c.cfg.rollout
    t0 = time.time()
    sp = sampling.SamplingParams.of(r.max_new_tokens, r.temperature, r.top_k, r.top_p)
    static = dict(gen_len=c.gen_len, eos_ids=s.eos_ids, pad_id=s.pad_id, moe_impl=c.cfg.moe_impl)
    student = (c.put(s.train.student[prompt_idx]), c.put(s.train.student_mask[prompt_idx]))
    if c.uses.seed:
        teacher = (c.put(s.train.teacher[prompt_idx]), c.put(s.train.teacher_mask[prompt_idx]))
        out = sampling.teacher_seeded_arrays(
            s.student_cfg, s.student_params, lora, s.teacher_cfg, s.teacher_params, None,
            *student, *teacher, key, c.put(rows), jnp.asarray(plan.seed_tokens, jnp.int32), sp,
            seed_len=c.seed_len, **static)
    else:
        out = sampling.generate_arrays(s.student_cfg, s.student_params, lora, *student, key,
                                       c.put(rows), sp, **static)
    out = trim_completions(jax.block_until_ready(out), c.cfg.rollout.trim_multiple)
    log_.seconds["rollout"] = time.time() - t0
    return out


def trim_completions(out: sampling.GenerateOutput, multiple: int) -> sampling.GenerateOutput:
    """The rollout's [B, G] fields cut to its longest row rounded up to `multiple` (0: kept
    whole), so scoring and the update skip the columns that are padding in every row."""
    G = out.tokens.shape[1]
    g = prompts.trimmed_length(int(sharding.to_host(out.mask).sum(-1).max()), multiple, G)
    if g == G:
        return out
    return out._replace(tokens=out.tokens[:, :g], mask=out.mask[:, :g],
                        student_mask=out.student_mask[:, :g], logprobs=out.logprobs[:, :g])


#: The fields of an update batch that run over its completion columns ([B, G] or [B, G, D]).
COMPLETION_FIELDS = ("completion", "loss_mask", "lp_old", "lp_teacher", "teacher_h")


def match_widths(batch: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """The step's on- and off-policy batches padded on the right to one completion width (the
    wider of the two), so an update that has both compiles once per width instead of once per
    pair of widths (`rollout.match_update_widths`). Padding is masked out: the loss changes only
    by float rounding (`test_cutting_padding_columns_changes_only_rounding`)."""
    parts = [k for k in ("on", "off") if k in batch]
    g = max((batch[k]["completion"].shape[1] for k in parts), default=0)
    out = dict(batch)
    for k in parts:
        extra = g - batch[k]["completion"].shape[1]
        if extra:
            out[k] = {name: (jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2),
                                     constant_values=pad_id if name == "completion" else 0)
                             if name in COMPLETION_FIELDS else x)
                      for name, x in batch[k].items()}
    return out


def score(c: Context, out: sampling.GenerateOutput, plan: methods.StepPlan,
          prompt_idx: np.ndarray, log_: StepLog) -> dict[str, Any]:
    """The teacher scores the rollout under its own prompt view; returns the on-policy batch
    (also the input of `preference_batch`)."""
    s, cfg = c.s, c.cfg
    t0 = time.time()
    sp, sm = c.put(s.train.student[prompt_idx]), c.put(s.train.student_mask[prompt_idx])
    # The teacher sees its own view (context setup: context + question) unless the study's
    # defect is switched on.
    t_view = ((sp, sm) if cfg.ablation.teacher_no_context else
              (c.put(s.train.teacher[prompt_idx]), c.put(s.train.teacher_mask[prompt_idx])))
    lp_t = scoring.score(s.teacher_cfg, s.teacher_params, *t_view, out.tokens, out.mask,
                         vocab_chunk=cfg.loss.vocab_chunk, moe_impl=cfg.moe_impl)
    on = {"prompt": sp, "prompt_mask": sm, "completion": out.tokens,
          "loss_mask": out.student_mask, "lp_old": out.logprobs, "lp_teacher": lp_t}
    if cfg.loss.on_policy == "jsd" and plan.on_weight > 0:
        on["teacher_h"] = update.teacher_hidden(s.teacher_cfg, s.teacher_params, *t_view,
                                                    out.tokens, moe_impl=cfg.moe_impl)
    if cfg.ablation.on_policy_no_prompt:
        # The study's defect: the student's forward pass without the prompt (a lone pad token
        # stands in for it).
        on["prompt"] = c.put(np.full((len(prompt_idx), 1), s.pad_id, np.int32))
        on["prompt_mask"] = c.put(np.ones((len(prompt_idx), 1), bool))
    jax.block_until_ready(lp_t)
    log_.seconds["score"] = time.time() - t0
    _rollout_metrics(c, out, lp_t, t_view[1], plan, log_)
    return on


def _rollout_metrics(c: Context, out: sampling.GenerateOutput, lp_t: jax.Array,
                     teacher_mask: jax.Array, plan: methods.StepPlan, log_: StepLog) -> None:
    """Host-side rollout diagnostics, token counts and FLOPs of rollout + scoring."""
    toks, lens = sharding.to_host(out.tokens), sharding.to_host(out.lengths)
    smask = sharding.to_host(out.student_mask).astype(np.float32)
    lp_old, lp_T = sharding.to_host(out.logprobs), sharding.to_host(lp_t)
    empty, rep = evaluation.completion_flags(toks, lens, c.s.eos_ids)
    n_tok = int(sharding.to_host(out.mask).sum())
    log_.metrics.update({
        "teacher_score": _masked_mean(lp_T, smask),
        "reverse_kl": _masked_mean(lp_old - lp_T, smask),
        "entropy": _masked_mean(-lp_old, smask),
        "response_length": float(lens.mean()),
        "truncation_rate": float(sharding.to_host(out.truncated).mean()),
        "empty_rate": float(empty.mean()), "repetition_rate": float(rep.mean())})
    log_.tokens["sampled"] += n_tok
    log_.tokens["scored"] += n_tok + int(sharding.to_host(teacher_mask).sum())
    if plan.on_weight > 0:  # a DPO step trains on its pairs only (`preference_batch`)
        log_.tokens["trained"] += int(smask.sum())
    flops_s, flops_t = c.flops_per_token
    log_.flops += flops_s * n_tok + flops_t * log_.tokens["scored"]
    if c.uses.seed and plan.seed_tokens > 0:
        log_.flops += flops_t * plan.seed_tokens * len(toks)


def preference_batch(c: Context, scored: dict[str, Any], prompt_idx: np.ndarray, group: int,
                     log_: StepLog) -> dict[str, Any]:
    """DPO pairs from the scored rollout: per prompt (`group` consecutive rows), the completion
    with the highest mean teacher log-prob per student token is chosen, the lowest rejected
    (`losses.preference_pairs`: empty rows never win, tied pairs get valid=False).

    Rows [0, P) of the batch are the chosen completions, [P, 2P) their rejected partners, under
    the student's real prompt view (the on-policy no-prompt ablation is not a DPO defect)."""
    lp_t, mask = sharding.to_host(scored["lp_teacher"]), sharding.to_host(scored["loss_mask"])
    scores = np.asarray(losses.mean_token_logprob(lp_t, mask))  # [N]
    best, worst, valid = (np.asarray(x) for x in
                          losses.preference_pairs(scores, mask.sum(-1), group))  # [P] each
    rows = np.concatenate([best, worst])  # [2P]
    pairs = prompt_idx[rows]
    gap = scores[best] - scores[worst]
    log_.metrics.update({"dpo/tie_rate": float(1.0 - valid.mean()),
                         "dpo/score_gap": float(gap[valid].mean()) if valid.any() else 0.0})
    log_.tokens["trained"] += int(mask[rows].sum())
    return {"prompt": c.put(c.s.train.student[pairs]),
            "prompt_mask": c.put(c.s.train.student_mask[pairs]),
            "completion": c.put(sharding.to_host(scored["completion"])[rows]),
            "loss_mask": c.put(mask[rows]), "valid": c.put(valid)}


def off_policy_batch(c: Context, state: dict[str, Any], plan: methods.StepPlan, step: int,
                     prompt_idx: np.ndarray, log_: StepLog) -> dict[str, Any]:
    """Cached teacher samples of this step's prompts, or of prompts drawn from the replay buffer."""
    s, cfg = c.s, c.cfg
    if plan.replay and state["replay"]["size"] > 0:
        rng = np.random.default_rng([cfg.seed, step, 7])
        idx = offpolicy.replay_draw(state["replay"], len(prompt_idx), rng)
    else:
        idx = prompt_idx
    mask = c.off_mask[idx]  # [B, G_off] (cut like a rollout: `trim_completions`)
    g = prompts.trimmed_length(int(mask.sum(-1).max()), cfg.rollout.trim_multiple, mask.shape[1])
    off = {"prompt": c.put(s.train.student[idx]), "prompt_mask": c.put(s.train.student_mask[idx]),
           "completion": c.put(c.off_tokens[idx, :g]), "loss_mask": c.put(mask[:, :g])}
    if cfg.loss.off_policy == "forward_kl":
        off["teacher_h"] = update.teacher_hidden(
            s.teacher_cfg, s.teacher_params, c.put(s.train.teacher[idx]),
            c.put(s.train.teacher_mask[idx]), off["completion"], moe_impl=cfg.moe_impl)
    log_.tokens["trained"] += int(c.off_mask[idx].sum())
    return off


def update_spec(c: Context, batch: dict[str, Any], plan: methods.StepPlan,
                num_steps: int) -> update.UpdateSpec:
    cfg = c.cfg
    return update.UpdateSpec(
        student=c.s.student_cfg, teacher=c.s.teacher_cfg, scale=LoraConfig.from_section(cfg.lora).scale,
        has_on="on" in batch, has_off="off" in batch, has_dpo="dpo" in batch,
        has_anchor=plan.anchor_beta > 0 and ("on" in batch or "off" in batch),
        confidence_weighted=plan.confidence_weighted and "on" in batch,
        on_loss=cfg.loss.on_policy, off_loss=cfg.loss.off_policy,
        shift_off=not cfg.ablation.unshifted_off_policy,
        two_step_mixture=cfg.ablation.two_step_mixture, zero_kl_anchor=cfg.ablation.zero_kl_anchor,
        vocab_chunk=cfg.loss.vocab_chunk, remat=cfg.loss.remat, moe_impl=cfg.moe_impl,
        optim=optim_config(cfg),
        # a constant schedule does not depend on the run length: share the compile
        num_steps=0 if cfg.optim.schedule == "constant" else num_steps)


def update_step(c: Context, state: dict[str, Any], batch: dict[str, Any], plan: methods.StepPlan,
                step: int, num_steps: int, log_: StepLog) -> None:
    """One optimizer step on the weighted sum of the batch's loss terms (state updated in place);
    raises FloatingPointError naming the step and the non-finite values."""
    cfg = c.cfg
    t0 = time.time()
    if cfg.rollout.match_update_widths:
        batch = match_widths(batch, c.s.pad_id)
    spec = update_spec(c, batch, plan, num_steps)
    arrays = update.plan_arrays(plan, kl_discount=cfg.loss.kl_discount,
                                    jsd_beta=cfg.loss.jsd_beta, dpo_beta=cfg.loss.dpo_beta,
                                    confidence_temperature=cfg.loss.confidence_temperature)
    new_lora, new_opt, aux = update.update_fn(spec)(
        state["lora"], state["opt_state"], c.s.student_params, c.teacher_unembed, batch, arrays)
    aux = {k: float(v) for k, v in jax.device_get(aux).items()}
    state["lora"], state["opt_state"] = new_lora, new_opt
    log_.seconds["update"] = time.time() - t0
    if not all(math.isfinite(v) for v in aux.values()):
        bad = {k: v for k, v in aux.items() if not math.isfinite(v)}
        other = {k: v for k, v in {**log_.metrics, **aux}.items() if k not in bad}
        raise FloatingPointError(f"non-finite values at step {step} ({cfg.method}): {bad}; "
                                 f"other diagnostics: {other}")
    log_.metrics.update(aux)
    log_.flops += 2 * c.flops_per_token[0] * log_.tokens["trained"] * (
        1.5 if spec.has_anchor or spec.has_dpo else 1.0)  # + the no-grad pi_0 pass


# ============================================================================ records


def step0_cache_file(s: Setup, workdir: epath.Path, lora_layers: Any) -> epath.Path | None:
    """Where the step-0 eval of this run is shared with the sweep's other runs, or None.

    At step 0 every adapter's `b` is zero, so the student is exactly its base model and its eval
    depends only on what the key covers: the checkpoint, the eval (and study-protocol) prompts
    and answers, and the eval settings -- not the method, seed or defect switches. Adapters that
    are not the zero update (none so far, but an init could change) get no cache file, nor does
    a multi-process run (its eval is a collective: every process must run it, or none)."""
    cfg = s.cfg
    if cfg.eval.step0_cache_dir == "none" or jax.process_count() > 1 or any(
            np.any(sharding.to_host(layer["b"])) for layer in lora_layers.values()):
        return None
    e = cfg.eval
    study = (s.train.student[:e.study_n].tobytes(), repr(list(s.train.golds[:e.study_n])),
             e.study_n, e.study_max_new_tokens) if cfg.ablation.study_eval else None
    key = offpolicy.digest(
        offpolicy.checkpoint_identity(cfg.student.path), cfg.student.dtype, s.eval.student,
        s.eval.student_mask, repr(list(s.eval.golds)), e.max_new_tokens, e.batch_size, study,
        dict(cfg.lora), dict(cfg.mesh), cfg.moe_impl, s.eos_ids, s.pad_id, jax.__version__,
        jax.default_backend())
    root = epath.Path(e.step0_cache_dir) if e.step0_cache_dir else workdir.parent / "eval_cache"
    return root / f"step0_{key}.json"


class Evaluator:
    """Periodic held-out evaluation into DIR/eval.jsonl; status vs the step-0 accuracy."""

    def __init__(self, s: Setup, workdir: epath.Path, evals: list[dict], enabled: bool):
        self.s, self.file, self.evals, self.enabled = s, workdir / rundir.EVAL_FILE, evals, enabled
        self.workdir = workdir
        self.start_acc = next((e["accuracy"] for e in evals if e["step"] == 0), None)

    def _score(self, views: Any, n: int, lora_layers: Any, max_new_tokens: int) -> dict[str, Any]:
        """Greedy accuracy of the student (+ adapters) on the first `n` prompts of `views`."""
        s, cfg = self.s, self.s.cfg
        # a set smaller than one eval batch (the study's 50 questions) gets a batch of its own
        # size, rounded up to the mesh's data parallelism, instead of padding to eval.batch_size
        data_par = cfg.mesh.data * cfg.mesh.fsdp
        batch = min(cfg.eval.batch_size, -(-n // data_par) * data_par)
        summary, _ = evaluation.evaluate_prompts(
            s.student_cfg, s.student_params, LoraParams(lora_layers, LoraConfig.from_section(cfg.lora).scale),
            s.tokenizer, views.student[:n], views.student_mask[:n], views.questions[:n],
            views.golds[:n], max_new_tokens=max_new_tokens, batch_size=batch,
            eos_ids=s.eos_ids, pad_id=s.pad_id, mesh=s.mesh, moe_impl=cfg.moe_impl)
        return summary

    def _evaluate(self, lora_layers: Any, study: bool) -> dict[str, Any]:
        s, cfg = self.s, self.s.cfg
        summary = self._score(s.eval, len(s.eval.questions), lora_layers, cfg.eval.max_new_tokens)
        if study:  # the study's protocol on the same adapters (DESIGN §1)
            st = self._score(s.train, cfg.eval.study_n, lora_layers, cfg.eval.study_max_new_tokens)
            summary["study"] = {k: st[k] for k in ("accuracy", "n", "truncation_rate")}
        return summary

    def __call__(self, step: int, lora_layers: Any, final: bool = False) -> dict[str, Any]:
        """Evaluates the adapters after `step` steps; `final`: the run's last step. The study's
        protocol (`ablation.study_eval`) scores the first and the final eval -- the numbers the
        report reads -- and, with `eval.study_every` = N > 0, every eval at a multiple of N."""
        s, cfg = self.s, self.s.cfg
        t0 = time.time()
        every = cfg.eval.study_every
        study = cfg.ablation.study_eval and (step == 0 or final or (every > 0 and step % every == 0))
        cache = step0_cache_file(s, self.workdir, lora_layers) if step == 0 else None
        cached = rundir.read_json(cache) if cache is not None else None
        summary = cached if cached is not None else self._evaluate(lora_layers, study)
        if cached is not None:
            log.info("step-0 eval read from %s", cache)
        elif cache is not None and self.enabled:
            rundir.write_json(cache, summary)  # atomic: a reader sees all of it or nothing
        if self.start_acc is None:
            self.start_acc = summary["accuracy"]
        summary["status"] = stats.classify_status(summary["accuracy"], self.start_acc,
                                                  cfg.eval.status)
        summary["step"] = step
        summary["seconds"] = time.time() - t0
        self.evals.append(summary)
        if self.enabled:
            rundir.append_jsonl(self.file, summary)
        return summary


def _progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # optional: only an interactive run draws a bar

    return tqdm(total=total, initial=initial, desc=desc, leave=False)


def _show(bar: Any, m: dict[str, Any]) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix({k: f"{m[key]:.3g}" for k, key in (
            ("loss", "loss/total"), ("kl", "reverse_kl"), ("score", "teacher_score")) if key in m})


class Clock:
    """Wall time of a run over all its segments (resumes), priced per device-hour."""

    def __init__(self, workdir: epath.Path, usd_per_device_hour: float, n_devices: int):
        # read before this segment overwrites status.json with "running"
        self.t0, self.prior = time.time(), rundir.prior_wall_seconds(workdir)
        self.usd, self.n_devices = usd_per_device_hour, n_devices

    def summary(self) -> dict[str, Any]:
        wall = self.prior + time.time() - self.t0
        hours = wall * self.n_devices / 3600
        return {"wall_seconds": wall, "cost": {"device_hours": hours, "usd": hours * self.usd}}


# ============================================================================ the loop


def run(cfg: ml_collections.ConfigDict, workdir: str | Path, *, setup_obj: Setup | None = None,
        step_hook: Callable[[int, dict], None] | None = None, progress: bool = True,
        allow_config_change: bool = False) -> dict[str, Any]:
    """Trains one run into `workdir` (resuming from its newest restorable checkpoint) and returns
    its summary. Before any compute: the directory's writer lock (`lock.Locked` if another live
    process writes it) and the resume's config check (`integrity.ConfigChanged` naming every
    changed field, unless `allow_config_change`: then the change is recorded in
    config_history.jsonl); a refusal leaves the directory as it was. Any exception after that
    (setup and restore included) leaves status.json `failed` with the error and traceback;
    SIGTERM checkpoints and leaves `preempted`."""
    validation.check_workdir(workdir)  # one plain sentence for a file, no permission, no space
    # A local path (made absolute: orbax requires it) or gs://... for checkpoints, metrics, status.
    workdir = epath.Path(workdir if "://" in str(workdir) else Path(workdir).resolve())
    workdir.mkdir(parents=True, exist_ok=True)
    with lock.hold(workdir, "train"):
        _check_config(cfg, workdir, allow_config_change)
        # before "running" replaces status.json; the mesh's device count is known before any setup
        clock = Clock(workdir, float(cfg.cost.usd_per_device_hour), math.prod(dict(cfg.mesh).values()))
        beat = rundir.Heartbeat(workdir, enabled=distributed.is_main())
        beat.start(final_step=None)
        try:
            summary = _train(cfg, workdir, beat, clock, setup_obj, step_hook, progress)
        except Preempted as e:
            beat.finish(state="preempted", error=str(e), **clock.summary())
            raise
        except BaseException as e:
            beat.finish(state="failed", error=f"{type(e).__name__}: {e}",
                        traceback=traceback.format_exc()[-4000:], **clock.summary())
            raise
        beat.finish(**summary)
        return summary


def _check_config(cfg: ml_collections.ConfigDict, workdir: epath.Path, allow: bool) -> None:
    """Process 0 compares the config with the one the directory's progress was made with
    (`integrity.check_resume`); every process learns its answer."""
    error: integrity.ConfigChanged | None = None
    if distributed.is_main() and "://" not in str(workdir):
        try:
            changes = integrity.check_resume(workdir, cfg.to_dict(), allow=allow)
        except integrity.ConfigChanged as e:
            error = e
        else:
            if changes:
                log.warning("config changed on resume (allowed, recorded in %s): %s",
                            rundir.HISTORY_FILE, integrity.describe(changes))
    lock.agree(error is None, f"the config of {workdir}")
    if error is not None:
        raise error


def _resume(ckpt: rundir.Checkpoints, state: dict[str, Any], n_train: int,
            beat: rundir.Heartbeat) -> dict[str, Any]:
    """The newest restorable checkpoint's state (or `state` when none was saved); skipped
    checkpoints are logged and recorded in status.json (`skipped_checkpoints`, `resumed_from`)."""
    restored, skipped = ckpt.restore_latest(
        state, validate=lambda st: offpolicy.check_replay(st["replay"], n_train))
    if restored is None:
        return state
    step = int(restored["step"])
    if skipped:
        log.warning("resumed from step %d, the newest restorable checkpoint; skipped: %s", step,
                    ", ".join(f"step {s['step']} ({s['path']})" for s in skipped))
    else:
        log.info("resumed from step %d", step)
    beat.update(resumed_from=step, skipped_checkpoints=skipped)
    return restored


def _train(cfg: ml_collections.ConfigDict, workdir: epath.Path, beat: rundir.Heartbeat,
           clock: Clock, setup_obj: Setup | None, step_hook: Callable[[int, dict], None] | None,
           progress: bool) -> dict[str, Any]:
    """`run`'s body: setup, resume, the step loop; returns the `done` summary."""
    main_proc = distributed.is_main()
    schedule = methods.get(cfg.method, cfg.schedule)
    s = setup_obj or make_setup(cfg)
    benchmarks.parse_tasks(cfg.eval.benchmarks.tasks)  # a bad task or path: refused before compute
    num_steps = s.plan.num_steps
    n_devices = s.mesh.devices.size
    if main_proc and not integrity.has_progress(workdir):  # a resume keeps the run's first config
        rundir.write_json(workdir / rundir.CONFIG_FILE, cfg.to_dict())
    c = make_context(s, workdir)
    B, n_samp, n_train = cfg.rollout.batch_size, cfg.rollout.n_samples, s.train.student.shape[0]
    ckpt = rundir.Checkpoints(workdir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    writer = None
    bar = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        state = _resume(ckpt, init_state(s, num_steps), n_train, beat)
        start_step = int(state["step"])
        beat.update(final_step=start_step)
        writer = rundir.MetricsWriter(workdir, start_step, main_proc)
        evals = rundir.evals_upto(workdir, start_step)
        if main_proc:
            rundir.write_jsonl(workdir / rundir.EVAL_FILE, evals)
        evaluator = Evaluator(s, workdir, evals, main_proc)
        preempt = {"flag": False}
        signal.signal(signal.SIGTERM, lambda *_: preempt.update(flag=True))
        run_key = jax.random.wrap_key_data(jnp.asarray(state["rng"]))
        peak = flops_lib.peak_flops(jax.devices()[0].device_kind, cfg.cost.peak_flops_per_device)
        bar = _progress_bar(progress and main_proc, num_steps, start_step, cfg.name or cfg.method)
        with jax.set_mesh(s.mesh):
            if start_step == 0 and not evals:
                evaluator(0, state["lora"])
            if cfg.eval.benchmarks.tasks and not benchmarks.done(workdir, 0):
                # a resume past step 0 (killed before they were written) scores the zero update
                lora0 = state["lora"] if start_step == 0 else init_state(s, num_steps)["lora"]
                benchmarks.evaluate_step(s, lora0, 0, workdir, main_proc)
            for step in range(start_step, num_steps):
                t_step = time.time()
                plan = schedule(step)                                                    # plan
                log_ = StepLog.start(step, plan)
                # B / K distinct prompts, each sampled K * n_samples times (K = prompt_samples)
                idx = prompts.batch_indices(step, B // plan.prompt_samples, n_train, cfg.seed)
                group = n_samp * plan.prompt_samples  # completions per distinct prompt
                rows = (idx[:, None] * group + np.arange(group)[None]).reshape(-1).astype(np.int32)
                prompt_idx = np.repeat(idx, group)
                batch: dict[str, Any] = {}
                if plan.rollout:
                    lora = LoraParams(state["lora"], LoraConfig.from_section(cfg.lora).scale)
                    out = rollout(c, lora, plan, prompt_idx, rows,                        # rollout
                                  jax.random.fold_in(run_key, step), log_)
                    scored = score(c, out, plan, prompt_idx, log_)                       # score
                    if plan.on_weight > 0:
                        batch["on"] = scored
                    if plan.dpo_weight > 0:
                        batch["dpo"] = preference_batch(c, scored, prompt_idx, group, log_)
                if plan.off_weight > 0:
                    batch["off"] = off_policy_batch(c, state, plan, step, prompt_idx, log_)
                if c.uses.replay:  # the buffer collects every step's prompts (FIFO, bounded)
                    offpolicy.replay_push(state["replay"], idx)
                rundir.fault_point("step", step)  # test hook: a crash mid-step
                if batch:
                    update_step(c, state, batch, plan, step, num_steps, log_)            # update
                state["step"] = np.asarray(step + 1, np.int64)
                state["data_pos"] = np.asarray((step + 1) * len(idx), np.int64)
                if (step + 1) % cfg.eval.every == 0 or step + 1 == num_steps:           # eval
                    e = evaluator(step + 1, state["lora"], final=step + 1 == num_steps)
                    log_.metrics.update({"time/eval": e["seconds"], "eval/accuracy": e["accuracy"]})
                if step + 1 == num_steps:  # retention: the step-0 benchmarks again, trained
                    t0 = time.time()
                    benchmarks.evaluate_step(s, state["lora"], num_steps, workdir, main_proc)
                    log_.metrics["time/benchmarks"] = time.time() - t0
                if (step + 1) % cfg.checkpoint.every == 0 or step + 1 == num_steps or preempt["flag"]:
                    t0 = time.time()                                                     # checkpoint
                    ckpt.save(state, wait=preempt["flag"] or step + 1 == num_steps)
                    log_.metrics["time/checkpoint"] = time.time() - t0
                m = log_.finish(time.time() - t_step, peak, n_devices)        # record
                writer.write(m)
                beat.update(final_step=step + 1)  # also renews the heartbeat
                _show(bar, m)
                if step_hook is not None:
                    step_hook(step, m)
                if preempt["flag"]:
                    raise Preempted(f"SIGTERM at step {step + 1}: checkpoint saved in {workdir}")
        return {"state": "done", "error": None, "final_step": num_steps,
                "final_eval": evals[-1] if evals else None, **clock.summary()}
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
