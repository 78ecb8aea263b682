"""The toy task's data: the pretraining stream of each toy model, and the distillation data.

`pretraining_stream` yields the packed next-token batches a toy model is pretrained on (plain
problems, zero-shot unit problems, context episodes); `write_data` writes the runs' GSM8K-format
jsonl (`size/`, `context_v<V>/`, `plain/`) from held-out compositions only, and `pretrain_overlap`
measures that no eval solution occurs verbatim in the pretraining stream.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import numpy as np

from cliffdistill.data import gsm8k, prompts, synthetic, toy_tokenizer


Batch = tuple[np.ndarray, np.ndarray]


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
    synthetic.write_jsonl(plain_train, root / "plain" / "train.jsonl")
    synthetic.write_jsonl(plain_eval, root / "plain" / "test.jsonl")
    synthetic.write_jsonl(plain_dev, root / "plain" / "dev.jsonl")
    solutions = [p.solution for p in plain_eval]
    contexts = {}
    for v in (*c.context_values, c.size_value):
        kw = dict(held, variant="context", rule_value=v)
        ctx_eval = distinct(c.n_eval, c.seed + 202, set(), **kw)
        ctx_train = distinct(n_train, c.seed + 404, {p.question for p in ctx_eval}, **kw)
        out = size_dir(root) if v == c.size_value else context_dir(root, v)
        synthetic.write_jsonl(ctx_train, out / "train.jsonl")
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
    return gsm8k.make_splits(gsm8k.load_jsonl(data_dir / "train.jsonl"),
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


def mean_answer_tokens(tokenizer: Any, solutions: Sequence[str]) -> float:
    """Mean tokens of a reference answer (+ its end-of-turn token), over `solutions`."""
    return statistics.mean(len(tokenizer(s + toy_tokenizer.END, add_special_tokens=False)
                               ["input_ids"]) for s in solutions)
