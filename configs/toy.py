"""The embedded default's run config, per setup (`cliffdistill/study/toy_config.py`):

    python -m cliffdistill.train --config configs/toy.py:size --workdir /tmp/toy_size
    python -m cliffdistill.train --config configs/toy.py:context --workdir /tmp/toy_ctx
    python -m cliffdistill.train --config configs/toy.py:retrieval --workdir /tmp/toy_rag

Model and data paths point into the newest toy testbed that `python -m cliffdistill.main` built.
"""

from cliffdistill.study.toy_config import get_config  # noqa: F401  (the file's config)
