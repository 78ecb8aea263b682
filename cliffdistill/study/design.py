"""The study's design: which runs the main job trains, in which mode.

`MODES` (smoke / quick / default / full): seeds per method and per defect row, step budget and
eval points; `sweep_rows` the correct runs plus the defect factorial (each study defect alone
and all together on `FACTORIAL_METHODS`, skipped where it changes no step); `sweep_config` the
sweep over the toy testbed that realises them.
"""


from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from cliffdistill.engine.defects import TRAINING_DEFECTS, defect_applies
from cliffdistill.run import config_io
from cliffdistill.engine.methods import STUDY_METHODS, num_steps, seed_tokens
from cliffdistill.study import toy_config


METHODS = STUDY_METHODS  # the study's table order (+ off_policy); no extensions
SETUPS = ("size", "context")


def context_value(seed: int, values: Sequence[int]) -> int:
    """The hidden unit value of a context run: one per seed, cycling through the testbed's
    values, so three seeds see three different values (a method cannot win on one lucky value)."""
    return int(values[seed % len(values)])


@dataclasses.dataclass(frozen=True)
class Mode:
    """How much of the study one invocation runs (seeds per row, run length)."""

    name: str
    correct_seeds: int  # seeds of every method, correct implementation
    defect_seeds: int  # seeds of each (defect combination, factorial method) row
    step_divisor: int = 1  # runs of STEPS // step_divisor steps
    each_defect: bool = True  # each defect alone and the bundle (False: the bundle only)
    pairs: bool = False  # also every pair of defects
    evals: int = 4  # evaluations of 512 questions per run after step 0 (evenly spaced)
    # ... of a defect-variant run (None: `evals`): its verdict reads its final eval against the
    # correct implementation's, so its curve can be coarser than the correct runs'
    defect_evals: int | None = None
    # methods of the defect factorial (None: FACTORIAL_METHODS); a defect runs on each of them
    # that it touches. `--full`: every study method, so no affected method is left out
    factorial: tuple[str, ...] | None = None
    # seeds of every method on the context setup (None: correct_seeds); seed i trains on
    # context value i mod n, so 2 x n seeds give every value two seeds (value and seed separate)
    context_seeds: int | None = None

    def seeds(self, setup: str) -> int:
        """Seeds of every correctly implemented method on `setup`."""
        return self.context_seeds if setup == "context" and self.context_seeds else self.correct_seeds

    @property
    def factorial_methods(self) -> tuple[str, ...]:
        return self.factorial if self.factorial is not None else FACTORIAL_METHODS


MODES = {
    # 1 seed, half-length runs, the all-defects bundle only, evaluated at step 0 and the end
    # (no curve): a first look in minutes (cached)
    "quick": Mode("quick", correct_seeds=1, defect_seeds=1, step_divisor=2, each_defect=False,
                  evals=1),
    # the default (target: 30 min cold on 2 CPU cores; measured in README): every verdict
    # decided, fewer defect seeds, defect variants evaluated at half-time and the end
    "default": Mode("default", correct_seeds=3, defect_seeds=1, defect_evals=2),
    # the whole factorial: >= 5 correct seeds, >= 3 per defect row, every pair of defects, every
    # method a defect touches (its evaluation steps are the default's, so it reuses the
    # default's runs)
    "full": Mode("full", correct_seeds=5, defect_seeds=3, pairs=True, defect_evals=2,
                 factorial=METHODS, context_seeds=6),
}
#: Documents of the toy retention benchmark (`study.retention`), scored by every correctly
#: implemented run at step 0 and at its end.
RETENTION_DOCS = 256

#: Methods of the defect factorial: pure on-policy, pure off-policy, mixed and seeded.
FACTORIAL_METHODS = ("on_policy_gkd", "off_policy", "hybrid", "mixture", "kl_anchored",
                     "teacher_seeded")


def defect_combinations(setup: str, methods: Sequence[str], each: bool = True,
                        pairs: bool = False) -> list[tuple[str, ...]]:
    """The factorial's defect combinations on `setup`: each training defect alone (those that
    touch one of `methods` there), every pair (`pairs`) and all of them together; `each=False`:
    the bundle only."""
    applicable = tuple(d for d in TRAINING_DEFECTS
                       if any(defect_applies(d, m, setup) for m in methods))
    singles = [(d,) for d in applicable] if each else []
    doubles = list(itertools.combinations(applicable, 2)) if pairs and len(applicable) > 2 else []
    return singles + doubles + ([applicable] if len(applicable) > 1 or not each else [])


def sweep_rows(mode: Mode, methods: Sequence[str], factorial_methods: Sequence[str]
               ) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(setup, method, seed, defects) of every run: each method x `mode.seeds(setup)` seeds,
    correctly implemented; then each defect combination x the factorial methods it touches x
    `defect_seeds` seeds. A method no defect of a combination touches is not run under it -- its
    run would be identical to the correct one, which the report reuses."""
    rows = [(setup, m, seed, ()) for setup in SETUPS for m in methods
            for seed in range(mode.seeds(setup))]
    for setup in SETUPS:
        for combo in defect_combinations(setup, factorial_methods, mode.each_defect, mode.pairs):
            rows += [(setup, m, seed, combo) for m in factorial_methods
                     if any(defect_applies(d, m, setup) for d in combo)
                     for seed in range(mode.defect_seeds)]
    return rows


def sweep_config(root: Path, mode: Mode, methods: Sequence[str] = METHODS,
                 factorial_methods: Sequence[str] | None = None, steps: int | None = None,
                 overrides: dict[str, Any] | None = None,
                 context_values: Sequence[int] | None = None,
                 benchmarks: str = "") -> ml_collections.ConfigDict:
    """The main job's sweep: one zip row per run (`sweep_rows`). Every run's first and final
    evals are also scored under the study's protocol (`ablation.study_eval`); the seed prefix of
    teacher_seeded is the budget's seed fraction of the completion budget in use. `benchmarks`
    (an `eval.benchmarks.tasks` value) is scored at step 0 and the end by the correct runs (the
    retention table; a defect variant's retention is not reported)."""

    context_values = tuple(context_values or (toy_config.DEFAULT_CONTEXT_VALUE,))
    factorial_methods = mode.factorial_methods if factorial_methods is None else factorial_methods
    overrides = dict(overrides or {})
    overrides.setdefault("schedule.seed_max_tokens", seed_tokens(
        toy_config.BUDGET.seed_fraction, overrides.get("rollout.max_new_tokens", toy_config.BUDGET.max_new_tokens)))
    steps = steps or toy_config.STEPS // mode.step_divisor
    zipped: dict[str, list] = {}
    for setup, method, seed, defects in sweep_rows(mode, methods, factorial_methods):
        paths = toy_config.toy_paths(str(root), setup, context_value(seed, context_values))
        evals = mode.defect_evals if defects and mode.defect_evals else mode.evals
        values = {"setup": setup, "method": method, "seed": seed, **paths,
                  "eval.every": steps // evals, "eval.benchmarks.tasks": "" if defects else benchmarks,
                  **{f"ablation.{d}": d in defects for d in TRAINING_DEFECTS}}
        for field, value in values.items():
            zipped.setdefault(field, []).append(value)
    c = ml_collections.ConfigDict()
    c.name = f"toy study ({mode.name})"
    c.base_config = "configs/toy.py"
    c.base_overrides = config_io.nest({
        "schedule.num_steps": steps, "schedule.extended_num_steps": 2 * steps,
        "schedule.hybrid_switch_step": steps // 2, "schedule.seed_decay_steps": steps // 2,
        "schedule.reverse_switch_step": int(0.7 * steps), "checkpoint.every": steps,
        "ablation.study_eval": True, **overrides})
    c.order = ("setup", "method", "seed")
    c.name_fields = ("setup", "method", "seed", *(f"ablation.{d}" for d in TRAINING_DEFECTS))
    c.zip = config_io.nest({k: tuple(v) for k, v in zipped.items()})
    c.baselines = True
    return c


def smoke_prepare_config() -> ml_collections.ConfigDict:
    """A micro testbed (1-layer models, 20 pretraining steps, 16 eval questions): every stage of
    the main job in a minute or two.

    Its numbers mean nothing (the headroom checks mark both setups not testable); it exists so
    that CI (and a user checking an install) runs the real prepare -> sweep -> report path in a
    runtime-only environment.
    """
    c = toy_config.default_prepare_config()
    c.n_eval, c.n_dev, c.n_train_prompts, c.eval_batch_size = 16, 16, 32, 16
    c.run.update(n_fewshot=16, steps=4, max_new_tokens=16)
    c.teacher.update(layers=1, hidden=32, heads=2, kv_heads=1, head_dim=16, mlp=64, steps=20,
                     batch=8, episode_every=3)
    c.student.update(layers=1, hidden=16, heads=2, kv_heads=1, head_dim=8, mlp=32, steps=20,
                     batch=8, snapshots=(10, 20), max_accuracy=1.0)
    return c


# Run-config overrides that shrink every run of the smoke job to match its micro testbed.
SMOKE_OVERRIDES = {
    "data.n_train": 32, "data.n_fewshot": 16, "data.n_eval": 16, "data.context_k": 2,
    "rollout.batch_size": 8, "rollout.max_new_tokens": 16, "off_policy.max_new_tokens": 16,
    "eval.max_new_tokens": 16, "eval.batch_size": 16, "eval.study_n": 16,
}
SMOKE_METHODS = ("on_policy_gkd", "off_policy")
SMOKE_STEPS = 4
FLAGS = {"quick": " --quick", "default": "", "full": " --full", "smoke": " --smoke"}


def run_cost(cfg: ml_collections.ConfigDict) -> float:
    """A toy run's relative cost, for the order runs start in with several workers: its steps,
    x2 on the context setup (the 114k-parameter student and a 3x longer teacher view: 2-3x the
    seconds per step of a size run, measured in docs/PERFORMANCE.md)."""
    return num_steps(cfg.method, cfg.schedule) * (2.0 if cfg.setup == "context" else 1.0)


def run_kind(cfg: ml_collections.ConfigDict) -> str:
    """A run's kind for the worker schedule: a context run (the 114k-parameter student, bound by
    its matmuls) shares 2 cores better with a size run (26.6k parameters, bound by dispatch)
    than with another context run (`runner.next_task`)."""
    return str(cfg.setup)
