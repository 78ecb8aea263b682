"""Log-likelihood multiple-choice scoring, the lm-evaluation-harness way.

A document is a context and its choices. Choice i is scored as the summed log-probability of the
continuation `delimiter + choice_i` (the harness's `TARGET_DELIMITER`, " ", unless a
task says otherwise) after the context, the tokens split exactly as the
harness's causal models split them (`encode_pair`). `pred` is the argmax of those sums, `pred_norm`
the argmax of the sums divided by the choice's character length (the harness's `acc_norm`).

Scoring runs on the project's jitted scorer (`engine.scoring.score`): contexts are left-padded and
continuations right-padded to power-of-two buckets, requests are grouped by bucket and every batch
is filled to `batch_size`, so a task compiles a handful of programs. A model loaded on a mesh
(`Model.mesh`) is scored sharded: params as `load_hf` placed them, each batch split over the
mesh's data and fsdp axes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cliffdistill.data.prompts import bucket_length, pad_left
from cliffdistill.engine import scoring
from cliffdistill.models import sharding
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraParams

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
#: Longest choice (tokens) scored against a shared context. The shared path decodes a choice
#: token by token against the context's cache; a long choice is cheaper as one row of its own
#: (benchmarks/choice_scoring.py, docs/PERFORMANCE.md, CPU: one-token MMLU-shaped choices 4.5x
#: the documents/s, the toy retention benchmark's 1-2 tokens 3.8x, ARC's 6-12 tokens 1.05x,
#: HellaSwag's 18-30 tokens 0.78x).
SHARE_MAX_TOKENS = 16


@dataclasses.dataclass(frozen=True)
class ChoiceDoc:
    """One document: `context` is the whole prompt (description, shots, question)."""

    doc_id: int  # 0-based index in the source order (per subject for MMLU)
    context: str
    choices: tuple[str, ...]
    gold: int
    group: str = ""  # MMLU subject; "" elsewhere
    delimiter: str = TARGET_DELIMITER  # between context and choice (the harness's target delimiter)


@dataclasses.dataclass(frozen=True)
class Model:
    """What scoring needs: the decoder, its (optional) adapters and the tokenizer."""

    cfg: ModelConfig
    params: Any
    tokenizer: Any
    lora: LoraParams | None = None
    mesh: Mesh | None = None  # params sharded on it (None: one device)


def continuations(doc: ChoiceDoc) -> list[str]:
    return [doc.delimiter + c for c in doc.choices]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness splits them for a causal model: trailing
    whitespace of the context moves to the continuation, the pair is encoded whole (with the
    tokenizer's default special tokens, e.g. a BOS) and the continuation is what follows the
    separately encoded context's length."""
    if not context:
        raise ValueError("an empty context cannot be scored (every task renders a prompt)")
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole = list(tokenizer.encode(stripped + continuation))
    ctx = list(tokenizer.encode(stripped))
    return ctx, whole[len(ctx):]


def fit_to_window(ctx: list[int], cont: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Drops context tokens from the left so the model input (ctx + cont minus its last token)
    fits `max_len` positions, as the harness does."""
    if not cont:
        raise ValueError("a continuation encodes to no tokens; a choice must not be empty")
    if len(cont) > max_len:
        raise ValueError(f"a continuation of {len(cont)} tokens exceeds the model's window "
                         f"({max_len} positions)")
    keep = max_len + 1 - len(cont)
    return ctx[-keep:] if len(ctx) > keep else ctx, cont


def _pad_right(rows: Sequence[Sequence[int]], pad_id: int, length: int
               ) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], mask[i, :len(row)] = row, True
    return tokens, mask


def buckets(pairs: Sequence[tuple[list[int], list[int]]], min_bucket: int = 16
            ) -> dict[tuple[int, int], list[int]]:
    """(context bucket P, continuation bucket G) -> indices of the pairs in it."""
    out: dict[tuple[int, int], list[int]] = {}
    for i, (ctx, cont) in enumerate(pairs):
        key = (bucket_length(len(ctx), min_bucket), bucket_length(len(cont), 1))
        out.setdefault(key, []).append(i)
    return out


def score_pairs(model: Model, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int,
                pad_id: int, progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """Summed log p(cont | ctx) for every (ctx ids, cont ids) pair -> [N] float64; `progress`
    is told how many pairs each batch scored."""
    out = np.zeros(len(pairs), np.float64)
    place = _batch_placer(model.mesh, batch_size)
    for (P, G), idx in sorted(buckets(pairs).items()):
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            rows = part + [part[-1]] * (batch_size - len(part))  # fixed shape: one compile
            prompt, prompt_mask = pad_left([pairs[i][0] for i in rows], pad_id, P)
            cont, cont_mask = _pad_right([pairs[i][1] for i in rows], pad_id, G)
            with _on(model.mesh):
                lp = scoring.score(model.cfg, model.params, *place(prompt, prompt_mask, cont,
                                                                   cont_mask), model.lora)  # [B, G]
            sums = np.asarray(lp, np.float64).sum(axis=1)
            out[part] = sums[:len(part)]
            if progress is not None:
                progress(len(part))
    return out


def _batch_placer(mesh: Mesh | None, batch_size: int) -> Callable[..., list[jax.Array]]:
    """Puts a batch's [B, ...] arrays on the mesh, rows split over data x fsdp (or on the
    default device without a mesh). A batch size the split does not divide is refused."""
    if mesh is None:
        return lambda *arrays: [jnp.asarray(a) for a in arrays]
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % rows:
        raise ValueError(f"--batch_size {batch_size} is not a multiple of the mesh's data x fsdp "
                         f"= {rows} rows per batch; pass a multiple of {rows}")
    shard = sharding.batch_sharding(mesh, 2)
    return lambda *arrays: [jax.device_put(a, shard) for a in arrays]


def _on(mesh: Mesh | None) -> Any:
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def choose(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(pred, pred_norm): argmax of the log-likelihoods, and of them over each choice's length
    in characters (the harness's acc_norm; first index on ties, like np.argmax)."""
    lls = np.asarray(lls, np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def shared_requests(pairs: Sequence[tuple[list[int], list[int]]]
                    ) -> tuple[list[int], list[list[int]]] | None:
    """(context ids, [continuation ids per choice]) when every choice of a document has the
    same context ids, else None (a context cut to the window differently per choice)."""
    ctx = pairs[0][0]
    if any(c != ctx for c, _ in pairs[1:]):
        return None
    return ctx, [cont for _, cont in pairs]


def choice_buckets(requests: Sequence[tuple[list[int], list[list[int]]]], min_bucket: int = 16
                   ) -> dict[tuple[int, int, int], list[int]]:
    """(context bucket P, number of choices C, continuation bucket G) -> request indices."""
    out: dict[tuple[int, int, int], list[int]] = {}
    for i, (ctx, conts) in enumerate(requests):
        key = (bucket_length(len(ctx), min_bucket), len(conts),
               bucket_length(max(map(len, conts)), 1))
        out.setdefault(key, []).append(i)
    return out


def score_shared(model: Model, requests: Sequence[tuple[list[int], list[list[int]]]], *,
                 batch_size: int, pad_id: int, progress: Callable[[int], Any] | None = None
                 ) -> list[np.ndarray]:
    """Summed log p(cont_c | ctx) [C] float64 per (ctx ids, [cont ids]) request, each context
    encoded once for all its choices (`scoring.score_choices`); `batch_size` documents a batch."""
    out: list[np.ndarray] = [np.zeros(0)] * len(requests)
    place = _batch_placer(model.mesh, batch_size)
    for (P, C, G), idx in sorted(choice_buckets(requests).items()):
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            rows = part + [part[-1]] * (batch_size - len(part))  # fixed shape: one compile
            prompt, prompt_mask = pad_left([requests[i][0] for i in rows], pad_id, P)
            conts, conts_mask = _pad_right([c for i in rows for c in requests[i][1]], pad_id, G)
            shape = (batch_size, C, G)
            with _on(model.mesh):
                lp = scoring.score_choices(model.cfg, model.params, *place(
                    prompt, prompt_mask, conts.reshape(shape), conts_mask.reshape(shape)),
                    model.lora)  # [B, C, G]
            sums = np.asarray(lp, np.float64).sum(axis=2)
            for row, i in enumerate(part):
                out[i] = sums[row]
            if progress is not None:
                progress(len(part) * C)
    return out


def evaluate_docs(model: Model, docs: Sequence[ChoiceDoc], *, batch_size: int = 8,
                  progress: Callable[[int, int], Any] | None = None,
                  share_max_tokens: int = SHARE_MAX_TOKENS
                  ) -> tuple[list[dict[str, Any]], float]:
    """One record per document (doc_id, loglikelihoods, pred, pred_norm, gold, acc, acc_norm)
    and the documents scored per second.

    A document whose choices share their context ids and are at most `share_max_tokens` tokens
    each is scored with its context run once (`score_shared`: `batch_size` documents a batch);
    the others one (context, choice) row each (`score_pairs`: `batch_size` rows). 0: never
    shared. Both give the same log-likelihoods (fp32: within 1e-5, tests/test_tasks.py)."""
    t0 = time.perf_counter()
    pad_id = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
    max_len = model.cfg.max_position_embeddings
    doc_pairs = [[fit_to_window(*encode_pair(model.tokenizer, doc.context, cont), max_len)
                  for cont in continuations(doc)] for doc in docs]
    shared = {d: r for d, pairs in enumerate(doc_pairs)
              if max(len(c) for _, c in pairs) <= share_max_tokens
              and (r := shared_requests(pairs)) is not None}
    total, done = sum(map(len, doc_pairs)), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    per_doc: list[list[float]] = [[] for _ in docs]
    for d, lls in zip(shared, score_shared(model, list(shared.values()), batch_size=batch_size,
                                           pad_id=pad_id, progress=advance)):
        per_doc[d] = [float(x) for x in lls]
    rest = [(d, pair) for d, pairs in enumerate(doc_pairs) if d not in shared for pair in pairs]
    lls = score_pairs(model, [pair for _, pair in rest], batch_size=batch_size, pad_id=pad_id,
                      progress=advance)
    for (d, _), ll in zip(rest, lls):
        per_doc[d].append(float(ll))
    records = []
    for doc, ll in zip(docs, per_doc):
        pred, pred_norm = choose(ll, doc.choices)
        records.append({"doc_id": doc.doc_id, **({"subject": doc.group} if doc.group else {}),
                        "loglikelihoods": ll, "pred": pred, "pred_norm": pred_norm,
                        "gold": doc.gold, "acc": float(pred == doc.gold),
                        "acc_norm": float(pred_norm == doc.gold)})
    seconds = time.perf_counter() - t0
    return records, len(docs) / max(seconds, 1e-9)
