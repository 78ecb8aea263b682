"""Train one run from a config:

    python -m cliffdistill.train --config configs/qwen_size.py --workdir DIR [--config.method=hybrid]

Re-running the same command resumes from the newest restorable checkpoint; a second trainer on
the same DIR is refused, and so is a resume with a changed config unless --allow_config_change. The loop itself is
`cliffdistill.run.loop`.
"""

import json
import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cliffdistill.run import distributed, loop, rundir

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (local path or gs://)")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "resume a run with a config that differs "
                           "in fields that change results; the change is recorded in "
                           "DIR/config_history.jsonl (else the resume is refused)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    cfg = _CONFIG.value
    distributed.initialize_from_config(cfg.distributed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save/restore at INFO
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        summary = loop.run(cfg, _WORKDIR.value, allow_config_change=_ALLOW.value)
    except rundir.Preempted as e:
        print(f"preempted: {e}")
        return
    final = summary.get("final_eval") or {}
    print(json.dumps({"workdir": _WORKDIR.value, "accuracy": final.get("accuracy"),
                      "status": final.get("status"), "wall_seconds": summary["wall_seconds"]}))


if __name__ == "__main__":
    app.run(main)
