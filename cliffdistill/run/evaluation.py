"""Held-out evaluation: greedy answers, grading, and the summary every report row is built from.

The core (`evaluate_prompts`) is shared by the trainer's periodic evals and the checkpoint-based
CLI, so a number in a report always comes from one code path:

    python -m cliffdistill.evaluate --workdir DIR [--step N|all|latest] [--baselines]
        [--max_new_tokens K] [--n_eval M] [--batch_size B]

The CLI rebuilds the run from `DIR/config.json` (same models, tokenizer and held-out prompts as
the trainer), restores the LoRA of the chosen checkpoint(s) from `DIR/checkpoints`, generates
greedily and writes `DIR/eval/step_<N>.jsonl` (one record per question), `DIR/eval/summary.json`
(one entry per step, plus the baselines), and, for `--step all`, `DIR/eval/curve.json`.
Step 0 is the untrained student (its initial adapters, b = 0). `run_baselines` is also the
sweep runner's default baseline function. See docs/EVALUATION.md.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from cliffdistill import stats
from cliffdistill.engine import methods, sampling
from cliffdistill.run import distributed, integrity, lock, rundir, validation
from cliffdistill.data import gsm8k
from cliffdistill.models import sharding
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraConfig, LoraParams
from cliffdistill.run.assembly import Setup, init_state, make_setup
from cliffdistill.stats import pct

# A completion is "repetitive" when some REPEAT_NGRAM-token n-gram occurs REPEAT_COUNT or more
# times: the signature of a degenerate loop, rare in a correct worked solution.
REPEAT_NGRAM = 8
REPEAT_COUNT = 3


def is_repetitive(ids: Sequence[int], n: int = REPEAT_NGRAM, count: int = REPEAT_COUNT) -> bool:
    if len(ids) < n * count:
        return False
    grams = collections.Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
    return max(grams.values()) >= count


def completion_flags(tokens: np.ndarray, lengths: np.ndarray, eos_ids: Sequence[int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(empty [B], repetitive [B]) of completions [B, G]: empty = nothing but EOS."""
    eos = set(int(e) for e in eos_ids)
    empty, rep = [], []
    for row, n in zip(tokens, lengths):
        ids = [int(t) for t in row[:int(n)] if int(t) not in eos]
        empty.append(len(ids) == 0)
        rep.append(is_repetitive(ids))
    return np.asarray(empty), np.asarray(rep)


@dataclasses.dataclass(frozen=True)
class Record:
    question: str
    completion: str
    extracted: str | None
    gold: str
    correct: bool
    truncated: bool
    empty: bool
    repetitive: bool
    length: int


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """Accuracy with a 95% Wilson interval, failure-mode rates, mean length, and `per_question`:
    one "1"/"0" character per record in question order, so the report can pair two runs (or a
    run and its step 0) on the same questions."""
    n = len(records)
    if n == 0:
        raise ValueError("no evaluation records (is the eval split empty? check data.n_eval)")
    correct = sum(r.correct for r in records)
    low, high = stats.wilson_interval(correct, n)
    mean = lambda f: float(np.mean([f(r) for r in records]))  # noqa: E731
    return {
        "accuracy": correct / n, "ci_low": low, "ci_high": high, "n": n, "correct": correct,
        "truncation_rate": mean(lambda r: r.truncated), "empty_rate": mean(lambda r: r.empty),
        "repetition_rate": mean(lambda r: r.repetitive), "mean_length": mean(lambda r: r.length),
        "per_question": "".join("1" if r.correct else "0" for r in records),
    }


def generate_greedy(cfg: ModelConfig, params: Any, lora: LoraParams | None, prompts: np.ndarray,
                    prompt_mask: np.ndarray, *, max_new_tokens: int, batch_size: int,
                    eos_ids: tuple[int, ...], pad_id: int, mesh: jax.sharding.Mesh | None = None,
                    moe_impl: str = "ragged", progress: Any = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy completions of every prompt [N, P], in batches: tokens [N, G], lengths, truncated."""
    out = sampling.generate_batched(
        cfg, params, lora, prompts, prompt_mask, jax.random.key(0),
        sampling.SamplingParams.greedy(max_new_tokens), batch_size=batch_size,
        gen_len=sampling.bucket_length(max_new_tokens, 1), eos_ids=eos_ids, pad_id=pad_id,
        mesh=mesh, moe_impl=moe_impl, progress=progress)
    return out.tokens, out.lengths, out.truncated


def grade(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray, truncated: np.ndarray,
          questions: Sequence[str], golds: Sequence[str], eos_ids: Sequence[int]) -> list[Record]:
    empty, rep = completion_flags(tokens, lengths, eos_ids)
    records = []
    for i, (q, gold) in enumerate(zip(questions, golds)):
        text = tokenizer.decode([int(t) for t in tokens[i, :int(lengths[i])]],
                                skip_special_tokens=True)
        pred = gsm8k.extract_answer(text)
        records.append(Record(question=q, completion=text, extracted=pred, gold=gold,
                              correct=gsm8k.is_correct(pred, gold), truncated=bool(truncated[i]),
                              empty=bool(empty[i]), repetitive=bool(rep[i]),
                              length=int(lengths[i])))
    return records


def evaluate_prompts(cfg: ModelConfig, params: Any, lora: LoraParams | None, tokenizer: Any,
                     prompts: np.ndarray, prompt_mask: np.ndarray, questions: Sequence[str],
                     golds: Sequence[str], *, max_new_tokens: int, batch_size: int,
                     eos_ids: tuple[int, ...], pad_id: int, mesh: jax.sharding.Mesh | None = None,
                     moe_impl: str = "ragged", progress: Any = None
                     ) -> tuple[dict[str, Any], list[Record]]:
    tokens, lengths, truncated = generate_greedy(
        cfg, params, lora, prompts, prompt_mask, max_new_tokens=max_new_tokens,
        batch_size=batch_size, eos_ids=eos_ids, pad_id=pad_id, mesh=mesh, moe_impl=moe_impl,
        progress=progress)
    records = grade(tokenizer, tokens, lengths, truncated, questions, golds, eos_ids)
    return summarize(records), records


# ============================================================================ run directories
#
# Everything below works on a finished (or running) training run: DIR/config.json is the resolved
# config the trainer wrote, DIR/checkpoints its orbax checkpoints (see `cliffdistill.rundir`).

EVAL_SUBDIR = "eval"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "curve.json"
BASELINES_FILE = "baselines.json"
BASELINE_ROLES = tuple(rundir.BASELINE_TITLES)

log = logging.getLogger(__name__)


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config the run's newest segment ran with, rebuilt from DIR/config.json or, after an
    accepted config change, the newest entry of DIR/config_history.jsonl (`integrity`); JSON
    lists stand in for tuples."""
    file = Path(workdir) / rundir.CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file}: no config.json; is {workdir} a training run directory "
                                "(the --workdir given to `python -m cliffdistill.train`)?")
    try:
        json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    return ml_collections.ConfigDict(integrity.current_config(workdir))


def _checkpoints(workdir: Path, cfg: ml_collections.ConfigDict) -> rundir.Checkpoints:
    path = Path(workdir) / rundir.CHECKPOINT_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no checkpoint directory; the run has saved no checkpoint "
                                "yet (use --step 0 to evaluate the untrained student)")
    return rundir.Checkpoints(workdir, keep=cfg.checkpoint.keep,
                              async_save=cfg.checkpoint.async_save)


def checkpoint_steps(workdir: str | Path,
                     cfg: ml_collections.ConfigDict | None = None) -> list[int]:
    """The steps of the checkpoints saved in DIR/checkpoints, ascending."""
    cfg = load_run_config(workdir) if cfg is None else cfg
    with _checkpoints(Path(workdir), cfg) as ckpt:
        return ckpt.all_steps()


def _initial_state(setup: Setup, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return init_state(setup, methods.num_steps(cfg.method, cfg.schedule))


def initial_lora(setup: Setup, cfg: ml_collections.ConfigDict) -> LoraParams:
    """The run's step-0 adapters (`b` = 0): exactly the base model, as the trainer's step-0 eval
    sees it, and with the same pytree as a restored checkpoint (one compiled sampler for all)."""
    return LoraParams(_initial_state(setup, cfg)["lora"], LoraConfig.from_section(cfg.lora).scale)


def restore_lora(setup: Setup, cfg: ml_collections.ConfigDict, workdir: str | Path,
                 step: int | None = None) -> LoraParams:
    """The LoRA adapters of checkpoint `step` (None: the latest) of the run in `workdir`.

    The restore target is the trainer's own `init_state` (so the checkpoint's tree must match the
    run's config); only `setup.cfg/mesh/student_cfg` and the *shapes* of `setup.student_params`
    are used. Every process of a multi-process job must call this. A checkpoint that cannot be
    read raises `rundir.CheckpointError` naming its step and path.
    """
    workdir = Path(workdir)
    with _checkpoints(workdir, cfg) as ckpt:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{workdir / 'checkpoints'}: no checkpoint saved yet "
                                    "(use --step 0 to evaluate the untrained student)")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise ValueError(f"{workdir / 'checkpoints'} has no checkpoint for step {step}; saved "
                             f"steps: {steps} (checkpoint.keep={cfg.checkpoint.keep} keeps only "
                             "the most recent ones)")
        state = ckpt.restore(step, _initial_state(setup, cfg))
    return LoraParams(state["lora"], LoraConfig.from_section(cfg.lora).scale)


def evaluate_arrays(setup: Setup, model_cfg: ModelConfig, params: Any, lora: LoraParams | None,
                    prompts: np.ndarray, prompt_mask: np.ndarray, *, max_new_tokens: int,
                    batch_size: int | None = None, progress: Any = None
                    ) -> tuple[dict[str, Any], list[Record]]:
    """Greedy-evaluates one model (cfg, params, lora) on prompt arrays [N, P] of `setup.eval`'s
    questions (any view: student or teacher), batched and sharded on `setup.mesh`."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if prompts.shape[0] != len(setup.eval.questions):
        raise ValueError(f"{prompts.shape[0]} prompts for {len(setup.eval.questions)} eval "
                         "questions")
    batch_size = int(batch_size or setup.cfg.eval.batch_size)
    sharding.check_batch_divisible(batch_size, setup.mesh, "eval.batch_size")
    with jax.set_mesh(setup.mesh):
        return evaluate_prompts(
            model_cfg, params, lora, setup.tokenizer, prompts, prompt_mask, setup.eval.questions,
            setup.eval.golds, max_new_tokens=max_new_tokens, batch_size=batch_size,
            eos_ids=setup.eos_ids, pad_id=setup.pad_id, mesh=setup.mesh,
            moe_impl=setup.cfg.moe_impl, progress=progress)


def _baseline_specs(s: Setup) -> dict[str, tuple | None]:
    """role -> (model label, model cfg, params, view) or None; LoRA is always off."""
    cfg = s.cfg
    student = (cfg.student.path, s.student_cfg, s.student_params, "student")
    if cfg.setup == "size":
        teacher = (cfg.teacher.path, s.teacher_cfg, s.teacher_params, "student")
        with_context = ((cfg.teacher.path, s.teacher_cfg, s.teacher_params, "teacher")
                        if cfg.data.context != "none" else None)
    else:  # context distillation: the teacher IS the base model with its context
        teacher = (cfg.student.path, s.student_cfg, s.student_params, "teacher")
        with_context = None
    return {"student": student, "teacher": teacher, "teacher_with_context": with_context}


def questions_digest(setup: Setup) -> str:
    """Identifies the evaluated question set (questions and golds): entries are comparable only
    when it and the token budget agree."""
    h = hashlib.sha256(json.dumps([setup.eval.questions, setup.eval.golds]).encode())
    return h.hexdigest()[:16]


def _write_records(path: Path, records: Sequence[Record]) -> None:
    rundir.write_jsonl(path, (dataclasses.asdict(r) for r in records))


def run_baselines(setup_config: ml_collections.ConfigDict, out_path: str | Path, *,
                  setup_obj: Setup | None = None, max_new_tokens: int | None = None,
                  batch_size: int | None = None, records_dir: str | Path | None = None,
                  reuse: dict[str, tuple[dict, list[Record]]] | None = None,
                  progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Step-0 baselines of a setup on its held-out questions; writes them to `out_path` (JSON).

    * `student`: the student base model, LoRA off, on the student view (= every run's step 0);
    * `teacher`: size setup: the teacher checkpoint on the student view (no context);
      context setup: the base model with its context (the teacher view);
    * `teacher_with_context`: size setup with `data.context != "none"`: the teacher checkpoint
      on the teacher view; otherwise None.

    Returns `{"student": EVAL, "teacher": EVAL, "teacher_with_context": EVAL | None}` where EVAL
    is `summarize()`'s dict plus `model`, `view` and `max_new_tokens`. The sweep runner calls
    this as `run_baselines(setup_config, out_path)`. `records_dir` also writes each role's
    per-question records (`<role>.jsonl`); `reuse` maps a role to an already computed
    (summary, records) with the same budget (the CLI's step 0 is the student baseline).
    """
    s = setup_obj if setup_obj is not None else make_setup(setup_config)
    budget = int(max_new_tokens or s.cfg.eval.max_new_tokens)
    out: dict[str, Any] = {}
    for role, spec in _baseline_specs(s).items():
        if spec is None:
            out[role] = None
            continue
        label, mcfg, params, view = spec
        t0 = time.time()
        if reuse and role in reuse:
            summary, records = reuse[role]
            summary = {k: v for k, v in summary.items() if k not in ("step", "status")}
        else:
            summary, records = evaluate_arrays(
                s, mcfg, params, None, getattr(s.eval, view), getattr(s.eval, f"{view}_mask"),
                max_new_tokens=budget, batch_size=batch_size,
                progress=_progress_fn(progress, role))
        summary = {**summary, "model": str(label), "view": view, "max_new_tokens": budget,
                   "questions_digest": questions_digest(s),
                   "seconds": summary.get("seconds", time.time() - t0)}
        out[role] = summary
        if records_dir is not None and distributed.is_main():
            _write_records(Path(records_dir) / f"{role}.jsonl", records)
    if distributed.is_main():
        rundir.write_json(Path(out_path), out)
    distributed.barrier("cliffdistill.run.evaluation.run_baselines")
    return out


def _progress_fn(progress: Callable[[str], Any] | None, label: str) -> Any:
    if progress is None:
        return None
    return lambda done, total: progress(f"{label}: {done}/{total}")


def _parse_step(step: int | str) -> int | str:
    if isinstance(step, int):
        return step
    text = str(step).strip().lower()
    if text in ("all", "latest"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--step={step!r}: use a step number, 'latest' or 'all'") from None


def resolve_steps(workdir: str | Path, cfg: ml_collections.ConfigDict,
                  step: int | str) -> list[int]:
    """`latest` -> [newest checkpoint]; `all` -> [0, every checkpoint]; N -> [N] (0: LoRA off)."""
    step = _parse_step(step)
    if step == 0:
        return [0]
    saved = checkpoint_steps(workdir, cfg)
    if not saved:
        raise FileNotFoundError(f"{Path(workdir) / 'checkpoints'}: no checkpoint saved yet "
                                "(use --step 0 to evaluate the untrained student)")
    if step == "latest":
        return [saved[-1]]
    if step == "all":
        return [0] + saved
    if step not in saved:
        raise ValueError(f"{Path(workdir) / 'checkpoints'} has no checkpoint for step {step}; "
                         f"saved steps: {saved} (and 0 = the untrained student)")
    return [step]


def format_table(rows: Sequence[tuple[str, dict[str, Any] | None]]) -> str:
    """A plain-text table of (label, EVAL) rows."""
    head = ("model", "acc %", "95% CI", "n", "trunc %", "empty %", "rep %", "mean len")
    body = []
    for label, e in rows:
        if e is None:
            body.append((label, "n/a", "", "", "", "", "", ""))
            continue
        body.append((label, pct(e["accuracy"], missing='-'), f"[{pct(e['ci_low'], missing='-')}, {pct(e['ci_high'], missing='-')}]",
                     str(e["n"]), pct(e["truncation_rate"], missing='-'), pct(e["empty_rate"], missing='-'),
                     pct(e["repetition_rate"], missing='-'), f"{e['mean_length']:.1f}"))
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in body])


def evaluate_run(workdir: str | Path, step: int | str = "latest", *, baselines: bool = False,
                 max_new_tokens: int | None = None, n_eval: int | None = None,
                 batch_size: int | None = None, setup_obj: Setup | None = None,
                 echo: Callable[[str], Any] | None = print,
                 progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Evaluates checkpoint(s) of the run in `workdir` (and, with `baselines`, the step-0
    baselines) on its held-out questions; writes DIR/eval/ (process 0) and returns
    `{"steps": {step: EVAL}, "baselines": {...} | None, "table": str, "skipped": [...]}`.
    A checkpoint that cannot be restored fails a single `step` with its step and path named;
    `step="all"` skips it with a warning (listed in `skipped` and summary.json).

    DIR/eval has one writer (`lock`): a second evaluation of the same run is refused at once;
    training into DIR meanwhile is not (it never writes DIR/eval).

    `n_eval` overrides `data.n_eval` (a fresh seeded sample of that many held-out questions; the
    training split does not depend on it); `max_new_tokens` overrides `eval.max_new_tokens`.
    """
    load_run_config(workdir)  # a directory that is not a run is refused before DIR/eval exists
    with lock.hold(Path(workdir) / EVAL_SUBDIR, "evaluate"):
        return _evaluate_run(workdir, step, baselines=baselines, max_new_tokens=max_new_tokens,
                             n_eval=n_eval, batch_size=batch_size, setup_obj=setup_obj,
                             echo=echo, progress=progress)


def _evaluate_run(workdir: str | Path, step: int | str = "latest", *, baselines: bool = False,
                 max_new_tokens: int | None = None, n_eval: int | None = None,
                 batch_size: int | None = None, setup_obj: Setup | None = None,
                 echo: Callable[[str], Any] | None = print,
                 progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """`evaluate_run`'s body, under DIR/eval's writer lock."""
    workdir = Path(workdir)
    cfg = load_run_config(workdir)
    if n_eval is not None:
        if n_eval < 1:
            raise ValueError(f"--n_eval={n_eval} must be >= 1")
        cfg.data.n_eval = int(n_eval)
    steps = resolve_steps(workdir, cfg, step)
    s = setup_obj if setup_obj is not None else make_setup(cfg)
    budget = int(max_new_tokens or cfg.eval.max_new_tokens)
    if budget < 1:
        raise ValueError(f"--max_new_tokens={budget} must be >= 1")
    eval_dir = workdir / EVAL_SUBDIR
    summary_file = eval_dir / SUMMARY_FILE
    previous = rundir.read_json(summary_file) or {}
    stored = dict(previous.get("steps", {}))
    n_questions, digest = len(s.eval.questions), questions_digest(s)

    def same_eval(e: dict | None) -> bool:  # comparable: same budget and question set
        return (bool(e) and e.get("max_new_tokens") == budget
                and e.get("questions_digest") == digest)

    results: dict[int, dict[str, Any]] = {}
    computed: dict[int, tuple[dict, list[Record]]] = {}
    skipped: list[dict[str, Any]] = []  # --step all: checkpoints that could not be restored
    if distributed.is_main():
        validation.check_workdir(eval_dir)  # one plain sentence if DIR/eval cannot be written
    for n in steps:
        t0 = time.time()
        try:
            lora = initial_lora(s, cfg) if n == 0 else restore_lora(s, cfg, workdir, n)
        except rundir.CheckpointError as e:
            if _parse_step(step) != "all":
                raise
            log.warning("--step all: skipping an unrestorable checkpoint: %s", e)  # the others stand
            skipped.append({"step": n, "error": str(e)})
            continue
        summary, records = evaluate_arrays(
            s, s.student_cfg, s.student_params, lora, s.eval.student, s.eval.student_mask,
            max_new_tokens=budget, batch_size=batch_size,
            progress=_progress_fn(progress, f"step {n}"))
        summary.update(step=n, max_new_tokens=budget, questions_digest=digest,
                       seconds=time.time() - t0)
        computed[n] = (summary, records)
        results[n] = summary
        if distributed.is_main():
            _write_records(eval_dir / f"step_{n}.jsonl", records)
    base = previous.get("baselines")
    if baselines:
        reuse = {"student": computed[0]} if 0 in computed else None
        base = run_baselines(cfg, eval_dir / BASELINES_FILE, setup_obj=s, max_new_tokens=budget,
                             batch_size=batch_size, records_dir=eval_dir / "baselines", reuse=reuse,
                             progress=progress)
    # status vs the untrained student (same budget and questions), as the trainer reports it
    candidates = [results.get(0), stored.get("0"), (base or {}).get("student")]
    start = next((c for c in candidates if same_eval(c)), None)
    for n, summary in results.items():
        if start is not None:
            summary["status"] = stats.classify_status(summary["accuracy"], start["accuracy"],
                                                      cfg.eval.status)
        stored[str(n)] = summary
    if distributed.is_main():
        out = {"workdir": str(workdir),
               "steps": dict(sorted(stored.items(), key=lambda kv: int(kv[0])))}
        if base is not None:
            out["baselines"] = base
        if skipped:
            out["skipped_checkpoints"] = skipped
        rundir.write_json(summary_file, out)
        if _parse_step(step) == "all":
            rundir.write_json(eval_dir / CURVE_FILE, [results[n] for n in sorted(results)])
    distributed.barrier("cliffdistill.run.evaluation.evaluate_run")

    rows: list[tuple[str, dict | None]] = []
    if base is not None:
        note = "" if all(same_eval(e) for e in base.values() if e) else " (other budget)"
        for role, title in rundir.BASELINE_TITLES.items():
            if base.get(role) is not None or role != "teacher_with_context":
                rows.append((f"baseline: {title}{note}", base.get(role)))
    rows += [(f"step {n}" + (f" [{results[n]['status']}]" if "status" in results[n] else ""),
              results[n]) for n in sorted(results)]
    rows += [(f"step {k['step']} [unrestorable, skipped]", None) for k in skipped]
    table = format_table(rows)
    if echo is not None and distributed.is_main():
        echo(f"{workdir}: {n_questions} held-out questions ({cfg.data.eval_split} split), greedy, "
             f"max_new_tokens={budget}")
        echo(table)
        for line in integrity.history_lines(workdir):
            echo(line)
    return {"steps": results, "baselines": base, "table": table, "skipped": skipped}
