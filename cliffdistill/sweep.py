"""Run a sweep resumably, then write its report:

    python -m cliffdistill.sweep --config configs/sweeps/toy_quick.py --workdir DIR \
        [--shard i/n] [--workers N] [--retry_failed] [--dry_run] [--config.product.seed='(0, 1)']

The sweep config's fields and the runner's guarantees: `cliffdistill.study.runner`.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from cliffdistill.run.rundir import STALE_AFTER_SECONDS
from cliffdistill.study import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/*.py).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (runs/, baselines/, REPORT.md, ...).")
_SHARD = flags.DEFINE_string("shard", "0/1", "i/n: run every n-th run starting at i.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Runs at once, each in a worker process (CPU hosts).")
_RETRY = flags.DEFINE_bool("retry_failed", False, "Re-run runs whose status.json says failed.")
_RERUN = flags.DEFINE_bool("rerun_changed", False, "Move aside and re-run runs whose saved config "
                           "differs from what the sweep now asks (else the sweep is refused).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the runs and their state; run nothing.")
_STALE = flags.DEFINE_float("stale_after_s", STALE_AFTER_SECONDS, "A `running` run whose heartbeat "
                            "is older than this (seconds) is stale (its process died) and is re-run.")
_RUN_FN = flags.DEFINE_string("run_fn", runner.DEFAULT_RUN_FN, "module:function that trains one run.")
_BASELINE_FN = flags.DEFINE_string("baseline_fn", runner.DEFAULT_BASELINE_FN,
                                   "module:function that writes a setup's baselines.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    shard = runner.parse_shard(_SHARD.value)
    workdir = Path(_WORKDIR.value)
    if _DRY_RUN.value:
        print("\n".join(runner.dry_run_lines(cfg, workdir, shard, _STALE.value)))
        return
    run_fn = runner.resolve_callable(_RUN_FN.value)
    baseline_fn = runner.resolve_callable(_BASELINE_FN.value) if cfg.get("baselines", False) else None
    result = runner.run_sweep(cfg, workdir, run_fn, baseline_fn, shard=shard,
                              retry_failed=_RETRY.value, stale_after=_STALE.value,
                              workers=_WORKERS.value, rerun_changed=_RERUN.value)
    runner.log(f"shard {shard[0]}/{shard[1]}: ran {len(result.ran)}, skipped {len(result.skipped)}, "
               f"failed {len(result.failed)} of {len(result.selected)} (sweep total {result.total})")
    if shard[0] == 0 and not result.report_written:
        raise SystemExit(1)  # the report failed (logged above): make the job status say so


if __name__ == "__main__":
    app.run(main)
