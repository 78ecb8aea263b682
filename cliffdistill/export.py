"""Export a run's LoRA adapters:

    python -m cliffdistill.export --workdir DIR --format peft|merged --out OUT [--step N]

`peft`: an adapter for `peft.PeftModel`; `merged`: an HF checkpoint with the adapters folded in.
The code is `cliffdistill.run.export`.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging

from cliffdistill.run import export

_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory (config.json, checkpoints/)")
_FORMAT = flags.DEFINE_enum("format", None, list(export.FORMATS), "peft: LoRA adapter for "
                            "peft.PeftModel; merged: HF checkpoint with the adapters folded in")
_OUT = flags.DEFINE_string("out", None, "output directory (must be empty unless --overwrite)")
_STEP = flags.DEFINE_string("step", None, "checkpoint step (default: the latest)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace a non-empty --out")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", *export.DTYPES], "merged: weight dtype "
                           "(auto = the student checkpoint's own)")
flags.mark_flags_as_required(["workdir", "format", "out"])


def main(argv: list[str]) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    step = None if _STEP.value in (None, "latest") else int(_STEP.value)
    out = export.export_run(_WORKDIR.value, _FORMAT.value, _OUT.value, step,
                            overwrite=_OVERWRITE.value, dtype=_DTYPE.value)
    print(f"wrote {_FORMAT.value} export of {_WORKDIR.value} (step {_STEP.value or 'latest'}) to {out}")


if __name__ == "__main__":
    app.run(main)
