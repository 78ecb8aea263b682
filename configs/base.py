"""Base run config: every knob of a distillation run, documented in `cliffdistill/run/defaults.py`.

    python -m cliffdistill.train --config configs/base.py --workdir DIR --config.student.path=...
"""

from cliffdistill.run.defaults import get_config  # noqa: F401  (the file's config)
