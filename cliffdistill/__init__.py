"""cliffdistill: on-policy and off-policy LLM distillation in JAX, done correctly.

Three jobs, stacked one way (docs/ARCHITECTURE.md): the engine (`models/`, `engine/`: one
step's pure pieces), the run (`run/`: everything one run needs from a config) and the study
(`study/`, `report/`: the toy testbed, sweeps, the main job). `cliffdistill/<command>.py` are
the command lines (`python -m cliffdistill.train`, ...).

The engine's step modules are also reachable as `cliffdistill.methods`, `cliffdistill.sampling`,
`cliffdistill.scoring`, `cliffdistill.losses` and `cliffdistill.update` (loaded on first use).
"""

import importlib
import os
from typing import Any

# transformers warns at import that PyTorch is missing. cliffdistill uses transformers only for
# tokenizers and config files (the model code is JAX), so that advice is noise for our users;
# an explicit setting of the variable by the user still wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

_ENGINE = ("methods", "defects", "sampling", "scoring", "losses", "update")


def __getattr__(name: str) -> Any:
    if name in _ENGINE:
        return importlib.import_module(f"cliffdistill.engine.{name}")
    raise AttributeError(f"module 'cliffdistill' has no attribute {name!r}")
