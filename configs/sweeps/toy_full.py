"""Full toy study: both setups x all eight methods x five seeds on the synthetic task.

    python -m cliffdistill.sweep --config configs/sweeps/toy_full.py --workdir /tmp/sweeps/toy_full
    # or in parallel on 4 hosts / processes:
    python -m cliffdistill.sweep --config configs/sweeps/toy_full.py --workdir DIR --shard i/4

Runs go setup-major so that runs with equal shapes follow each other and share jit caches.
"""

import ml_collections

from cliffdistill.engine import methods

METHODS = methods.STUDY_METHODS  # the study's table order (no extension methods)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "toy_full"
    c.base_config = "configs/toy.py"
    c.base_overrides = {}
    c.order = ("setup", "method", "seed")
    # Tuples (not lists) so that --config.product.seed='(0, 1)' works on the command line.
    c.product = {
        "setup": ("size", "context"),
        "method": METHODS,
        "seed": (0, 1, 2, 3, 4),
    }
    c.zip = {}
    c.baselines = True
    return c
