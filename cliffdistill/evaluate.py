"""Evaluate a run's checkpoints on its held-out questions (greedy):

    python -m cliffdistill.evaluate --workdir DIR [--step N|latest|all] [--baselines]

Writes DIR/eval/ (summary.json, curve.json, baselines.json); the code is `cliffdistill.run.evaluation`.

Or score an HF checkpoint directory (base model or merged export), or a run's student at
saved steps, on benchmarks under the lm-evaluation-harness protocols (`cliffdistill.tasks`,
docs/EVALUATION.md):

    python -m cliffdistill.evaluate --tasks arc_challenge,mmlu --model HF_DIR \
        --data arc_challenge=PATH --data mmlu=DIR [--num_fewshot K] [--limit N] --out OUT
    python -m cliffdistill.evaluate --tasks mmlu --data mmlu=DIR --workdir DIR --step 0,latest \
        [--out OUT]   # default OUT: DIR/benchmarks; two steps also print the retention

`--data TASK=hf` loads a task's standard hub dataset (`datasets.load_dataset`, `tasks.hub`) instead
of a local copy; a failed load is an error, never a silent fallback.

HumanEval from a model is greedy pass@1 by default; `--n_samples N --temperature T [--seed S]`
draws N completions per problem (sample s keyed by fold_in(key(S), s)) for pass@1/10/100:

    python -m cliffdistill.evaluate --tasks humaneval --model HF_DIR \
        --data humaneval=HumanEval.jsonl.gz --n_samples 20 --temperature 0.8 --out OUT

or score given HumanEval completions (human-eval's samples format) without a model:

    python -m cliffdistill.evaluate --tasks humaneval --samples SAMPLES.jsonl \
        --data humaneval=HumanEval.jsonl.gz --out OUT
"""

import logging
import sys
from typing import Callable

import ml_collections
import tqdm
from absl import app, flags
from absl import logging as absl_logging

from cliffdistill.models import sharding
from cliffdistill.run import benchmarks as run_benchmarks
from cliffdistill.run import distributed, evaluation
from cliffdistill.tasks import runner

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "training run directory (holds config.json, checkpoints/)")
_STEP = flags.DEFINE_string("step", "latest", "checkpoint step to evaluate: N (0 = untrained "
                            "student), 'latest' or 'all' (every saved checkpoint + step 0: the "
                            "accuracy curve); with --tasks a comma list, e.g. 0,latest")
_BASELINES = flags.DEFINE_bool("baselines", False, "also evaluate the step-0 baselines: student "
                               "(LoRA off), teacher, teacher with context")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None,
                                "generation budget (default: eval.max_new_tokens)")
_N_EVAL = flags.DEFINE_integer("n_eval", None, "held-out questions (default: the run's data.n_eval)")
_BATCH = flags.DEFINE_integer("batch_size", None,
                              "prompts per generation call (default: eval.batch_size)")
_PROGRESS = flags.DEFINE_bool("progress", True, "print a line per generation batch (--tasks: a "
                               "progress bar per task stage on stderr, main process only)")
_TASKS = flags.DEFINE_list("tasks", None, f"benchmarks to score --model on: {', '.join(runner.TASKS)}")
flags.DEFINE_alias("task", "tasks")
_MODEL = flags.DEFINE_string("model", None, "HF checkpoint directory scored by --tasks "
                             "(or pass --workdir: the run's student at --step)")
_DATA = flags.DEFINE_multi_string("data", [], "TASK=PATH of each task's data file/folder (a bare "
                                  "PATH when one task is given), or TASK=hf: its Hugging Face hub "
                                  "dataset (needs network or a warm datasets cache)")
_FEWSHOT = flags.DEFINE_integer("num_fewshot", 0, "shots (MMLU: the first K dev rows; ARC, "
                                "HellaSwag, GSM8K: drawn from the train split, seed 1234)")
_FEWSHOT_DATA = flags.DEFINE_multi_string(
    "fewshot_data", [], "TASK=PATH: the few-shot pool (train split jsonl) of arc_easy, "
    "arc_challenge or hellaswag, instead of the file beside --data (ARC: the test file's name "
    "with 'test' -> 'train'; HellaSwag: hellaswag_train.jsonl)")
_LIMIT = flags.DEFINE_integer("limit", None, "score only the first N documents (MMLU: per subject)")
_OUT = flags.DEFINE_string("out", None, "folder for --tasks results (<task>.jsonl, summary.json)")
_SAMPLES = flags.DEFINE_string("samples", None, "with --tasks humaneval: score these completions "
                                "(human-eval samples jsonl: {task_id, completion} per line) "
                                "instead of a model's")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 1, "with --tasks humaneval/mbpp and a model: "
                                   "completions per problem (pass@k for every k <= N in 1, 10, "
                                   "100); N > 1 needs --temperature > 0")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "with --tasks humaneval/mbpp and a model: "
                                  "sampling temperature (0 = greedy)")
_SEED = flags.DEFINE_integer("seed", 0, "with --tasks humaneval/mbpp and a model: sampling seed "
                             "(the same seed gives the same completions)")
_DTYPE = flags.DEFINE_string("dtype", "float32", "weights dtype for --model (float32, bfloat16)")
_MESH = flags.DEFINE_string("mesh", "", "with --model: shard it for log-likelihood tasks, e.g. "
                            "data=2,fsdp=2,tensor=2 (each device reads its slice of the weights; "
                            "--batch_size a multiple of data x fsdp); empty = one device")


def progress_bars(task: str) -> runner.Progress:
    """A runner.Progress drawing one tqdm bar on stderr per stage of `task` ("mmlu scored",
    "humaneval generated", "humaneval executed"), opened at the stage's first report and closed
    at its last."""
    bars: dict[str, tqdm.tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm.tqdm(total=total, desc=f"{task} {stage}", file=sys.stderr,
                                    dynamic_ncols=True)
        bars[stage].update(done - bars[stage].n)
        if done >= total:
            bars[stage].close()

    return update


def task_progress() -> Callable[[str], runner.Progress] | None:
    """--tasks' progress bars: on the main process unless --noprogress (after the distributed
    setup, which decides which process is the main one)."""
    return progress_bars if _PROGRESS.value and distributed.is_main() else None


def workdir_benchmarks(data: dict[str, str], sampling: runner.Sampling) -> None:
    """--tasks with --workdir: the run's student (base + adapters) at each --step."""
    b = ml_collections.ConfigDict(dict(num_fewshot=_FEWSHOT.value, limit=_LIMIT.value or 0,
                                       batch_size=_BATCH.value or 8,
                                       max_new_tokens=_MAX_NEW.value or 512))
    cfg = evaluation.load_run_config(_WORKDIR.value)
    distributed.initialize_from_config(cfg.distributed)
    run_benchmarks.evaluate_workdir(_WORKDIR.value, _STEP.value.split(","), data, _OUT.value, b,
                                    sampling=sampling, progress=task_progress())


def benchmarks() -> None:
    """The --tasks path: an HF model, a run's checkpoints or given completions."""
    if sum(map(bool, (_MODEL.value, _WORKDIR.value, _SAMPLES.value))) != 1:
        raise app.UsageError("--tasks needs exactly one of --model HF_DIR, --workdir RUN_DIR or "
                             "--samples FILE")
    if not _WORKDIR.value and not _OUT.value:
        raise app.UsageError("--tasks with --model or --samples needs --out DIR")
    try:
        tasks = [runner.check_task(t) for t in _TASKS.value]
        data = runner.parse_data(_DATA.value, tasks)
        fewshot_data = runner.parse_fewshot_data(_FEWSHOT_DATA.value, data)
        sampling = runner.Sampling(_N_SAMPLES.value, _TEMPERATURE.value, _SEED.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if sampling != runner.GREEDY and (not set(tasks) & set(runner.CODE_TASKS) or _SAMPLES.value):
        raise app.UsageError("--n_samples, --temperature and --seed sample code-task "
                             "completions from a model: pass --tasks humaneval (or mbpp) with "
                             "--model or --workdir (not --samples), or drop them")
    if fewshot_data and (_WORKDIR.value or _SAMPLES.value):
        raise app.UsageError("--fewshot_data goes with --model; with --workdir put the train "
                             "file beside the test file under the name the loader looks for "
                             "(docs/EVALUATION.md)")
    if _SAMPLES.value:
        return samples(tasks, data)
    try:
        if _WORKDIR.value:
            return workdir_benchmarks(data, sampling)
        mesh = sharding.make_mesh(runner.parse_mesh(_MESH.value)) if _MESH.value else None
        runner.evaluate_model(runner.load_model(_MODEL.value, _DTYPE.value, mesh), tasks, data,
                              _OUT.value, num_fewshot=_FEWSHOT.value, limit=_LIMIT.value,
                              batch_size=_BATCH.value or 8, max_new_tokens=_MAX_NEW.value or 512,
                              sampling=sampling, progress=task_progress(),
                              fewshot_data=fewshot_data)
    except (ValueError, FileNotFoundError) as e:  # bad data or flags: the message says the fix
        raise SystemExit(f"error: {e}") from None


def samples(tasks: list[str], data: dict[str, str]) -> None:
    """The --samples path: given HumanEval completions, no model."""
    if tasks != ["humaneval"] or _MODEL.value:
        raise app.UsageError("--samples scores HumanEval completions: pass --tasks humaneval "
                             "and no --model")
    try:
        progress = task_progress()
        runner.report(_OUT.value, {"humaneval": runner.score_samples(
            data["humaneval"], _SAMPLES.value, limit=_LIMIT.value,
            progress=None if progress is None else progress("humaneval"))})
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str]) -> None:
    del argv
    if _TASKS.value:
        return benchmarks()
    if not _WORKDIR.value:
        raise app.UsageError("pass --workdir DIR (a run's held-out eval) or --tasks with --model")
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
