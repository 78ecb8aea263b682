"""The embedded default: the whole study in miniature, on CPU, with no downloads.

    python -m cliffdistill.main            # both setups x 9 methods x 3 seeds + the defect factorial
    python -m cliffdistill.main --quick    # 1 seed, 20-step runs, step 0 + final eval: minutes
    python -m cliffdistill.main --full     # 5 seeds per method, 3 per defect row, + defect pairs
    python -m cliffdistill.main --study extensions  # the study's next steps (docs/EXTENSIONS.md)
    python -m cliffdistill.main --smoke    # micro testbed, 2 methods x 4 steps: proves the install
    python -m cliffdistill.main --publish  # ... and copy the results into docs/

What each mode runs and writes: `cliffdistill.study.modes`. Re-running resumes: finished runs are
skipped, so an interrupted main job continues where it was.
"""

import logging
import os
from pathlib import Path

import jax
from absl import app, flags

from cliffdistill.run import lock
from cliffdistill.run.config_io import REPO_ROOT
from cliffdistill.study import modes, toy_config
from cliffdistill.study import design, results

_QUICK = flags.DEFINE_bool("quick", False, "1 seed, 20-step runs evaluated at step 0 and the end, "
                           "the all-defects bundle only")
_FULL = flags.DEFINE_bool("full", False, "the whole factorial: 5 seeds per method, 3 per defect "
                          "row, defect pairs")
_SMOKE = flags.DEFINE_bool("smoke", False, "micro testbed, 2 methods x 4 steps (~1-2 min): checks "
                           "an install")
_STUDY = flags.DEFINE_enum("study", "main", ["main", "extensions"], "extensions: the study's "
                           "proposed next steps (docs/EXTENSIONS.md)")
_WORKDIR = flags.DEFINE_string("workdir", None, "default: runs/main (runs/main_quick, "
                               "runs/main_full, runs/main_smoke, runs/main_extensions)")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "toy testbed cache (default $CLIFFDISTILL_CACHE "
                                 "or ~/.cache/cliffdistill)")
_WORKERS = flags.DEFINE_integer("workers", None, "runs at once, each in a worker process (default: "
                                "one per CPU core, at most 4, on CPU; 1 on an accelerator)")
_REBUILD = flags.DEFINE_bool("rebuild_testbed", False, "rebuild a cached toy testbed that was "
                             "built by another version of the testbed code (else refused)")
_PUBLISH = flags.DEFINE_bool("publish", False, "copy RESULTS.md, plots, testbed.json and "
                             "claims.json into docs/")


def mode_name() -> str:
    """smoke | quick | full | default | extensions, from the flags (at most one mode flag)."""
    chosen = [n for n, f in (("smoke", _SMOKE), ("quick", _QUICK), ("full", _FULL)) if f.value]
    if len(chosen) > 1:
        raise app.UsageError(f"choose at most one of --quick/--full/--smoke, got {chosen}")
    if _STUDY.value == "extensions":
        if chosen:
            raise app.UsageError("--study extensions takes none of --quick/--full/--smoke")
        return "extensions"
    return chosen[0] if chosen else "default"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = mode_name()
    workdir = Path(_WORKDIR.value or ("runs/main" if name == "default" else f"runs/main_{name}"))
    cache_dir = Path(_CACHE_DIR.value or toy_config.TOY_CACHE)
    # Compiled programs persist across invocations: a re-run (or --quick after the full job)
    # skips most XLA compilation, which dominates the toy runs' time on CPU. Set here, by the
    # command, not by the library: the setting is process-global and would follow a library caller.
    jax.config.update("jax_compilation_cache_dir", str(cache_dir / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    workers = _WORKERS.value or modes.default_workers()
    if workers < 1:
        raise app.UsageError(f"--workers must be >= 1, got {workers}")
    with lock.hold(workdir, "main"):  # one main job per workdir; its sweep re-enters the lock
        if name == "smoke":
            _, result = modes.run_smoke(workdir, cache_dir, workers, _REBUILD.value)
        elif name == "extensions":
            _, result = modes.run_extensions(workdir, cache_dir, workers=workers,
                                             rebuild=_REBUILD.value)
        else:
            _, result = modes.run_main(workdir, cache_dir, design.MODES[name], workers=workers,
                                       rebuild=_REBUILD.value)
    if _PUBLISH.value:
        publish = results.publish_extensions if name == "extensions" else results.publish
        print("published:", ", ".join(str(p) for p in publish(workdir, REPO_ROOT / "docs")))
    return 1 if result.failed else 0


if __name__ == "__main__":
    app.run(main)
