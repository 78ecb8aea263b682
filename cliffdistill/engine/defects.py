"""The study's implementation defects, kept as off-by-default switches (`config.ablation.<name>`).

Five change training (each in the engine function that had the defect: `losses`, `scoring`,
the trainer's phases); `study_eval` only adds an evaluation under the study's own protocol.
`defect_applies` says from a method's schedule alone whether a defect changes any of its steps:
a defect that changes none leaves the run identical to the correct one (tests/test_defects.py),
so a factorial need not run it.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from cliffdistill.engine import methods

TRAINING_DEFECTS = ("unshifted_off_policy", "on_policy_no_prompt", "teacher_no_context",
                    "two_step_mixture", "zero_kl_anchor")
EVAL_ONLY_SWITCHES = ("study_eval",)
ABLATIONS = (*TRAINING_DEFECTS, *EVAL_ONLY_SWITCHES)
# Which steps a training defect changes (by the step's plan and the setup): a defect that changes
# no step of a method leaves its run identical to the correct one (tests/test_defects.py), so a
# factorial need not run it.
_DEFECT_TOUCHES: dict[str, Any] = {
    "unshifted_off_policy": lambda setup, p: p.off_weight > 0,
    "on_policy_no_prompt": lambda setup, p: p.on_weight > 0,
    "teacher_no_context": lambda setup, p: setup == "context" and p.rollout,  # scoring/ranking
    "two_step_mixture": lambda setup, p: p.on_weight > 0 and p.off_weight > 0,
    "zero_kl_anchor": lambda setup, p: p.anchor_beta > 0,
}


def defect_applies(defect: str, method: str, setup: str,
                   schedule_cfg: ml_collections.ConfigDict | None = None) -> bool:
    """Whether training `defect` changes any step of `method` on `setup`."""
    if defect not in _DEFECT_TOUCHES:
        raise ValueError(f"unknown training defect {defect!r}; known: {TRAINING_DEFECTS}")
    schedule = methods.get(method, schedule_cfg)
    return any(_DEFECT_TOUCHES[defect](setup, schedule(i))
               for i in range(methods.num_steps(method, schedule_cfg)))
