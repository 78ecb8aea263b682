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
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cliffdistill.engine import methods
from cliffdistill.run import evaluation, loop
from cliffdistill.study import testbed
from cliffdistill.study import pool
from cliffdistill.data import gsm8k, prompts, synthetic, toy_corpus, toy_tokenizer
from cliffdistill.models import config as model_config
from cliffdistill.models import hf_io, lora as lora_lib, transformer

Batch = tuple[np.ndarray, np.ndarray]


def run_budget() -> ml_collections.ConfigDict:
    """The distillation-run budget the testbed is calibrated for.

    `configs/toy.py` reads it, and the oracle check trains with it, so "the oracle can move the
    student" is a statement about the very budget the methods get.
    """
    return ml_collections.ConfigDict(dict(
        lora_rank=8, lora_alpha=16.0, lr=3e-3, steps=40, batch_size=32,
        max_new_tokens=128,  # completion budget of rollouts, teacher samples and evals
        trim_multiple=32,  # prompt views / each step's completions padded to a multiple of 32
        seed_fraction=methods.STUDY_SEED_FRACTION,  # teacher-seeded prefix: 20/256 of it
        n_fewshot=64, split_seed=0))


def default_prepare_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.difficulty = {"2": 1.0, "3": 1.0, "4": 1.0}  # equation lines per problem -> weight
    c.style = "worked"  # synthetic.STYLES: worked solutions are ~14 tokens a line
    c.held_out_mod = synthetic.HELD_OUT_MOD  # 1 in this many compositions is held out
    c.n_eval = 512  # held-out eval problems per setup (and per context value)
    c.n_dev = 256  # held-out dev problems (student snapshot choice; never evaluated on)
    c.n_train_prompts = 256  # distillation prompts per setup (train split)
    c.context_k = 2  # solved examples in the context-distillation teacher's prompt
    c.context_values = (3, 5, 8)  # hidden unit values of the context setup (one per run seed)
    c.format_episode_fraction = 0.25  # pretraining episodes whose shots are format-only
    # pretraining episodes that state the value in a retrieved passage (a system turn) instead of
    # solved examples: the retrieval-style context variant's teacher can read one
    c.passage_episode_fraction = 0.2
    # The size setup's task: unit problems whose value (a zorp is `size_value` units) the teacher
    # learned in pretraining and the student never saw -- knowledge a few supervised steps can
    # transfer -- on top of the capacity gap (the student's arithmetic stays weaker). A plain
    # arithmetic gap alone gives no headroom: LoRA on the runs' budget cannot teach arithmetic
    # (measured: ground-truth oracle +0.8..+5.5 pp at 40-100 steps, any learning rate).
    c.size_value = 6  # not one of context_values
    c.unit_fraction = 0.25  # share of a plain pretraining batch that is zero-shot unit problems
    # 1000 pretraining steps (prepare's critical path: 330 s vs 435 s for 1500, cold, 2 cores). It
    # costs teacher accuracy, measured: size 97.9% -> 77.3%, context 90.7% -> 59.2% (1500 -> 1000
    # steps); both setups still pass the headroom checks (docs/PERFORMANCE.md)
    c.teacher = ml_collections.ConfigDict(dict(
        layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, mlp=192, steps=1000, batch=32,
        lr=3e-3, episode_every=4, knows_size_value=True))
    # Half the width, so ~4.3x fewer parameters (the embedding is shared by every width); two
    # layers, because locating the i-th operand and carrying the running count needs depth.
    # Its zero-shot unit problems use every value but size_value: it knows the format, not the fact.
    c.student = ml_collections.ConfigDict(dict(
        layers=2, hidden=32, heads=2, kv_heads=1, head_dim=16, mlp=64, steps=2500, batch=32,
        lr=3e-3, episode_every=0, knows_size_value=False, snapshots=(2500,), max_accuracy=0.30))
    c.seq_len = 128  # pretraining sequence length of plain problems (episodes use 3x)
    # each pretraining batch is cut to its longest row rounded up to this (0: seq_len / 3 x
    # seq_len): attention's cost is quadratic in the padding, which changes no real token
    c.pretrain_pad_multiple = 16
    c.run = run_budget()
    c.checks = testbed.default_checks()
    c.eval_batch_size = 256
    return c


def model_cfg(m: ml_collections.ConfigDict, vocab: int, eos: int, pad: int) -> model_config.ModelConfig:
    return model_config.ModelConfig(
        model_type="qwen3", vocab_size=vocab, hidden_size=m.hidden, num_layers=m.layers,
        num_heads=m.heads, num_kv_heads=m.kv_heads, head_dim=m.head_dim, intermediate_size=m.mlp,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        max_position_embeddings=1024, eos_token_ids=(eos,), pad_token_id=pad)


# ----------------------------------------------------------------------------- pretraining data


@dataclasses.dataclass(frozen=True)
class StreamItem:
    """One pretraining example: prompt text, answer text, and every solution text it shows
    (its shots' and its own: what the overlap measurement searches)."""

    prompt: str
    answer: str
    shown: tuple[str, ...]


def _encode(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + answer, and which of them are answer tokens (the loss targets)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer + toy_tokenizer.END, add_special_tokens=False)["input_ids"]
    return p + a, [False] * len(p) + [True] * len(a)


def pack(examples: Sequence[tuple[list[int], list[bool]]], length: int, pad: int) -> Batch:
    """Right-pads to [N, length] tokens and a target mask (examples longer than `length` dropped)."""
    keep = [(t, m) for t, m in examples if len(t) <= length]
    tokens = np.full((len(keep), length), pad, np.int32)
    mask = np.zeros((len(keep), length), bool)
    for i, (t, m) in enumerate(keep):
        tokens[i, :len(t)] = t
        mask[i, :len(m)] = m
    return tokens, mask


def _difficulty(c: ml_collections.ConfigDict) -> dict[int, float]:
    return {int(k): float(v) for k, v in c.difficulty.items()}


def _gen_kw(c: ml_collections.ConfigDict, split: str) -> dict[str, Any]:
    return dict(difficulty=_difficulty(c), style=c.style, split=split, held_out_mod=c.held_out_mod)


def _is_episode_step(m: ml_collections.ConfigDict, step: int) -> bool:
    return bool(m.episode_every) and step % m.episode_every == m.episode_every - 1


def stream_items(c: ml_collections.ConfigDict, m: ml_collections.ConfigDict, seed: int,
                 step: int) -> list[StreamItem]:
    """The pretraining examples of `step` (a pure function of its arguments); only compositions
    of the "seen" split, fresh problems every step.

    Every `episode_every`-th step (0: never) holds context episodes: 0..context_k solved examples
    sharing a random unit value (a `format_episode_fraction` of them format-only: plain examples
    that reveal no value), then a query; the other steps hold plain problems.
    """
    step_seed = int(np.random.default_rng([seed, step]).integers(2**31))
    if not _is_episode_step(m, step):
        n_unit = round(c.unit_fraction * m.batch)
        problems = synthetic.generate(m.batch - n_unit, seed=step_seed, **_gen_kw(c, "seen"))
        for i, v in enumerate(unit_values(c, m, step_seed, n_unit)):
            problems += synthetic.generate(1, seed=step_seed + 1 + i, variant="context",
                                           rule_value=v, **_gen_kw(c, "seen"))
        return [StreamItem(synthetic.prompt_text(p), p.solution, (p.solution,)) for p in problems]
    rng = np.random.default_rng(step_seed)
    items = []
    for i in range(m.batch):
        if rng.random() < c.passage_episode_fraction:
            (e,) = synthetic.make_episodes(1, seed=step_seed + i, k=0, **_gen_kw(c, "seen"))
            items.append(StreamItem(synthetic.prompt_text(e.query, system=synthetic.passage_text(
                e.rule_value)), e.query.solution, (e.query.solution,)))
            continue
        # >= 1 shot: a zero-shot unit problem means `size_value` to a model that knows it
        k = int(rng.integers(1, c.context_k + 1))
        shots = "plain" if rng.random() < c.format_episode_fraction else "context"
        (e,) = synthetic.make_episodes(1, seed=step_seed + i, k=k, shot_variant=shots,
                                       **_gen_kw(c, "seen"))
        items.append(StreamItem(synthetic.episode_prompt_text(e), e.query.solution,
                                tuple(s.solution for s in e.shots) + (e.query.solution,)))
    return items


def unit_values(c: ml_collections.ConfigDict, m: ml_collections.ConfigDict, seed: int,
                n: int) -> list[int]:
    """The hidden values of a step's `n` zero-shot unit problems: always `size_value` for a model
    that knows it (the teacher), uniform over the other values for one that does not."""
    if m.knows_size_value:
        return [c.size_value] * n
    lo, hi = synthetic.CONTEXT_RULE_RANGE
    others = [v for v in range(lo, hi + 1) if v != c.size_value]
    return [int(v) for v in np.random.default_rng([seed, 1]).choice(others, n)]


def pretraining_stream(tokenizer: Any, c: ml_collections.ConfigDict, m: ml_collections.ConfigDict,
                       seed: int) -> Callable[[int], Batch]:
    """batch(step) -> (tokens [B, T], target mask [B, T]) of `stream_items`; rows longer than
    seq_len (plain steps) or 3 x seq_len (episode steps) are dropped, and T is the longest row
    rounded up to `pretrain_pad_multiple` (each distinct T compiles the step once)."""
    pad = tokenizer.pad_token_id

    def batch(step: int) -> Batch:
        rows = [_encode(tokenizer, it.prompt, it.answer) for it in stream_items(c, m, seed, step)]
        limit = (3 if _is_episode_step(m, step) else 1) * c.seq_len
        longest = max((len(t) for t, _ in rows if len(t) <= limit), default=0)
        return pack(rows, prompts.trimmed_length(longest, c.pretrain_pad_multiple, limit), pad)

    return batch


def line_suffixes(solution: str) -> Iterable[str]:
    """`solution` and each of its tails that starts at a line: the texts another solution could
    share with it verbatim (solutions end with the answer line, so a shared text is a tail)."""
    lines = solution.split("\n")
    return ("\n".join(lines[i:]) for i in range(len(lines)))


def pretrain_overlap(eval_solutions: Sequence[str], streams: Iterable[tuple[ml_collections.ConfigDict, int]],
                     c: ml_collections.ConfigDict) -> float:
    """Fraction of `eval_solutions` that occur verbatim (as a whole solution or a line-aligned
    tail of one) in the given pretraining streams: [(model section, stream seed)], every step."""
    seen: set[str] = set()
    for m, seed in streams:
        for step in range(m.steps):
            for item in stream_items(c, m, seed, step):
                for text in item.shown:
                    seen.update(line_suffixes(text))
    if not eval_solutions:
        return 0.0
    return sum(s in seen for s in eval_solutions) / len(eval_solutions)


def pretrain(mcfg: model_config.ModelConfig, batch_fn: Callable[[int], Batch],
             steps: int, lr: float, seed: int, log_every: int = 100,
             progress: Callable[[int, float], None] | None = None,
             snapshot: Callable[[int, dict[str, Any]], None] | None = None,
             snapshot_steps: Sequence[int] = ()) -> dict[str, Any]:
    """Next-token training from scratch on answer tokens (AdamW, warmup + cosine). Returns params;
    `snapshot(step, params)` is called after each of `snapshot_steps` (1-based)."""
    params = transformer.init_params(mcfg, jax.random.key(seed))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10 + 1), steps, lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
    opt_state = opt.init(params)

    @jax.jit
    def step_fn(params, opt_state, tokens, mask):
        def loss_fn(p):
            return _answer_nll(transformer.apply(mcfg, p, tokens[:, :-1]), tokens, mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(steps):
        tokens, mask = batch_fn(i)
        params, opt_state, loss = step_fn(params, opt_state, tokens, mask)
        if progress is not None and (i % log_every == 0 or i == steps - 1):
            progress(i, float(loss))
        if snapshot is not None and i + 1 in snapshot_steps:
            snapshot(i + 1, params)
    return params


def _answer_nll(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token NLL of the answer tokens (targets shifted by one)."""
    lp = jax.nn.log_softmax(logits)
    tgt = jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]
    m = mask[:, 1:]
    return -jnp.sum(tgt * m) / jnp.maximum(m.sum(), 1)


# ----------------------------------------------------------------------------- data splits


def distinct(n: int, seed: int, exclude: set[str], **kw: Any) -> list[synthetic.Problem]:
    """n problems with pairwise-distinct questions, none in `exclude`."""
    out: list[synthetic.Problem] = []
    seen = set(exclude)
    for p in synthetic.generate(8 * n + 64, seed=seed, **kw):
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
            if len(out) == n:
                return out
    raise ValueError(f"the synthetic task has fewer than {n} distinct new questions for {kw}; "
                     "lower the toy's n_eval / n_train_prompts or raise its difficulty")


def context_dir(root: Path, value: int) -> Path:
    return Path(root) / f"context_v{value}"


def size_dir(root: Path) -> Path:
    """The size setup's data: zero-shot unit problems with the teacher's `size_value`."""
    return Path(root) / "size"


@dataclasses.dataclass(frozen=True)
class Data:
    plain: Path
    size: Path
    contexts: dict[int, Path]
    eval_solutions: list[str]  # every eval solution (plain, size and each context value)


def write_data(root: Path, c: ml_collections.ConfigDict) -> Data:
    """plain/{train,test,dev}.jsonl (retention eval), size/{train,test,dev}.jsonl (unit problems
    with `size_value`) and context_v<V>/{train,test}.jsonl for each context value V.

    Every eval, dev and train problem is from a held-out composition (never pretrained on);
    questions are pairwise distinct across splits. The unit questions are the same for every
    value (the question text does not depend on it); only the solutions differ.
    """
    held = _gen_kw(c, "held_out")
    n_train = c.n_train_prompts + c.run.n_fewshot
    plain_eval = distinct(c.n_eval, c.seed + 101, set(), **held)
    plain_dev = distinct(c.n_dev, c.seed + 505, {p.question for p in plain_eval}, **held)
    plain_train = distinct(n_train, c.seed + 303, {p.question for p in plain_eval + plain_dev},
                           **held)
    synthetic.write_jsonl(plain_train, root / "plain" / "loop.jsonl")
    synthetic.write_jsonl(plain_eval, root / "plain" / "test.jsonl")
    synthetic.write_jsonl(plain_dev, root / "plain" / "dev.jsonl")
    solutions = [p.solution for p in plain_eval]
    contexts = {}
    for v in (*c.context_values, c.size_value):
        kw = dict(held, variant="context", rule_value=v)
        ctx_eval = distinct(c.n_eval, c.seed + 202, set(), **kw)
        ctx_train = distinct(n_train, c.seed + 404, {p.question for p in ctx_eval}, **kw)
        out = size_dir(root) if v == c.size_value else context_dir(root, v)
        synthetic.write_jsonl(ctx_train, out / "loop.jsonl")
        synthetic.write_jsonl(ctx_eval, out / "test.jsonl")
        if v == c.size_value:
            dev = distinct(c.n_dev, c.seed + 606, {p.question for p in ctx_eval + ctx_train}, **kw)
            synthetic.write_jsonl(dev, out / "dev.jsonl")
        else:
            contexts[v] = out
        solutions += [p.solution for p in ctx_eval]
    return Data(root / "plain", size_dir(root), contexts, solutions)


def run_splits(data_dir: Path, c: ml_collections.ConfigDict) -> gsm8k.Splits:
    """The splits a distillation run makes of `data_dir` (same sizes and seed as configs/toy.py)."""
    return gsm8k.make_splits(gsm8k.load_jsonl(data_dir / "loop.jsonl"),
                             gsm8k.load_jsonl(data_dir / "test.jsonl"), c.n_train_prompts,
                             c.run.n_fewshot, c.n_eval, c.run.split_seed)


def run_context(data_dir: Path, c: ml_collections.ConfigDict) -> list[gsm8k.Example]:
    """The k solved examples a context run's teacher sees (prompts.context_shots, as the runs)."""
    return prompts.context_shots("fewshot", c.context_k, run_splits(data_dir, c).fewshot,
                                 c.run.split_seed)


def format_only_context(c: ml_collections.ConfigDict, plain_dir: Path) -> list[gsm8k.Example]:
    """The control context: k solved *plain* problems -- the answer format, but no unit value."""
    return prompts.context_shots("fewshot", c.context_k, run_splits(plain_dir, c).fewshot,
                                 c.run.split_seed)


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
    splits = run_splits(data_dir, c)
    tok = model.tokenizer
    student_prompts, _ = prompts.build_views(tok, list(splits.train), [], instruction="")
    answers = [tok(e.solution + toy_tokenizer.END, add_special_tokens=False)["input_ids"]
               for e in splits.train]
    rows = [(p + a, [False] * len(p) + [True] * len(a)) for p, a in zip(student_prompts, answers)]
    width = prompts.prompt_width(max(len(r[0]) for r in rows), c.run.trim_multiple)
    tokens, mask = pack(rows, width, tok.pad_token_id)
    lcfg = lora_lib.LoraConfig(rank=b.lora_rank, alpha=b.lora_alpha)
    lora0 = lora_lib.init_lora(model.cfg, lcfg, jax.random.key(c.seed), model.params)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(b.lr, weight_decay=0.0))

    @jax.jit
    def step_fn(layers, opt_state, tok_b, mask_b):
        def loss_fn(ls):
            lora = lora_lib.LoraParams(ls, lcfg.scale)
            return _answer_nll(transformer.apply(model.cfg, model.params, tok_b[:, :-1], lora),
                               tok_b, mask_b)

        loss, grads = jax.value_and_grad(loss_fn)(layers)
        updates, opt_state = opt.update(grads, opt_state, layers)
        return optax.apply_updates(layers, updates), opt_state, loss

    layers, opt_state = lora0.layers, opt.init(lora0.layers)
    n = tokens.shape[0]
    for step in range(b.steps):
        idx = loop.batch_indices(step, b.batch_size, n, c.seed)  # as the runs
        layers, opt_state, _ = step_fn(layers, opt_state, tokens[idx], mask[idx])
    return accuracy(model, list(splits.eval), c, lora=lora_lib.LoraParams(layers, lcfg.scale))


def mean_answer_tokens(tokenizer: Any, solutions: Sequence[str]) -> float:
    """Mean tokens of a reference answer (+ its end-of-turn token), over `solutions`."""
    return statistics.mean(len(tokenizer(s + toy_tokenizer.END, add_special_tokens=False)
                               ["input_ids"]) for s in solutions)


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


def _key(c: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def _paths(root: Path, c: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(root=root, tokenizer=root / "tokenizer", teacher=root / "teacher",
                student=root / "student", plain_data=root / "plain", size_data=size_dir(root),
                context_data={v: context_dir(root, v) for v in c.context_values})


def pretrain_model(root: Path, name: str, m: ml_collections.ConfigDict, c: ml_collections.ConfigDict,
                   tok: Any, seed: int, say: Callable[[str], None],
                   snapshot: Callable[[int, Path], None] | None = None) -> dict[str, Any]:
    """Pretrains `name` from scratch and saves it (and its snapshots) as HF checkpoints."""
    mcfg = model_cfg(m, len(tok), tok.eos_token_id, tok.pad_token_id)

    def save(path: Path, params: dict[str, Any]) -> None:
        hf_io.save_hf(mcfg, params, path)
        toy_tokenizer.save_tokenizer(tok, path)

    def on_snapshot(step: int, params: dict[str, Any]) -> None:
        path = root / f"{name}_snapshots" / f"step{step}"
        save(path, params)
        snapshot(step, path)

    t0 = time.time()
    params = pretrain(mcfg, pretraining_stream(tok, c, m, seed), m.steps, m.lr, seed=seed + 7,
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
            say: Callable[[str], None] = print, workers: int = 1) -> Prepared:
    """Builds (or reuses) the toy testbed under cache_dir/<config hash>/ and its testbed.json;
    `workers` > 1 pretrains the teacher and the student at once (`cliffdistill.study.pool`)."""
    c = c or default_prepare_config()
    root = Path(cache_dir) / f"toy-{_key(c)}"
    done = root / "prepared.json"
    paths = _paths(root, c)
    if done.exists():
        say(f"toy testbed: reusing {root}")
        report = json.loads(done.read_text())
        say("\n".join(testbed.loud_lines(report["testbed"])))
        return Prepared(**paths, report=report)
    if root.exists():
        shutil.rmtree(root)  # an interrupted prepare: start over
    t0 = time.time()
    tok = toy_corpus.build_toy_tokenizer(c.seed)
    toy_tokenizer.save_tokenizer(tok, paths["tokenizer"])
    data = write_data(root, c)
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
        overlap = pretrain_overlap(
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
    report.update(testbed=tb, seconds=timings["total"], config=c.to_dict())
    (root / testbed.TESTBED_JSON).write_text(json.dumps(tb, indent=2, sort_keys=True))
    done.write_text(json.dumps(report, indent=2, sort_keys=True))
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


def measure_student(c: ml_collections.ConfigDict, data: Data, student_dir: Path) -> dict[str, float]:
    """The size setup's checks that need only the student: its accuracy on the size and plain
    tasks, and the ground-truth oracle's."""
    student = Model.load(student_dir)
    return {"accuracy": accuracy(student, gsm8k.load_jsonl(data.size / "test.jsonl"), c),
            "plain_accuracy": accuracy(student, gsm8k.load_jsonl(data.plain / "test.jsonl"), c),
            "oracle": oracle(student, data.size, c)}


def _oracle_at(model_dir: Path, data_dir: Path, c: ml_collections.ConfigDict) -> float:
    """`oracle` in a worker process: the model comes from its saved files."""
    return oracle(Model.load(model_dir), data_dir, c)


def measure(c: ml_collections.ConfigDict, data: Data, paths: dict[str, Any], tok: Any,
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
    format_acc = accuracies(teacher, sets, c, shots=format_only_context(c, data.plain))
    per_value = {str(v): {"teacher": accuracy(teacher, sets[str(v)], c, shots=run_context(d, c)),
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
            "mean_answer_tokens": mean_answer_tokens(tok, data.eval_solutions),
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
