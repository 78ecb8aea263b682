"""cliffdistill.methods: the study's schedules (DESIGN §1) and the extension objectives against a
hand-written table."""

import dataclasses

import pytest

from cliffdistill.engine import methods
from cliffdistill.engine.methods import StepPlan

ON = StepPlan(on_weight=1.0, off_weight=0.0, seed_tokens=0, anchor_beta=0.0, replay=False)
OFF = StepPlan(on_weight=0.0, off_weight=1.0, seed_tokens=0, anchor_beta=0.0, replay=False)
REPLAY = StepPlan(on_weight=1.0, off_weight=1.0, seed_tokens=0, anchor_beta=0.0, replay=True)
MIX = StepPlan(on_weight=0.7, off_weight=0.3, seed_tokens=0, anchor_beta=0.0, replay=False)
ANCHOR = StepPlan(on_weight=0.0, off_weight=1.0, seed_tokens=0, anchor_beta=0.1, replay=False)
# the extensions: DPO on K=2 teacher-ranked samples per prompt; confidence-weighted on-policy
DPO = StepPlan(on_weight=0.0, off_weight=0.0, seed_tokens=0, anchor_beta=0.0, replay=False,
               dpo_weight=1.0, prompt_samples=2, confidence_weighted=False)
WEIGHTED = StepPlan(on_weight=1.0, off_weight=0.0, seed_tokens=0, anchor_beta=0.0, replay=False,
                    dpo_weight=0.0, prompt_samples=1, confidence_weighted=True)


def seeded(n):
    return StepPlan(on_weight=1.0, off_weight=0.0, seed_tokens=n, anchor_beta=0.0, replay=False)


STEPS = (0, 25, 49, 50, 69, 70, 99)

# Written by hand from the DESIGN §1 table with the default constants.
EXPECTED = {
    "on_policy_gkd": {0: ON, 25: ON, 49: ON, 50: ON, 69: ON, 70: ON, 99: ON},
    "extended_on_policy": {0: ON, 25: ON, 49: ON, 50: ON, 69: ON, 70: ON, 99: ON, 199: ON},
    "hybrid": {0: OFF, 25: OFF, 49: OFF, 50: ON, 69: ON, 70: ON, 99: ON},
    # N = round(20 * (1 - step/50)): 20, 10, round(0.4) = 0, then 0.
    "teacher_seeded": {0: seeded(20), 25: seeded(10), 49: seeded(0), 50: seeded(0), 69: seeded(0), 70: seeded(0), 99: seeded(0)},
    "mixture": {0: MIX, 25: MIX, 49: MIX, 50: MIX, 69: MIX, 70: MIX, 99: MIX},
    # replay on 0-based steps with step % 5 == 4: 49, 69, 99 yes; 0, 25, 50, 70 no.
    "replay_buffer": {0: ON, 25: ON, 49: REPLAY, 50: ON, 69: REPLAY, 70: ON, 99: REPLAY},
    "kl_anchored": {0: ANCHOR, 25: ANCHOR, 49: ANCHOR, 50: ANCHOR, 69: ANCHOR, 70: ANCHOR, 99: ANCHOR},
    "reverse_curriculum": {0: ON, 25: ON, 49: ON, 50: ON, 69: ON, 70: OFF, 99: OFF},
    # the pure off-policy row (not one of the study's eight): off-policy NLL at every step
    "off_policy": {0: OFF, 25: OFF, 49: OFF, 50: OFF, 69: OFF, 70: OFF, 99: OFF},
    "dpo_teacher": {0: DPO, 25: DPO, 49: DPO, 50: DPO, 69: DPO, 70: DPO, 99: DPO},
    "reward_weighted_gkd": {0: WEIGHTED, 25: WEIGHTED, 49: WEIGHTED, 50: WEIGHTED, 69: WEIGHTED,
                            70: WEIGHTED, 99: WEIGHTED},
}


def test_table_covers_the_study_and_the_extensions():
    assert set(methods.METHODS) == set(EXPECTED)
    assert len(methods.METHODS) == 11
    # the study's sweep is unchanged: its eight + off_policy, in table order
    assert methods.STUDY_METHODS == (
        "on_policy_gkd", "extended_on_policy", "hybrid", "teacher_seeded", "mixture",
        "replay_buffer", "kl_anchored", "reverse_curriculum", "off_policy")
    assert methods.EXTENSION_METHODS == ("dpo_teacher", "reward_weighted_gkd")
    assert tuple(methods.METHODS) == methods.STUDY_METHODS + methods.EXTENSION_METHODS
    assert methods.num_steps("off_policy") == 100


def test_plan_rollout_flag():
    assert ON.rollout and DPO.rollout and WEIGHTED.rollout and MIX.rollout
    assert not OFF.rollout and not ANCHOR.rollout


def test_dpo_samples_reach_the_plan():
    c = methods.default_schedule_config()
    c.dpo_samples = 4
    assert methods.get("dpo_teacher", c)(3) == dataclasses.replace(DPO, prompt_samples=4)


@pytest.mark.parametrize("budget,want", [(256, 20), (128, 10), (64, 5), (96, 8), (32, 3)])
def test_seed_tokens_is_a_fraction_of_the_budget(budget, want):
    # 20/256 of the budget, rounded half up (96 * 20/256 = 7.5 -> 8)
    assert methods.seed_tokens(methods.STUDY_SEED_FRACTION, budget) == want
    c = methods.default_schedule_config()
    c.seed_max_tokens, c.seed_decay_steps = methods.seed_tokens(20 / 256, budget), 20
    got = [methods.get("teacher_seeded", c)(s).seed_tokens for s in (0, 10, 20)]
    assert got == [want, round(want / 2), 0]


def test_seed_tokens_rejects_bad_input():
    with pytest.raises(ValueError, match="fraction"):
        methods.seed_tokens(1.5, 128)
    with pytest.raises(ValueError, match="budget"):
        methods.seed_tokens(0.1, 0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedule_table(name):
    plan = methods.get(name)
    for step, want in EXPECTED[name].items():
        got = plan(step)
        assert isinstance(got, StepPlan)
        assert got == want, f"{name} step {step}: {got} != {want}"
        # plain Python numbers, as the trainer expects
        assert type(got.seed_tokens) is int and type(got.replay) is bool
        assert isinstance(got.on_weight, float) and isinstance(got.off_weight, float)
        assert isinstance(got.anchor_beta, float) and isinstance(got.dpo_weight, float)
        assert type(got.prompt_samples) is int and type(got.confidence_weighted) is bool
        # the raw schedule function with an explicit config agrees with the bound one
        assert methods.METHODS[name](step, methods.default_schedule_config()) == want


def test_teacher_seeded_full_decay():
    plan = methods.get("teacher_seeded")
    got = [plan(s).seed_tokens for s in range(0, 60)]
    want = [round(20 * (1 - s / 50)) for s in range(50)] + [0] * 10
    assert got == want
    assert got[:5] == [20, 20, 19, 19, 18]  # 20, 19.6, 19.2, 18.8, 18.4
    assert all(a >= b for a, b in zip(got, got[1:]))


def test_replay_count_and_mixture_single_update():
    plan = methods.get("replay_buffer")
    replay_steps = [s for s in range(100) if plan(s).replay]
    assert replay_steps == list(range(4, 100, 5)) and len(replay_steps) == 20
    assert all(plan(s).off_weight == (1.0 if plan(s).replay else 0.0) for s in range(100))
    mix = methods.get("mixture")(0)
    assert mix.on_weight + mix.off_weight == pytest.approx(1.0)


def test_num_steps():
    c = methods.default_schedule_config()
    assert methods.num_steps("extended_on_policy", c) == 200
    for name in methods.METHODS:
        if name != "extended_on_policy":
            assert methods.num_steps(name, c) == 100
    assert methods.num_steps("hybrid") == 100


def test_default_config_values():
    c = methods.default_schedule_config()
    assert c.to_dict() == dict(
        num_steps=100,
        extended_num_steps=200,
        hybrid_switch_step=50,
        seed_max_tokens=20,
        seed_decay_steps=50,
        mixture_off_weight=0.3,
        replay_period=5,
        replay_weight=1.0,
        anchor_beta=0.1,
        reverse_switch_step=70,
        dpo_samples=2,
    )


def test_config_overrides_are_used():
    c = methods.default_schedule_config()
    c.hybrid_switch_step = 10
    c.mixture_off_weight = 0.5
    c.replay_period = 1
    c.anchor_beta = 0.25
    c.seed_max_tokens = 8
    c.seed_decay_steps = 4
    assert methods.get("hybrid", c)(9) == OFF and methods.get("hybrid", c)(10) == ON
    assert methods.get("mixture", c)(3) == dataclasses.replace(MIX, on_weight=0.5, off_weight=0.5)
    assert all(methods.get("replay_buffer", c)(s).replay for s in range(5))
    assert methods.get("kl_anchored", c)(0).anchor_beta == 0.25
    assert [methods.get("teacher_seeded", c)(s).seed_tokens for s in range(6)] == [8, 6, 4, 2, 0, 0]
    # the bound plan is a snapshot: editing the config afterwards does not change it
    plan = methods.get("hybrid", c)
    c.hybrid_switch_step = 90
    assert plan(50) == ON


def test_step_plan_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ON.on_weight = 0.5  # type: ignore[misc]


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError) as e:
        methods.get("on_policy_gdk")
    msg = str(e.value)
    assert "'on_policy_gdk'" in msg and "method" in msg
    for name in methods.METHODS:
        assert name in msg
    with pytest.raises(ValueError, match="known methods"):
        methods.num_steps("nope")


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="step"):
        methods.get("hybrid")(-1)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_steps", 0),
        ("num_steps", -5),
        ("extended_num_steps", -1),
        ("hybrid_switch_step", 150),
        ("hybrid_switch_step", -1),
        ("reverse_switch_step", 101),
        ("seed_max_tokens", -1),
        ("seed_decay_steps", 0),
        ("mixture_off_weight", 1.5),
        ("mixture_off_weight", -0.1),
        ("replay_period", 0),
        ("replay_weight", -1.0),
        ("anchor_beta", -0.1),
        ("anchor_beta", float("nan")),
        ("dpo_samples", 1),
        ("dpo_samples", 0),
    ],
)
def test_validate_names_the_field(field, value):
    c = methods.default_schedule_config()
    c[field] = value
    with pytest.raises(ValueError, match=f"`{field}`"):
        methods.validate_schedule_config(c)
    with pytest.raises(ValueError, match=f"`{field}`"):  # the method that reads the field
        methods.get(methods.METHOD_FIELDS.get(field, "on_policy_gkd"), c)
    if field in methods.METHOD_FIELDS:  # ... and no other method is refused for it
        methods.get("on_policy_gkd", c)


def test_validate_missing_field_and_defaults_ok():
    methods.validate_schedule_config(methods.default_schedule_config())
    c = methods.default_schedule_config()
    del c["replay_period"]
    with pytest.raises(ValueError, match="`replay_period`"):
        methods.validate_schedule_config(c)
