"""The toy testbed: a synthetic GSM8K-style task and toy Qwen3 models trained here, on CPU.

`prepare(cache_dir, cfg)` builds (once; later runs reuse the cache):

* a tokenizer trained on the synthetic task (HF format, with a chat template);
* data (GSM8K-format jsonl): `size/` for the size setup (unit problems, "a zorp is
  `size_value` units"), `context_v<V>/` for each hidden unit value V of the context setup and
  `plain/` (the retention eval). Problems are mostly 2-4 steps with worked solutions of ~30-60
  tokens. Evaluation and distillation prompts come from *held-out compositions*
  (`synthetic.is_held_out`): pretraining never sees them, so no eval solution occurs verbatim
  in the pretraining stream (measured: `eval_pretrain_overlap`);
* a toy **teacher** pretrained from scratch (next-token loss on answers) on plain problems,
  zero-shot unit problems with `size_value` (knowledge it carries in its weights), and *context
  episodes* (1..k solved examples sharing a hidden unit value, then a query; some episodes show
  plain, format-only examples), so with solved examples in its prompt it infers the value: the
  same weights with that context are the context-distillation teacher, without it the student;
* a toy **student** for the size setup with its own, ~4x smaller architecture (same tokenizer),
  pretrained here on plain problems and zero-shot unit problems whose value is never
  `size_value`: it has the format and (weaker) arithmetic, not the teacher's fact. Headroom comes
  from the fact (transferable in a few steps), the gap that stays from capacity;
* the method-neutral **headroom checks** (`cliffdistill.study.testbed`): teacher - student gap, a
  ground-truth oracle's gain under the runs' LoRA rank and step budget, the eval's CI width and
  its verbatim overlap with pretraining. `testbed.json` records them; a setup that fails is
  printed loudly and marked not testable.

Everything goes through the same HF load / prompt / grade path as a real checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cliffdistill.engine import update
from cliffdistill.engine import methods
from cliffdistill.run import evaluation, lock, rundir
from cliffdistill.study import testbed
from cliffdistill.study import pool
from cliffdistill.data import gsm8k, prompts, synthetic, toy_corpus, toy_tokenizer
from cliffdistill.models import config as model_config
from cliffdistill.models import hf_io, lora as lora_lib, transformer
from cliffdistill.study import pretraining, toy_config, toy_data


# ----------------------------------------------------------------------------- measurements


@dataclasses.dataclass
class Model:
    """A loaded toy checkpoint with its tokenizer."""

    path: Path
    cfg: model_config.ModelConfig
    params: Any
    tokenizer: Any

    @classmethod
    def load(cls, path: Path) -> "Model":
        mcfg, params = hf_io.load_hf(path, dtype=jnp.float32)
        return cls(Path(path), mcfg, params, toy_tokenizer.load_tokenizer(path))


def accuracy(model: Model, examples: Sequence[gsm8k.Example], c: ml_collections.ConfigDict,
             shots: Sequence[gsm8k.Example] = (), lora: lora_lib.LoraParams | None = None,
             passage: str | None = None) -> float:
    """Greedy accuracy of `model` (+ `lora`) on `examples`, with `shots` (or a retrieved
    `passage` as the system turn) as context if given."""
    return accuracies(model, {"": examples}, c, shots, lora, passage)[""]


def accuracies(model: Model, sets: dict[str, Sequence[gsm8k.Example]], c: ml_collections.ConfigDict,
               shots: Sequence[gsm8k.Example] = (), lora: lora_lib.LoraParams | None = None,
               passage: str | None = None) -> dict[str, float]:
    """Greedy accuracy on example sets that share their questions (the context sets of each
    hidden value): generated once, graded against each set's golds -- evals dominate prepare."""
    first = next(iter(sets.values()))
    questions = [e.question for e in first]
    if any([e.question for e in exs] != questions for exs in sets.values()):
        raise ValueError("accuracies: the example sets must share their questions, in order")
    tok = model.tokenizer
    student, teacher = prompts.build_views(tok, list(first), list(shots), instruction="",
                                           teacher_system=passage)
    ids = teacher if shots or passage else student
    width = prompts.prompt_width(max(map(len, ids)), c.run.trim_multiple)  # as the runs pad
    toks, mask = prompts.pad_left(ids, tok.pad_token_id, width)
    eos = (tok.eos_token_id,)
    out = evaluation.generate_greedy(model.cfg, model.params, lora, toks, mask,
                                   max_new_tokens=c.run.max_new_tokens,
                                   batch_size=c.eval_batch_size, eos_ids=eos, pad_id=tok.pad_token_id)
    return {key: evaluation.summarize(evaluation.grade(tok, *out, questions, [e.answer for e in exs],
                                                   eos))["accuracy"]
            for key, exs in sets.items()}


def oracle(model: Model, data_dir: Path, c: ml_collections.ConfigDict) -> float:
    """The method-neutral oracle: the student (no context) with the runs' LoRA rank, learning
    rate, batch and step budget, trained by supervised NLL on the ground-truth solutions of the
    runs' training prompts; returns its eval accuracy. If this cannot move the student, no
    distillation method can be told apart from another on this setup."""
    b = c.run
    splits = toy_data.run_splits(data_dir, c)
    tok = model.tokenizer
    student_prompts, _ = prompts.build_views(tok, list(splits.train), [], instruction="")
    answers = [tok(e.solution + toy_tokenizer.END, add_special_tokens=False)["input_ids"]
               for e in splits.train]
    rows = [(p + a, [False] * len(p) + [True] * len(a)) for p, a in zip(student_prompts, answers)]
    width = prompts.prompt_width(max(len(r[0]) for r in rows), c.run.trim_multiple)
    tokens, mask = toy_data.pack(rows, width, tok.pad_token_id)
    lcfg = lora_lib.LoraConfig(rank=b.lora_rank, alpha=b.lora_alpha)
    lora0 = lora_lib.init_lora(model.cfg, lcfg, jax.random.key(c.seed), model.params)
    opt = update.make_optimizer(update.OptimConfig(lr=b.lr), b.steps)  # the runs' optimizer

    @jax.jit
    def step_fn(layers, opt_state, tok_b, mask_b):
        def loss_fn(ls):
            lora = lora_lib.LoraParams(ls, lcfg.scale)
            return pretraining.answer_nll(transformer.apply(model.cfg, model.params, tok_b[:, :-1], lora),
                               tok_b, mask_b)

        loss, grads = jax.value_and_grad(loss_fn)(layers)
        updates, opt_state = opt.update(grads, opt_state, layers)
        return optax.apply_updates(layers, updates), opt_state, loss

    layers, opt_state = lora0.layers, opt.init(lora0.layers)
    n = tokens.shape[0]
    for step in range(b.steps):
        idx = prompts.batch_indices(step, b.batch_size, n, c.seed)  # as the runs
        layers, opt_state, _ = step_fn(layers, opt_state, tokens[idx], mask[idx])
    return accuracy(model, list(splits.eval), c, lora=lora_lib.LoraParams(layers, lcfg.scale))


# ----------------------------------------------------------------------------- prepare


@dataclasses.dataclass(frozen=True)
class Prepared:
    root: Path
    tokenizer: Path
    teacher: Path
    student: Path
    plain_data: Path
    size_data: Path
    context_data: dict[int, Path]
    report: dict[str, Any]

    @property
    def testbed(self) -> dict[str, Any]:
        return self.report["testbed"]


#: The modules whose code makes the testbed (its data, tokenizer, pretraining and checks): a
#: cache built by other versions of them is refused, or rebuilt on request. Not covered: the
#: model core and optimiser (`models`, `engine`), whose equality tests pin their numerics.
TESTBED_CODE = ("cliffdistill.study.toy", "cliffdistill.study.toy_data",
                "cliffdistill.study.pretraining", "cliffdistill.study.toy_config",
                "cliffdistill.study.testbed", "cliffdistill.data.synthetic",
                "cliffdistill.data.toy_corpus", "cliffdistill.data.toy_tokenizer")


class StaleTestbed(RuntimeError):
    """A cached testbed built by other testbed code (the message says how to go on)."""


def code_digest() -> str:
    """sha256 (12 hex) of the source of `TESTBED_CODE`: which code built a cached testbed."""
    h = hashlib.sha256()
    for name in TESTBED_CODE:
        h.update(name.encode() + b"\0" + Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:12]


def _clear(root: Path) -> None:
    """Empties an interrupted or outdated build, keeping the writer lock held on it."""
    for child in root.iterdir():
        if child.name != rundir.LOCK_FILE:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def cache_root(cache_dir: str | Path, c: ml_collections.ConfigDict) -> Path:
    """The cache entry of prepare config `c`: cache_dir/toy-<hash of the config>."""
    key = hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir) / f"toy-{key[:12]}"


def _paths(root: Path, c: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(root=root, tokenizer=root / "tokenizer", teacher=root / "teacher",
                student=root / "student", plain_data=root / "plain", size_data=toy_data.size_dir(root),
                context_data={v: toy_data.context_dir(root, v) for v in c.context_values})


def pretrain_model(root: Path, name: str, m: ml_collections.ConfigDict, c: ml_collections.ConfigDict,
                   tok: Any, seed: int, say: Callable[[str], None],
                   snapshot: Callable[[int, Path], None] | None = None) -> dict[str, Any]:
    """Pretrains `name` from scratch and saves it (and its snapshots) as HF checkpoints."""
    mcfg = pretraining.model_cfg(m, len(tok), tok.eos_token_id, tok.pad_token_id)

    def save(path: Path, params: dict[str, Any]) -> None:
        hf_io.save_hf(mcfg, params, path)
        toy_tokenizer.save_tokenizer(tok, path)

    def on_snapshot(step: int, params: dict[str, Any]) -> None:
        path = root / f"{name}_snapshots" / f"step{step}"
        save(path, params)
        snapshot(step, path)

    t0 = time.time()
    params = pretraining.pretrain(mcfg, toy_data.pretraining_stream(tok, c, m, seed), m.steps, m.lr, seed=seed + 7,
                      snapshot=on_snapshot if snapshot else None,
                      snapshot_steps=tuple(m.get("snapshots", ())),
                      progress=lambda i, loss: say(f"  pretrain {name}: step {i + 1}/{m.steps} "
                                                   f"loss {loss:.3f}"))
    save(root / name, params)
    return {"params": transformer.count_params(params), "seconds": time.time() - t0,
            "config": m.to_dict()}


def _pretrain_saved_tokenizer(root: Path, name: str, m: ml_collections.ConfigDict,
                              c: ml_collections.ConfigDict, tokenizer_dir: Path, seed: int
                              ) -> dict[str, Any]:
    """`pretrain_model` in a worker process: the tokenizer comes from its saved files."""
    return pretrain_model(root, name, m, c, toy_tokenizer.load_tokenizer(tokenizer_dir), seed,
                           say=lambda line: print(line, flush=True))


def prepare(cache_dir: str | Path, c: ml_collections.ConfigDict | None = None,
            say: Callable[[str], None] = print, workers: int = 1, rebuild: bool = False) -> Prepared:
    """Builds (or reuses) the toy testbed under cache_dir/<config hash>/ and its testbed.json;
    `workers` > 1 pretrains the teacher and the student at once (`cliffdistill.study.pool`).
    The cache entry has one builder (its writer lock); one built by other testbed code
    (`code_digest`) is refused (StaleTestbed) unless `rebuild`."""
    c = c or toy_config.default_prepare_config()
    root = cache_root(cache_dir, c)
    with lock.hold(root, "prepare toy testbed"):
        return _prepare(root, c, say, workers, rebuild)


def _prepare(root: Path, c: ml_collections.ConfigDict, say: Callable[[str], None], workers: int,
             rebuild: bool) -> Prepared:
    """`prepare`'s body, under the cache entry's lock."""
    done = root / "prepared.json"
    paths = _paths(root, c)
    digest = code_digest()
    report = rundir.read_json(done)
    if report is not None and report.get("code_digest") == digest:
        say(f"toy testbed: reusing {root}")
        say("\n".join(testbed.loud_lines(report["testbed"])))
        return Prepared(**paths, report=report)
    if report is not None and not rebuild:
        raise StaleTestbed(
            f"the toy testbed cached in {root} was built by other testbed code (code digest "
            f"{report.get('code_digest') or 'not recorded'}, this code {digest}), so its models "
            "and data may differ from what this code makes. Pass --rebuild_testbed to rebuild "
            "it there, or use another --cache_dir.")
    if report is not None:
        say(f"toy testbed: rebuilding {root} (built by other testbed code)")
    _clear(root)  # an interrupted or outdated build: start over
    t0 = time.time()
    tok = toy_corpus.build_toy_tokenizer(c.seed)
    toy_tokenizer.save_tokenizer(tok, paths["tokenizer"])
    data = toy_data.write_data(root, c)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"vocab_size": len(tok)}
    dev = gsm8k.load_jsonl(data.size / "dev.jsonl")
    snapshots: dict[int, float] = {}

    def pick(step: int, path: Path) -> None:
        snapshots[step] = accuracy(Model.load(path), dev, c)
        say(f"  student candidate: step {step}, dev accuracy {snapshots[step]:.1%}")

    # The two pretrainings are independent: with `workers` > 1 the teacher trains in a worker
    # process while the student trains here (the same programs, so the same weights), and the
    # checks that need only the student and the data run here while the teacher still trains.
    teacher_args = (root, "teacher", c.teacher, c, paths["tokenizer"], c.seed + 1)
    ex = pool.executor(1) if workers > 1 else None
    try:
        teacher = ex.submit(_pretrain_saved_tokenizer, *teacher_args) if ex is not None else None
        if teacher is None:
            report["teacher"] = pretrain_model(root, "teacher", c.teacher, c, tok, c.seed + 1, say)
        report["student"] = pretrain_model(root, "student", c.student, c, tok, c.seed + 2, say,
                                           pick)
        _keep_student_snapshot(root, paths["student"], c, report["student"], snapshots)
        t1 = time.time()
        student_checks = measure_student(c, data, paths["student"])
        timings["measure"] = time.time() - t1
        t1 = time.time()
        overlap = toy_data.pretrain_overlap(
            data.eval_solutions, [(c.teacher, c.seed + 1), (c.student, c.seed + 2)], c)
        timings["overlap"] = time.time() - t1
        if teacher is not None:
            report["teacher"] = teacher.result()
        timings["teacher"] = report["teacher"]["seconds"]
        timings["student"] = report["student"]["seconds"]
        t1 = time.time()
        # the context oracles (LoRA trainings of the teacher) in the worker, the evals here
        oracles = ({str(v): ex.submit(_oracle_at, paths["teacher"], d, c)
                    for v, d in data.contexts.items()} if ex is not None else None)
        tb = measure(c, data, paths, tok, report, student_checks, say, oracles)
        timings["measure"] += time.time() - t1
    finally:
        if ex is not None:
            pool.stop(ex)
    tb["eval_pretrain_overlap"] = overlap
    testbed.judge(tb, c.checks)
    timings["total"] = time.time() - t0
    tb["prepare_seconds"] = timings
    report.update(testbed=tb, seconds=timings["total"], config=c.to_dict(), code_digest=digest)
    rundir.write_text(root / testbed.TESTBED_JSON, json.dumps(tb, indent=2, sort_keys=True))
    rundir.write_text(done, json.dumps(report, indent=2, sort_keys=True))  # last: "complete"
    say(f"toy testbed ready in {timings['total']:.0f}s: " + summary_line(tb))
    say("\n".join(testbed.loud_lines(tb)))
    return Prepared(**paths, report=report)


def _keep_student_snapshot(root: Path, student_dir: Path, c: ml_collections.ConfigDict,
                           student: dict[str, Any], snapshots: dict[int, float]) -> None:
    """The student is its latest snapshot whose dev accuracy is <= `student.max_accuracy`."""
    eligible = [st for st, acc in snapshots.items() if acc <= c.student.max_accuracy]
    if not eligible:
        raise ValueError(f"no student snapshot has dev accuracy <= {c.student.max_accuracy} "
                         f"({snapshots}); use earlier `student.snapshots`")
    chosen = max(eligible)
    shutil.rmtree(student_dir)
    shutil.copytree(root / "student_snapshots" / f"step{chosen}", student_dir)
    student.update(snapshot_step=chosen, dev_accuracy_by_snapshot=snapshots)


def measure_student(c: ml_collections.ConfigDict, data: toy_data.Data, student_dir: Path) -> dict[str, float]:
    """The size setup's checks that need only the student: its accuracy on the size and plain
    tasks, and the ground-truth oracle's."""
    student = Model.load(student_dir)
    return {"accuracy": accuracy(student, gsm8k.load_jsonl(data.size / "test.jsonl"), c),
            "plain_accuracy": accuracy(student, gsm8k.load_jsonl(data.plain / "test.jsonl"), c),
            "oracle": oracle(student, data.size, c)}


def _oracle_at(model_dir: Path, data_dir: Path, c: ml_collections.ConfigDict) -> float:
    """`oracle` in a worker process: the model comes from its saved files."""
    return oracle(Model.load(model_dir), data_dir, c)


def measure(c: ml_collections.ConfigDict, data: toy_data.Data, paths: dict[str, Any], tok: Any,
            report: dict[str, Any], student_checks: dict[str, float],
            say: Callable[[str], None],
            oracles: dict[str, concurrent.futures.Future] | None = None) -> dict[str, Any]:
    """testbed.json's measurements (accuracies are fractions; every eval is greedy, held-out);
    `student_checks`: `measure_student`'s; `oracles`: the context oracles per value, computing
    in a worker (None: computed here)."""
    teacher = Model.load(paths["teacher"])
    plain_eval = gsm8k.load_jsonl(data.plain / "test.jsonl")
    size_eval = gsm8k.load_jsonl(data.size / "test.jsonl")
    size = {"value": c.size_value,
            "teacher": {"params": report["teacher"]["params"],
                        "accuracy": accuracy(teacher, size_eval, c)},
            "student": {"params": report["student"]["params"],
                        "accuracy": student_checks["accuracy"],
                        "plain_accuracy": student_checks["plain_accuracy"],
                        "snapshot_step": report["student"]["snapshot_step"]},
            "oracle": {"accuracy": student_checks["oracle"]}}
    size["oracle_gain"] = size["oracle"]["accuracy"] - size["student"]["accuracy"]
    size["param_ratio"] = size["teacher"]["params"] / size["student"]["params"]
    say(f"  size: teacher {size['teacher']['accuracy']:.1%}, student {size['student']['accuracy']:.1%}, "
        f"oracle {size['oracle']['accuracy']:.1%}")
    sets = {str(v): gsm8k.load_jsonl(d / "test.jsonl") for v, d in data.contexts.items()}
    student_acc = accuracies(teacher, sets, c)  # no context: one generation for every value
    format_acc = accuracies(teacher, sets, c, shots=toy_data.format_only_context(c, data.plain))
    per_value = {str(v): {"teacher": accuracy(teacher, sets[str(v)], c, shots=toy_data.run_context(d, c)),
                          "teacher_passage": accuracy(teacher, sets[str(v)], c,
                                                      passage=synthetic.passage_text(v)),
                          "student": student_acc[str(v)], "format_only": format_acc[str(v)]}
                 for v, d in data.contexts.items()}
    retention_before = accuracy(teacher, plain_eval, c)
    for v, d in data.contexts.items():
        row = per_value[str(v)]
        row["oracle"] = oracles[str(v)].result() if oracles else oracle(teacher, d, c)
        say(f"  context value {v}: " + ", ".join(f"{k} {x:.1%}" for k, x in row.items()))
    mean = lambda key: statistics.mean(r[key] for r in per_value.values())  # noqa: E731
    context = {"values": list(c.context_values), "per_value": per_value,
               "teacher": {"accuracy": mean("teacher"), "params": report["teacher"]["params"]},
               "student": {"accuracy": mean("student"), "params": report["teacher"]["params"]},
               "format_only": {"accuracy": mean("format_only")},
               "oracle": {"accuracy": mean("oracle")},
               "oracle_gain": mean("oracle") - mean("student"),
               # the context student is the base model: its plain-task accuracy before any run
               # (each context run's retention eval measures it after)
               "retention_before": retention_before}
    # the retrieval-style variant: the same student, data and oracle; the teacher reads a passage
    retrieval = {"values": list(c.context_values),
                 "teacher": {"accuracy": mean("teacher_passage"), "params": report["teacher"]["params"]},
                 "student": dict(context["student"]), "oracle": dict(context["oracle"]),
                 "oracle_gain": context["oracle_gain"]}
    return {"size": size, "context": context, "retrieval": retrieval, "n_eval": c.n_eval,
            "eval_ci_halfwidth": testbed.ci_halfwidth(c.n_eval),
            "mean_answer_tokens": toy_data.mean_answer_tokens(tok, data.eval_solutions),
            "seed_fraction": c.run.seed_fraction,
            "seed_tokens": methods.seed_tokens(c.run.seed_fraction, c.run.max_new_tokens),
            "completion_budget": c.run.max_new_tokens}


def summary_line(tb: dict[str, Any]) -> str:
    s, x = tb["size"], tb["context"]
    return (f"size: teacher {s['teacher']['accuracy']:.1%} ({s['teacher']['params']:,} params) vs "
            f"student {s['student']['accuracy']:.1%} ({s['student']['params']:,}), oracle gain "
            f"{s['oracle_gain']:+.1%}; context (values {x['values']}): teacher "
            f"{x['teacher']['accuracy']:.1%}, student {x['student']['accuracy']:.1%}, format-only "
            f"{x['format_only']['accuracy']:.1%}, oracle gain {x['oracle_gain']:+.1%}; "
            f"n_eval {tb['n_eval']} (95% half-width {tb['eval_ci_halfwidth']:.1%}), pretraining "
            f"overlap {tb['eval_pretrain_overlap']:.1%}, answers {tb['mean_answer_tokens']:.1f} "
            "tokens")
