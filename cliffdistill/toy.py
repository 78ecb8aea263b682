"""The toy testbed: a synthetic GSM8K-style task and toy Qwen3 models trained here, on CPU.

`prepare(cache_dir, cfg)` builds (once; later runs reuse the cache):

* a tokenizer trained on the synthetic task (HF format, with a chat template);
* data: GSM8K-format jsonl for the size setup (`plain/`) and the context setup (`context/`);
* a toy **teacher** pretrained from scratch (next-token loss on answers) and a toy **student**
  for the size setup: the same architecture, less trained -- the teacher's own snapshot from
  the last of `student.snapshots` whose accuracy on a dev split is still <= `max_accuracy`.
  (A student that has the skill's foundations but not its polish is what LoRA distillation can
  move in a 40-step run; a from-scratch tiny student barely moves, which we measured);
* the teacher is also pretrained on *context episodes* (k solved examples that share a hidden
  unit value, then a query), so with few-shot examples in its prompt it infers the value: the
  same weights with that context are the context-distillation teacher, without it the student.

Everything goes through the same HF load / prompt / grade path as a real checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cliffdistill import evaluate
from cliffdistill.data import gsm8k, prompts, synthetic, toy_corpus, toy_tokenizer
from cliffdistill.models import config as model_config
from cliffdistill.models import hf_io, transformer

log = logging.getLogger(__name__)

CONTEXT_RULE_VALUE = 7  # the hidden unit value of the context-distillation runs


def default_prepare_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.difficulty = {"1": 0.75, "2": 0.25}  # equation lines per problem -> weight
    c.n_eval = 128  # held-out problems per setup (eval split)
    c.n_train_prompts = 256  # distillation prompts per setup (train split)
    c.context_k = 3  # solved examples in the context-distillation teacher's prompt
    c.teacher = ml_collections.ConfigDict(dict(
        layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, mlp=192, steps=2000, batch=32,
        lr=3e-3, episode_every=3))
    c.student = ml_collections.ConfigDict(dict(
        snapshots=(400, 500, 600, 700, 800), max_accuracy=0.35))
    c.seq_len = 64  # pretraining sequence length of plain problems (episodes use 3x)
    c.eval_max_new_tokens = 32
    return c


def model_cfg(m: ml_collections.ConfigDict, vocab: int, eos: int, pad: int) -> model_config.ModelConfig:
    return model_config.ModelConfig(
        model_type="qwen3", vocab_size=vocab, hidden_size=m.hidden, num_layers=m.layers,
        num_heads=m.heads, num_kv_heads=m.kv_heads, head_dim=m.head_dim, intermediate_size=m.mlp,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        max_position_embeddings=1024, eos_token_ids=(eos,), pad_token_id=pad)


# ----------------------------------------------------------------------------- pretraining data


def _encode(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + answer, and which of them are answer tokens (the loss targets)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer + toy_tokenizer.END, add_special_tokens=False)["input_ids"]
    return p + a, [False] * len(p) + [True] * len(a)


def pack(examples: Sequence[tuple[list[int], list[bool]]], length: int, pad: int
         ) -> tuple[np.ndarray, np.ndarray]:
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


def pretraining_stream(tokenizer: Any, c: ml_collections.ConfigDict, m: ml_collections.ConfigDict,
                       exclude: set[str], seed: int) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """batch(step) -> (tokens [B, T], target mask [B, T]); fresh problems every step.

    Every `episode_every`-th batch (0: never) holds context episodes: 0..context_k solved
    examples sharing a random unit value, then a query (rows of 3 x seq_len tokens); the other
    batches hold plain problems (seq_len tokens). Two shapes, so the step compiles twice.
    """
    pad = tokenizer.pad_token_id
    diff = _difficulty(c)

    def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
        step_seed = int(np.random.default_rng([seed, step]).integers(2**31))
        if m.episode_every and step % m.episode_every == m.episode_every - 1:
            rng = np.random.default_rng(step_seed)
            rows = []
            for i in range(m.batch):
                k = int(rng.integers(0, c.context_k + 1))
                (e,) = synthetic.make_episodes(1, seed=step_seed + i, k=k, difficulty=diff)
                if e.query.question not in exclude:
                    rows.append(_encode(tokenizer, synthetic.episode_prompt_text(e), e.query.solution))
            return pack(rows, 3 * c.seq_len, pad)
        plain = synthetic.generate(m.batch, seed=step_seed, difficulty=diff, exclude=exclude)
        rows = [_encode(tokenizer, synthetic.prompt_text(p), p.solution) for p in plain]
        return pack(rows, c.seq_len, pad)

    return batch


def pretrain(mcfg: model_config.ModelConfig, batch_fn: Callable[[int], tuple[np.ndarray, np.ndarray]],
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
            logits = transformer.apply(mcfg, p, tokens[:, :-1])
            lp = jax.nn.log_softmax(logits)
            tgt = jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]
            m = mask[:, 1:]
            return -jnp.sum(tgt * m) / jnp.maximum(m.sum(), 1)

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


# ----------------------------------------------------------------------------- prepare


@dataclasses.dataclass(frozen=True)
class Prepared:
    root: Path
    tokenizer: Path
    teacher: Path
    student: Path
    plain_data: Path
    context_data: Path
    report: dict[str, Any]


def _key(c: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


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


def write_data(root: Path, c: ml_collections.ConfigDict) -> tuple[Path, Path, set[str]]:
    """plain/{train,test,dev}.jsonl and context/{train,test}.jsonl, all questions distinct.

    Returns every held-out question (test + dev), which pretraining never sees.
    """
    diff = _difficulty(c)
    ctx = dict(difficulty=diff, variant="context", rule_value=CONTEXT_RULE_VALUE)
    plain_eval = distinct(c.n_eval, c.seed + 101, set(), difficulty=diff)
    ctx_eval = distinct(c.n_eval, c.seed + 202, set(), **ctx)
    plain_dev = distinct(c.n_eval, c.seed + 505, {p.question for p in plain_eval}, difficulty=diff)
    held_out = {p.question for p in plain_eval + ctx_eval + plain_dev}
    n_train = c.n_train_prompts + 64  # + the few-shot pool
    plain_train = distinct(n_train, c.seed + 303, held_out, difficulty=diff)
    ctx_train = distinct(n_train, c.seed + 404, held_out, **ctx)
    for name, train, test in (("plain", plain_train, plain_eval), ("context", ctx_train, ctx_eval)):
        synthetic.write_jsonl(train, root / name / "train.jsonl")
        synthetic.write_jsonl(test, root / name / "test.jsonl")
    synthetic.write_jsonl(plain_dev, root / "plain" / "dev.jsonl")
    return root / "plain", root / "context", held_out


def toy_accuracy(path: Path, data_dir: Path, n: int, shots: int, max_new_tokens: int,
                 split: str = "test") -> dict:
    """Greedy accuracy on `split` of the checkpoint at `path` (optionally with k-shot context)."""
    tok = toy_tokenizer.load_tokenizer(path)
    mcfg, params = hf_io.load_hf(path, dtype=jnp.float32)
    examples = gsm8k.load_jsonl(data_dir / f"{split}.jsonl")[:n]
    pool = gsm8k.load_jsonl(data_dir / "train.jsonl")
    ctx = prompts.context_shots("fewshot", shots, pool[-64:], seed=0) if shots else []
    student, teacher = prompts.build_views(tok, examples, ctx, instruction="")
    ids = teacher if shots else student
    toks, mask = prompts.pad_left(ids, tok.pad_token_id, prompts.bucket_length(max(map(len, ids))))
    summary, _ = evaluate.evaluate_prompts(
        mcfg, params, None, tok, toks, mask, [e.question for e in examples],
        [e.answer for e in examples], max_new_tokens=max_new_tokens, batch_size=64,
        eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    return summary


def prepare(cache_dir: str | Path, c: ml_collections.ConfigDict | None = None,
            say: Callable[[str], None] = print) -> Prepared:
    """Builds (or reuses) the toy testbed under cache_dir/<config hash>/."""
    c = c or default_prepare_config()
    root = Path(cache_dir) / f"toy-{_key(c)}"
    done = root / "prepared.json"
    paths = dict(root=root, tokenizer=root / "tokenizer", teacher=root / "teacher",
                 student=root / "student", plain_data=root / "plain", context_data=root / "context")
    if done.exists():
        say(f"toy testbed: reusing {root}")
        return Prepared(**paths, report=json.loads(done.read_text()))
    if root.exists():
        shutil.rmtree(root)  # an interrupted prepare: start over
    t0 = time.time()
    tok = toy_corpus.build_toy_tokenizer(c.seed)
    toy_tokenizer.save_tokenizer(tok, paths["tokenizer"])
    plain_dir, ctx_dir, held_out = write_data(root, c)
    m = c.teacher
    mcfg = model_cfg(m, len(tok), tok.eos_token_id, tok.pad_token_id)
    snapshots: dict[int, float] = {}

    def save(path: Path, params: dict[str, Any]) -> None:
        hf_io.save_hf(mcfg, params, path)
        toy_tokenizer.save_tokenizer(tok, path)

    def snapshot(step: int, params: dict[str, Any]) -> None:
        path = root / "snapshots" / f"step{step}"
        save(path, params)
        snapshots[step] = toy_accuracy(path, plain_dir, c.n_eval, 0, c.eval_max_new_tokens,
                                       split="dev")["accuracy"]
        say(f"  student candidate: step {step}, dev accuracy {snapshots[step]:.1%}")

    t1 = time.time()
    params = pretrain(mcfg, pretraining_stream(tok, c, m, held_out, seed=c.seed + 1), m.steps,
                      m.lr, seed=c.seed + 7, snapshot=snapshot,
                      snapshot_steps=tuple(c.student.snapshots),
                      progress=lambda i, loss: say(f"  pretrain teacher: step {i + 1}/{m.steps} "
                                                   f"loss {loss:.3f}"))
    save(paths["teacher"], params)
    eligible = [st for st, acc in snapshots.items() if acc <= c.student.max_accuracy]
    if not eligible:
        raise ValueError(f"no student snapshot has dev accuracy <= {c.student.max_accuracy} "
                         f"({snapshots}); use earlier `student.snapshots`")
    chosen = max(eligible)
    shutil.copytree(root / "snapshots" / f"step{chosen}", paths["student"])
    report: dict[str, Any] = {
        "vocab_size": len(tok),
        "teacher": {"params": transformer.count_params(params), "seconds": time.time() - t1,
                    "config": m.to_dict()},
        "student": {"snapshot_step": chosen, "dev_accuracy_by_snapshot": snapshots,
                    "params": transformer.count_params(params)},
    }
    for name in ("teacher", "student"):
        report[name]["plain_accuracy"] = toy_accuracy(
            paths[name], plain_dir, c.n_eval, 0, c.eval_max_new_tokens)["accuracy"]
    report["teacher"]["context_accuracy_without_context"] = toy_accuracy(
        paths["teacher"], ctx_dir, c.n_eval, 0, c.eval_max_new_tokens)["accuracy"]
    report["teacher"]["context_accuracy_with_context"] = toy_accuracy(
        paths["teacher"], ctx_dir, c.n_eval, c.context_k, c.eval_max_new_tokens)["accuracy"]
    report["seconds"] = time.time() - t0
    report["config"] = c.to_dict()
    done.write_text(json.dumps(report, indent=2, sort_keys=True))
    say(f"toy testbed ready in {report['seconds']:.0f}s: teacher {report['teacher']['plain_accuracy']:.1%}, "
        f"student (snapshot {chosen}) {report['student']['plain_accuracy']:.1%}, context teacher "
        f"{report['teacher']['context_accuracy_with_context']:.1%} vs without context "
        f"{report['teacher']['context_accuracy_without_context']:.1%}")
    return Prepared(**paths, report=report)
