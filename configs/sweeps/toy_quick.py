"""Quick toy sweep: three methods x two seeds on the size setup of the synthetic task (minutes on CPU).

    python -m cliffdistill.sweep --config configs/sweeps/toy_quick.py --workdir /tmp/sweeps/toy_quick

A smoke test of the whole pipeline (train -> eval -> report) rather than a result: one method that
should be stable (on_policy_gkd), the study's "collapsing" hybrid, and its winner teacher_seeded.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "toy_quick"
    c.base_config = "configs/toy.py"
    c.base_overrides = {}
    # Outer loop first; also the field order of run names (setup=size.method=hybrid.seed=0).
    c.order = ("setup", "method", "seed")
    # Tuples, not lists: ml_collections can override tuples from the command line,
    # e.g. --config.product.seed='(0, 1, 2)'.
    c.product = {
        "setup": ("size",),
        "method": ("on_policy_gkd", "hybrid", "teacher_seeded"),
        "seed": (0, 1),
    }
    c.zip = {}
    c.baselines = True
    return c
