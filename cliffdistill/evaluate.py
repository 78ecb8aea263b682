"""Held-out evaluation: greedy answers, grading, and the summary every report row is built from.

The core (`evaluate_prompts`) is shared by the trainer's periodic evals and the checkpoint-based
CLI (`python -m cliffdistill.evaluate`), so a number in a report always comes from one code path.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cliffdistill import sampling, stats
from cliffdistill.data import gsm8k
from cliffdistill.models import sharding
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraParams

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
    """Accuracy with a 95% Wilson interval, failure-mode rates and mean length."""
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
    }


def generate_greedy(cfg: ModelConfig, params: Any, lora: LoraParams | None, prompts: np.ndarray,
                    prompt_mask: np.ndarray, *, max_new_tokens: int, batch_size: int,
                    eos_ids: tuple[int, ...], pad_id: int, mesh: jax.sharding.Mesh | None = None,
                    moe_impl: str = "ragged", progress: Any = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy completions of every prompt, in batches. Returns tokens [N, G], lengths, truncated.

    The last batch is padded with copies of its first prompt (results dropped) so every call
    has the same shape and the jitted sampler compiles once.
    """
    N = prompts.shape[0]
    gen_len = sampling.bucket_length(max_new_tokens, 1)
    out_tok, out_len, out_trunc = [], [], []
    for start in range(0, N, batch_size):
        stop = min(start + batch_size, N)
        idx = np.arange(start, start + batch_size)
        idx[stop - start:] = start
        out = sampling.generate_arrays(
            cfg, params, lora, sharding.put_batch(prompts[idx], mesh),
            sharding.put_batch(prompt_mask[idx], mesh), jax.random.key(0),
            sharding.put_batch(idx.astype(np.int32), mesh), jnp.asarray(max_new_tokens, jnp.int32),
            jnp.asarray(0.0), jnp.asarray(0, jnp.int32), jnp.asarray(1.0), gen_len=gen_len,
            eos_ids=eos_ids, pad_id=pad_id, moe_impl=moe_impl)
        keep = stop - start
        out_tok.append(sharding.to_host(out.tokens)[:keep])
        out_len.append(sharding.to_host(out.lengths)[:keep])
        out_trunc.append(sharding.to_host(out.truncated)[:keep])
        if progress is not None:
            progress(stop, N)
    return np.concatenate(out_tok), np.concatenate(out_len), np.concatenate(out_trunc)


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
