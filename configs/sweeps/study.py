"""The study re-run: eight methods x ten seeds on one model pair, plus the study's defects as ablations.

    python -m cliffdistill.sweep --config configs/sweeps/study.py:qwen_size --workdir gs://.../qwen_size
    python -m cliffdistill.sweep --config configs/sweeps/study.py:llama_size --workdir ...
    python -m cliffdistill.sweep --config configs/sweeps/study.py:llama_context --workdir ...
    python -m cliffdistill.sweep --config configs/sweeps/study.py:toy --workdir ...   # same sweep, toy models

The argument names the base run config (``configs/<arg>.py``).  Ablations are one-hot variants
given as a ``zip``: row 0 is the correct implementation, row i switches on exactly one of the
study's defects, so the report can put every defect next to the correct implementation.  The
sweep is validated before anything runs: an ablation switch that the base config does not define
is an error naming the field (``ABLATIONS`` must match ``config.ablation`` of the base config).

Size: 8 methods x 10 seeds x (1 + number of ablations) variants; trim with e.g.
``--config.product.seed='(0,1,2)'`` or set ``ABLATIONS = ()`` for the headline table only.
"""

import ml_collections

from cliffdistill.engine import methods
from cliffdistill.engine.defects import ABLATIONS  # the study's defects, `config.ablation.<name>` switches

METHODS = methods.STUDY_METHODS  # the study's table order (no extension methods)

BASES = ("qwen_size", "llama_size", "llama_context", "toy")


def get_config(arg: str = "qwen_size") -> ml_collections.ConfigDict:
    if arg not in BASES:
        raise ValueError(f"study.py:<base> needs one of {', '.join(BASES)}, got {arg!r}.")
    c = ml_collections.ConfigDict()
    c.name = f"study_{arg}"
    c.base_config = f"configs/{arg}.py"
    c.base_overrides = {}
    c.order = ("method", "seed")
    # Tuples (not lists): overridable from the command line, e.g. --config.product.seed='(0, 1, 2)'.
    c.product = {"method": METHODS, "seed": tuple(range(10))}
    # The teacher's context only exists in context distillation: that switch is a no-op elsewhere.
    ablations = [a for a in ABLATIONS if not (a == "teacher_no_context" and arg.endswith("_size"))]
    # One-hot rows: row 0 all False (correct), row i switches on ablations[i-1].
    # (ConfigDict keys cannot contain dots: nested dicts are flattened to `ablation.<name>`.)
    rows = len(ablations) + 1
    c.zip = (
        {"ablation": {a: tuple(r == i + 1 for r in range(rows)) for i, a in enumerate(ablations)}}
        if ablations
        else {}
    )
    c.baselines = True
    return c
