"""Evaluate a run's checkpoints on its held-out questions (greedy):

    python -m cliffdistill.evaluate --workdir DIR [--step N|latest|all] [--baselines]

Writes DIR/eval/ (summary.json, curve.json, baselines.json); the code is `cliffdistill.run.evaluation`.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging

from cliffdistill.run import distributed, evaluation

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "training run directory (holds config.json, checkpoints/)")
_STEP = flags.DEFINE_string("step", "latest", "checkpoint step to evaluate: N (0 = untrained "
                            "student), 'latest' or 'all' (every saved checkpoint + step 0: the "
                            "accuracy curve)")
_BASELINES = flags.DEFINE_bool("baselines", False, "also evaluate the step-0 baselines: student "
                               "(LoRA off), teacher, teacher with context")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None,
                                "generation budget (default: eval.max_new_tokens)")
_N_EVAL = flags.DEFINE_integer("n_eval", None, "held-out questions (default: the run's data.n_eval)")
_BATCH = flags.DEFINE_integer("batch_size", None,
                              "prompts per generation call (default: eval.batch_size)")
_PROGRESS = flags.DEFINE_bool("progress", True, "print a line per generation batch")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    del argv
    cfg = evaluation.load_run_config(_WORKDIR.value)
    distributed.initialize_from_config(cfg.distributed)  # before anything touches a device
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    logging.getLogger("absl").setLevel(logging.WARNING)
    progress = None
    if _PROGRESS.value and distributed.is_main():
        progress = lambda msg: print(f"  {msg}", flush=True)  # noqa: E731
    evaluation.evaluate_run(_WORKDIR.value, _STEP.value, baselines=_BASELINES.value,
                            max_new_tokens=_MAX_NEW.value, n_eval=_N_EVAL.value,
                            batch_size=_BATCH.value, progress=progress)


if __name__ == "__main__":
    app.run(main)
