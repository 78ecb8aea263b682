"""Benchmarks a run scores at step 0 and at its end (`eval.benchmarks`), and retention from them.

    eval.benchmarks.tasks = "mmlu=/data/mmlu,arc_challenge=/data/arc/test.jsonl"

runs each task of `cliffdistill.tasks` on the run's student (step 0: the base model, the adapters
being the zero update; the end: the final adapters) and writes

    DIR/benchmarks/step<N>/<task>.jsonl   one record per document (same documents at every step)
    DIR/benchmarks/step<N>/summary.json   {task: n, acc / acc_norm or pass@1, 95% CIs, ...}

`retention` pairs the two steps document by document: whether distillation cost a skill the
student had. The same files come from `python -m cliffdistill.evaluate --workdir DIR --tasks ...`
(`evaluate_workdir`) for any saved checkpoint of a finished run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from cliffdistill import stats
from cliffdistill.models.lora import LoraConfig, LoraParams
from cliffdistill.run import assembly, distributed, evaluation, rundir
from cliffdistill.run.assembly import Setup
from cliffdistill.tasks import hub, runner
from cliffdistill.tasks.multiple_choice import Model

log = logging.getLogger(__name__)

BENCH_DIR = "benchmarks"
FIELD = "eval.benchmarks.tasks"


def parse_tasks(spec: str, field: str = FIELD) -> dict[str, str]:
    """"TASK=PATH,..." -> {task: path}; an unknown task, a missing '=' or a missing file is
    refused naming `field`."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"config field `{field}`: {item!r} is not TASK=PATH")
        try:
            runner.check_task(name)
        except ValueError as e:
            raise ValueError(f"config field `{field}`: {e}") from None
        if path != hub.HUB and not Path(path).exists():
            raise ValueError(f"config field `{field}`: {name}'s data {path} does not exist")
        out[name] = path
    return out


def run_root(workdir: str | Path) -> Path:
    """Where a run's own benchmarks live: DIR/benchmarks (holding step<N>/ folders)."""
    return Path(workdir) / BENCH_DIR


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step{int(step)}"


def done(workdir: str | Path, step: int) -> bool:
    """Whether the run's step-`step` benchmarks are written (process 0's answer on every
    process, so a multi-process run scores them together or not at all)."""
    written = (step_dir(run_root(workdir), step) / runner.SUMMARY_FILE).is_file()
    return bool(distributed.broadcast_from_main(int(written)))


def score_model(model: Model, tasks: dict[str, str], b: ml_collections.ConfigDict,
                out: Path | None, say: Callable[[str], Any] | None = None,
                sampling: runner.Sampling = runner.GREEDY,
                progress: Callable[[str], runner.Progress] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Every task on `model`, written to `out` (atomically per file; None: not written, as on
    the processes of a multi-process run other than the first); returns the summaries.
    `progress(task)` gives the task's runner.Progress (the CLI's tqdm bars)."""
    results = {}
    for name, path in tasks.items():
        results[name] = runner.run_task(name, path, model, num_fewshot=b.num_fewshot,
                                        limit=b.limit or None, batch_size=b.batch_size,
                                        max_new_tokens=b.max_new_tokens, sampling=sampling,
                                        progress=None if progress is None else progress(name))
        if say is not None:
            say(f"{name}: {runner.format_table({name: results[name][1]}).splitlines()[-1]}")
    summaries = {k: s for k, (_, s) in results.items()}
    if out is not None:
        for name, (records, _) in results.items():
            rundir.write_jsonl(out / f"{name}.jsonl", records)
        rundir.write_json(out / runner.SUMMARY_FILE, summaries)  # last: marks the step done
    return summaries


def evaluate_step(s: Setup, lora_layers: Any, step: int, workdir: str | Path, enabled: bool
                  ) -> dict[str, dict[str, Any]] | None:
    """The run's benchmarks on its student with `lora_layers` after `step` steps (None when the
    config lists none or they are already written: a resume does not redo them)."""
    cfg = s.cfg
    tasks = parse_tasks(cfg.eval.benchmarks.tasks)
    if not tasks or done(workdir, step):
        return None
    lora = LoraParams(lora_layers, LoraConfig.from_section(cfg.lora).scale)
    model = Model(s.student_cfg, s.student_params, s.tokenizer, lora)
    return score_model(model, tasks, cfg.eval.benchmarks,
                       step_dir(run_root(workdir), step) if enabled else None,
                       say=lambda m: log.info("benchmarks step %d %s", step, m))


def read_records(root: str | Path, step: int, task: str) -> list[dict[str, Any]]:
    return rundir.read_jsonl(step_dir(root, step) / f"{task}.jsonl")


def steps_written(root: str | Path) -> list[int]:
    """The steps with benchmarks under `root` (a run's DIR/benchmarks or an --out folder)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(p.name[4:]) for p in root.iterdir()
                  if p.name.startswith("step") and p.name[4:].isdigit()
                  and (p / runner.SUMMARY_FILE).is_file())


def metric_of(record: dict[str, Any]) -> str:
    """The per-document score a retention table compares: `acc` (multiple choice),
    `exact_match` (GSM8K), `passed` (HumanEval)."""
    return next(m for m in ("acc", "exact_match", "passed") if m in record)


def paired(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], where: str
           ) -> np.ndarray:
    """[N, 2] scores (before, after) of the same documents, matched by doc_id (and subject); a
    document with several records (HumanEval samples) scores the mean over them."""
    def per_doc(records: Sequence[dict[str, Any]]) -> dict[tuple, float]:
        scores: dict[tuple, list[float]] = {}
        for r in records:
            key = (r.get("subject", ""), r.get("task_id", ""), r["doc_id"])
            scores.setdefault(key, []).append(float(r[metric_of(r)]))
        return {k: float(np.mean(v)) for k, v in scores.items()}

    a, b = per_doc(after), per_doc(before)
    if a.keys() != b.keys():
        raise ValueError(f"{where}: the two steps scored different documents "
                         f"({len(b)} vs {len(a)}); evaluate both with the same data and --limit")
    keys = sorted(b)
    return np.array([[b[k], a[k]] for k in keys], np.float64)


def retention(root: str | Path) -> dict[str, dict[str, Any]]:
    """{task: before, after, n, diff and its 95% t-interval over documents} between the first
    and the last step benchmarked under `root` ({} when fewer than two steps were scored)."""
    steps = steps_written(root)
    if len(steps) < 2:
        return {}
    first, last = steps[0], steps[-1]
    out = {}
    summary = rundir.read_json(step_dir(root, last) / runner.SUMMARY_FILE) or {}
    for task in summary:
        x = paired(read_records(root, first, task), read_records(root, last, task),
                   f"{root} {task}")
        d = x[:, 1] - x[:, 0]
        mean, low, high = stats.mean_ci(d)  # one document: no interval (nan)
        out[task] = {"before": float(x[:, 0].mean()), "after": float(x[:, 1].mean()),
                     "diff": mean, "diff_ci": [low, high], "n": int(len(d)),
                     "steps": [first, last]}
    return out


def evaluate_workdir(workdir: str | Path, steps: Sequence[int | str], tasks: dict[str, str],
                     out: str | Path | None, b: ml_collections.ConfigDict,
                     echo: Callable[[str], Any] | None = print,
                     sampling: runner.Sampling = runner.GREEDY,
                     progress: Callable[[str], runner.Progress] | None = None
                     ) -> dict[int, dict[str, Any]]:
    """Benchmarks of a run's checkpoints (`steps`: each N, "latest" or "all"; 0 = the base
    student) into OUT/step<N>/ (default DIR/benchmarks/step<N>/, beside the run's own); with two
    or more steps also echoes the retention between the first and the last."""
    cfg = evaluation.load_run_config(workdir)
    s = assembly.make_setup(cfg)
    root = Path(out) if out else run_root(workdir)
    wanted = sorted({n for step in steps for n in evaluation.resolve_steps(workdir, cfg, step)})
    result = {}
    for n in wanted:
        lora = evaluation.initial_lora(s, cfg) if n == 0 else evaluation.restore_lora(s, cfg, workdir, n)
        where = step_dir(root, n)
        result[n] = score_model(Model(s.student_cfg, s.student_params, s.tokenizer, lora), tasks, b,
                                where if distributed.is_main() else None, sampling=sampling,
                                progress=progress)
        if echo is not None and distributed.is_main():
            echo(f"step {n} ({where}):\n{runner.format_table(result[n])}")
    if echo is not None and distributed.is_main() and len(wanted) > 1:
        echo(f"retention, step {wanted[0]} -> {wanted[-1]} (same documents):\n"
             f"{format_retention(retention(root))}")
    return result


def format_retention(ret: dict[str, dict[str, Any]]) -> str:
    rows = [f"{'task':<16} {'n':>6}  {'before':>7} {'after':>7} {'change':>8}  95% CI"]
    for task, r in ret.items():
        low, high = r["diff_ci"]
        rows.append(f"{task:<16} {r['n']:>6}  {r['before']:>7.4f} {r['after']:>7.4f} "
                    f"{r['diff']:>+8.4f}  [{low:+.4f}, {high:+.4f}]")
    return "\n".join(rows)

