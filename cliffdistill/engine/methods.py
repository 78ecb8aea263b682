"""Distillation methods as step schedules (DESIGN §1 table, the pure `off_policy` row, and two
alternative objectives).

A method is one schedule function ``(step, config) -> StepPlan`` plus one entry in
:data:`METHODS`.  The trainer asks ``get(cfg.method, schedule_cfg)(step)`` for the plan of each
step and performs ONE optimizer update on

    on_weight * on_policy_loss + off_weight * off_policy_loss + anchor_beta * KL(pi_theta || pi_0)
    + dpo_weight * dpo_loss

where the on-policy rollout uses ``seed_tokens`` teacher-written completion tokens as a prefix,
and the off-policy batch comes from the replay buffer of cached teacher samples when
``replay`` is true (otherwise from the teacher-sample stream).  Plans hold plain Python numbers;
the trainer turns them into arrays so plan changes never recompile.

:data:`STUDY_METHODS` are the study's rows (what its sweeps and claims iterate);
:data:`EXTENSION_METHODS` are objectives the study did not run:

* ``dpo_teacher`` -- the student samples ``dpo_samples`` (K) completions per prompt (the rollout
  keeps ``rollout.batch_size`` rows: batch_size / K distinct prompts, each K times); the teacher
  ranks them by mean per-token log-prob under its own prompt view, and DPO (``loss.dpo_beta``,
  reference = the base student with LoRA off) pushes the best above the worst of each prompt.
  A prompt whose best and worst scores are equal (a tie: e.g. K identical completions) carries
  no preference and is left out of the loss (``losses.dpo_loss(valid=...)``).
* ``reward_weighted_gkd`` -- the on-policy loss with each sequence weighted by the teacher's
  confidence in it (``losses.teacher_confidence_weights``: ``B * softmax(mean teacher log-prob /
  loss.confidence_temperature)`` over the batch, mean 1), so completions the teacher finds
  likely pull harder.

The on-policy objective of every method with an on-policy part (``reward_weighted_gkd``
included) is ``loss.on_policy``: the sampled reverse KL, or ``"jsd"`` -- the full-vocab
generalized JSD(``loss.jsd_beta``): 0 forward KL, 1 reverse KL, in between the GKD mixture
divergence. ``dpo_teacher`` has no on-policy distillation term, so ``loss.on_policy`` does not
change it.

All constants live in :func:`default_schedule_config`; steps are 0-based.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import ml_collections


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What one training step does.

    on_weight: weight of the on-policy loss (0 -> no rollout this step).
    off_weight: weight of the off-policy loss (0 -> no off-policy batch this step).
    seed_tokens: number of teacher-written completion tokens before the student continues
        (context, never targets).
    anchor_beta: weight of KL(pi_theta || pi_0) (0 -> no anchor term).
    replay: the off-policy batch is drawn from the replay buffer of teacher samples.
    dpo_weight: weight of the DPO loss on teacher-ranked pairs of the rollout (0 -> none).
    prompt_samples: completions the rollout draws per distinct prompt (x rollout.n_samples); the
        rollout keeps rollout.batch_size prompt rows, so batch_size / prompt_samples distinct
        prompts (K = schedule.dpo_samples for dpo_teacher, 1 otherwise).
    confidence_weighted: the on-policy loss weights each sequence by the teacher's confidence.
    """

    on_weight: float = 0.0
    off_weight: float = 0.0
    seed_tokens: int = 0
    anchor_beta: float = 0.0
    replay: bool = False
    dpo_weight: float = 0.0
    prompt_samples: int = 1
    confidence_weighted: bool = False

    @property
    def rollout(self) -> bool:
        """The step samples from the student (an on-policy or a DPO term needs a rollout)."""
        return self.on_weight > 0 or self.dpo_weight > 0


Schedule = Callable[[int, ml_collections.ConfigDict], StepPlan]

ON_POLICY = StepPlan(on_weight=1.0)
OFF_POLICY = StepPlan(off_weight=1.0)


def default_schedule_config() -> ml_collections.ConfigDict:
    """Every constant the schedules use (the study's values)."""
    c = ml_collections.ConfigDict()
    # Training steps of every method except `extended_on_policy`.
    c.num_steps = 100
    # Training steps of `extended_on_policy` (on-policy only, twice as long).
    c.extended_num_steps = 200
    # `hybrid`: off-policy for steps < hybrid_switch_step, on-policy from it on.
    c.hybrid_switch_step = 50
    # `teacher_seeded`: teacher-written prefix length at step 0 (the study's 20 of its 256-token
    # completion budget; configs with another budget set it with `seed_tokens(fraction, budget)`) ...
    c.seed_max_tokens = 20
    # ... decaying linearly to 0 at this step: N = round(seed_max_tokens * (1 - step/seed_decay_steps)).
    c.seed_decay_steps = 50
    # `mixture`: weight of the off-policy loss; the on-policy weight is 1 - mixture_off_weight.
    c.mixture_off_weight = 0.3
    # `replay_buffer`: an off-policy replay batch is added every replay_period-th step (1-based) ...
    c.replay_period = 5
    # ... with this loss weight (the on-policy loss keeps weight 1).
    c.replay_weight = 1.0
    # `kl_anchored`: weight beta of KL(pi_theta || pi_0) added to the off-policy loss.
    c.anchor_beta = 0.1
    # `reverse_curriculum`: on-policy for steps < reverse_switch_step, off-policy after.
    c.reverse_switch_step = 70
    # `dpo_teacher`: completions per prompt ranked by the teacher (K >= 2, divides rollout.batch_size).
    c.dpo_samples = 2
    return c


#: The study's teacher-seeding prefix as a fraction of its completion budget: 20 of 256 tokens.
STUDY_SEED_FRACTION = 20 / 256


def seed_tokens(fraction: float, completion_budget: int) -> int:
    """Seed-prefix length (``seed_max_tokens``) for a completion budget: ``fraction`` of it,
    rounded half up.

    Why a fraction: the study seeded 20 of 256 tokens (~8% of an answer); carrying the token
    count to a shorter budget would make the teacher write most of each answer instead.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"seed fraction must be in [0, 1], got {fraction!r}")
    if completion_budget < 1:
        raise ValueError(f"completion budget must be >= 1 token, got {completion_budget!r}")
    return int(math.floor(fraction * completion_budget + 0.5))


def _check_step(step: int) -> int:
    if isinstance(step, bool) or int(step) != step or step < 0:
        raise ValueError(f"schedule step must be a non-negative int, got {step!r}.")
    return int(step)


# ----------------------------------------------------------------------------- the methods


def on_policy_gkd(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """On-policy loss only, every step."""
    _check_step(step)
    return ON_POLICY


def extended_on_policy(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """Same plan as on_policy_gkd; the trainer runs it for ``c.extended_num_steps`` (see num_steps)."""
    _check_step(step)
    return ON_POLICY


def hybrid(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """Off-policy for steps < c.hybrid_switch_step, on-policy from then on."""
    return OFF_POLICY if _check_step(step) < c.hybrid_switch_step else ON_POLICY


def teacher_seeded(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """On-policy; the teacher writes the first N completion tokens and the student continues.

    N = round(seed_max_tokens * (1 - step / seed_decay_steps)) for step < seed_decay_steps, else 0.
    Python's ``round`` (half to even); with the defaults N = 20 - 0.4*step never lands on .5.
    """
    step = _check_step(step)
    if step >= c.seed_decay_steps:
        n = 0
    else:
        n = round(c.seed_max_tokens * (1.0 - step / c.seed_decay_steps))
    return StepPlan(on_weight=1.0, seed_tokens=int(n))


def mixture(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """ONE update on (1 - w) * on-policy + w * off-policy loss, w = c.mixture_off_weight.

    (The study took two optimizer steps instead; that defect is not reproduced here.)
    """
    _check_step(step)
    w = float(c.mixture_off_weight)
    return StepPlan(on_weight=1.0 - w, off_weight=w)


def replay_buffer(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """On-policy every step; every k-th step (k = c.replay_period) an off-policy replay batch is added.

    "Every k-th step" is counted 1-based: replay happens when ``step % k == k - 1`` (0-based steps
    4, 9, 14, ... for k=5), so the first replay comes after k - 1 pure on-policy steps and a
    100-step run gets exactly 100 // k replays.  The replay loss weight is c.replay_weight and is
    added to (not traded against) the on-policy weight 1.
    """
    step = _check_step(step)
    k = int(c.replay_period)
    if step % k == k - 1:
        return StepPlan(on_weight=1.0, off_weight=float(c.replay_weight), replay=True)
    return ON_POLICY


def kl_anchored(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """Off-policy loss + c.anchor_beta * KL(pi_theta || pi_0), every step."""
    _check_step(step)
    return StepPlan(off_weight=1.0, anchor_beta=float(c.anchor_beta))


def reverse_curriculum(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """On-policy for steps < c.reverse_switch_step, off-policy for the rest."""
    return ON_POLICY if _check_step(step) < c.reverse_switch_step else OFF_POLICY


def off_policy(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """Off-policy only: supervised NLL on the cached teacher samples, every step.

    Not one of the study's eight: the direct row of its research question (on- vs off-policy),
    the counterpart of `on_policy_gkd` (the study's Phase 2 reported it collapsing to 0%).
    """
    _check_step(step)
    return OFF_POLICY


def dpo_teacher(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """DPO on teacher-ranked student samples, every step (no on- or off-policy distillation term).

    The student samples K = c.dpo_samples completions per prompt; the best and the worst by the
    teacher's mean per-token log-prob form one (chosen, rejected) pair per prompt; tied pairs are
    dropped. Why: a preference signal from the teacher's ranking needs no token-level agreement
    between the models, only that the teacher can tell a better answer from a worse one.
    """
    _check_step(step)
    return StepPlan(dpo_weight=1.0, prompt_samples=int(c.dpo_samples))


def reward_weighted_gkd(step: int, c: ml_collections.ConfigDict) -> StepPlan:
    """On-policy loss, each sequence weighted by the teacher's confidence in it, every step.

    Weight rule (``losses.teacher_confidence_weights``): ``w = B * softmax(c_b / T)`` over the
    batch, ``c_b`` the teacher's mean log-prob per student-written token of row b and T =
    ``loss.confidence_temperature``; the weights average 1, so the loss keeps its scale and only
    shifts it towards completions the teacher finds likely (T -> inf: plain on_policy_gkd).
    """
    _check_step(step)
    return StepPlan(on_weight=1.0, confidence_weighted=True)


METHODS: dict[str, Schedule] = {
    "on_policy_gkd": on_policy_gkd,
    "extended_on_policy": extended_on_policy,
    "hybrid": hybrid,
    "teacher_seeded": teacher_seeded,
    "mixture": mixture,
    "replay_buffer": replay_buffer,
    "kl_anchored": kl_anchored,
    "reverse_curriculum": reverse_curriculum,
    "off_policy": off_policy,
    "dpo_teacher": dpo_teacher,
    "reward_weighted_gkd": reward_weighted_gkd,
}

#: The study's rows in its table order (+ off_policy): what its sweeps, claims and reports iterate.
STUDY_METHODS: tuple[str, ...] = (
    "on_policy_gkd", "extended_on_policy", "hybrid", "teacher_seeded", "mixture", "replay_buffer",
    "kl_anchored", "reverse_curriculum", "off_policy")
#: Objectives the study did not run; reports show them after the study's rows.
EXTENSION_METHODS: tuple[str, ...] = ("dpo_teacher", "reward_weighted_gkd")

# Methods that run for c.extended_num_steps instead of c.num_steps.
_EXTENDED = frozenset({"extended_on_policy"})


# ----------------------------------------------------------------------------- registry / validation


def _check_name(name: str) -> None:
    if name not in METHODS:
        raise ValueError(
            f"unknown method {name!r} (config field `method`); known methods: "
            f"{', '.join(sorted(METHODS))}."
        )


def num_steps(name: str, c: Optional[ml_collections.ConfigDict] = None) -> int:
    """Number of training steps of method ``name``: c.extended_num_steps for extended_on_policy,
    c.num_steps otherwise."""
    _check_name(name)
    c = default_schedule_config() if c is None else c
    return int(c.extended_num_steps if name in _EXTENDED else c.num_steps)


_INT_FIELDS = (
    "num_steps",
    "extended_num_steps",
    "hybrid_switch_step",
    "seed_max_tokens",
    "seed_decay_steps",
    "replay_period",
    "reverse_switch_step",
    "dpo_samples",
)
_FLOAT_FIELDS = ("mixture_off_weight", "replay_weight", "anchor_beta")


def _kind(plan: StepPlan) -> tuple[bool, bool, bool]:
    return plan.on_weight > 0, plan.off_weight > 0, plan.seed_tokens > 0


def switch_step(name: str, c: Optional[ml_collections.ConfigDict] = None) -> int:
    """The step at which a method changes phase for good (hybrid: off -> on; reverse_curriculum:
    on -> off; teacher_seeded: the last seeded step + 1), 0 for a method without one (constant or
    periodic plans). The kind of a step is which parts it has (on / off / seeded); the switch is
    where one kind that held from step 0 gives way to another that holds to the end. Plots align
    each method's curves on it."""
    schedule, n = get(name, c), num_steps(name, c)
    kinds = [_kind(schedule(i)) for i in range(n)]
    first = next((i for i, k in enumerate(kinds) if k != kinds[0]), n)
    if first == n or any(k != kinds[first] for k in kinds[first:]):
        return 0
    return first


#: Schedule fields that only one method reads -> that method. Their ranges are checked where the
#: method runs (a 10-step on_policy_gkd run is not refused for hybrid's switch step).
METHOD_FIELDS: dict[str, str] = {"hybrid_switch_step": "hybrid",
                                 "reverse_switch_step": "reverse_curriculum"}


def validate_schedule_config(c: ml_collections.ConfigDict, method: Optional[str] = None) -> None:
    """Raise ValueError naming the field for missing or nonsensical schedule constants; with
    `method`, a field of `METHOD_FIELDS` is range-checked only for its own method."""
    for field in _INT_FIELDS + _FLOAT_FIELDS:
        if field not in c:
            raise ValueError(f"schedule config field `{field}` is missing; see methods.default_schedule_config().")
    for field in _INT_FIELDS:
        v = c[field]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"schedule config field `{field}` must be an int, got {v!r}.")
    for field in _FLOAT_FIELDS:
        v = c[field]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"schedule config field `{field}` must be a finite number, got {v!r}.")

    def need(ok: bool, field: str, what: str) -> None:
        owner = METHOD_FIELDS.get(field)
        if ok or (method is not None and owner is not None and owner != method):
            return
        belongs = f" (a field of method `{owner}`)" if owner else ""
        raise ValueError(f"schedule config field `{field}`={c[field]!r}{belongs} is invalid: "
                         f"must be {what}.")

    need(c.num_steps >= 1, "num_steps", ">= 1")
    need(c.extended_num_steps >= 1, "extended_num_steps", ">= 1")
    need(0 <= c.hybrid_switch_step <= c.num_steps, "hybrid_switch_step", f"in [0, num_steps={c.num_steps}]")
    need(0 <= c.reverse_switch_step <= c.num_steps, "reverse_switch_step", f"in [0, num_steps={c.num_steps}]")
    need(c.seed_max_tokens >= 0, "seed_max_tokens", ">= 0")
    need(c.seed_decay_steps >= 1, "seed_decay_steps", ">= 1 (set seed_max_tokens=0 for no seeding)")
    need(0.0 <= c.mixture_off_weight <= 1.0, "mixture_off_weight", "in [0, 1] (on weight is 1 - it)")
    need(c.replay_period >= 1, "replay_period", ">= 1")
    need(c.replay_weight >= 0.0, "replay_weight", ">= 0")
    need(c.anchor_beta >= 0.0, "anchor_beta", ">= 0")
    need(c.dpo_samples >= 2, "dpo_samples", ">= 2 (a pair needs two completions per prompt)")


def get(name: str, c: Optional[ml_collections.ConfigDict] = None) -> Callable[[int], StepPlan]:
    """The schedule of method ``name`` bound to config ``c`` (validated; defaults when None).

    ``get("teacher_seeded")(0) == StepPlan(on_weight=1.0, seed_tokens=20)``.
    """
    _check_name(name)
    c = default_schedule_config() if c is None else c
    validate_schedule_config(c, name)
    c = ml_collections.FrozenConfigDict(c)  # later edits to the caller's config cannot change plans
    schedule = METHODS[name]

    def plan(step: int) -> StepPlan:
        return schedule(step, c)

    plan.__name__ = f"{name}_plan"
    plan.__doc__ = schedule.__doc__
    return plan


@dataclasses.dataclass(frozen=True)
class PlanSummary:
    """What the steps of one run's schedule use, worked out once per run from its plans.

    `on`: some step has an on-policy term (on_weight > 0); `rollout`: some step samples from the
    student (an on-policy or a DPO term: `StepPlan.rollout`), so the two differ only for DPO.
    `passes`: the most forward passes one update keeps for the backward (the rollout batch and
    the off-policy batch), at least 1. `prompt_samples`: every K a step draws per prompt."""

    num_steps: int
    on: bool
    rollout: bool
    off: bool
    seed: bool
    replay: bool
    anchor: bool
    passes: int
    prompt_samples: tuple[int, ...]


def plan_summary(name: str, c: Optional[ml_collections.ConfigDict] = None) -> PlanSummary:
    """The PlanSummary of method `name` under schedule config `c` (unknown name -> ValueError)."""
    schedule, n = get(name, c), num_steps(name, c)
    plans = [schedule(i) for i in range(n)]
    return PlanSummary(
        num_steps=n,
        on=any(p.on_weight > 0 for p in plans),
        rollout=any(p.rollout for p in plans),
        off=any(p.off_weight > 0 for p in plans),
        seed=any(p.seed_tokens > 0 for p in plans),
        replay=any(p.replay for p in plans),
        anchor=any(p.anchor_beta > 0 for p in plans),
        passes=max([1, *(int(p.rollout) + int(p.off_weight > 0) for p in plans)]),
        prompt_samples=tuple(sorted({p.prompt_samples for p in plans})))
