"""GSM8K under lm-evaluation-harness's `gsm8k` task (0.4.x, `gsm8k.yaml`): the prompt is
"Question: {question}\\nAnswer:", each shot "Question: ...\\nAnswer: {full solution}" joined by
"\\n\\n"; shots are drawn from the train split by one `random.Random(1234)` in document order (the
harness's few-shot sampler, seed 1234); greedy generation cut at "Question:", "</s>" or
"<|im_end|>"; two scores per document, as the harness reports them: `exact_match` (its
"strict-match" filter: the number after "#### ") and `exact_match_flexible` ("flexible-extract":
the last number in the completion), each compared with the gold answer after the harness's
normalisation (lower case; ",", "$", everything up to "#### " and a final "." removed).

The harness's default is 5 shots: pass `--num_fewshot 5` for its numbers (ours defaults to 0).

Data: a folder holding the original release's `test.jsonl` (and `train.jsonl` for shots),
{"question", "answer"} per line (the answer: the worked solution ending in "#### N").
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

from cliffdistill.tasks import fewshot, files

STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))
INVALID = "[invalid]"  # the harness's filter fallback: no number found


@dataclasses.dataclass(frozen=True)
class Problem:
    doc_id: int
    question: str
    answer: str  # the full worked solution, "... #### N"
    prompt: str  # shots + this question, ready to generate from


def _row(row: dict[str, Any], doc_id: int, where: str) -> tuple[str, str]:
    return files.field(row, "question", str, where), files.field(row, "answer", str, where)


def question_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def docs(test_rows: files.Rows, train_rows: files.Rows | None, num_fewshot: int = 0,
         limit: int | None = None) -> list[Problem]:
    """Problems from (where, row) pairs; document i's shots are the i-th draw of k train rows
    from one Random(fewshot.FEWSHOT_SEED) (`fewshot.draws`; gsm8k.yaml's fewshot_split "train"
    differs from its test_split, so no eval-doc exclusion), so `limit` does not change the shots
    of the first documents."""
    test = files.parse_rows(test_rows, _row, limit)
    train = files.parse_rows(train_rows, _row, None) if num_fewshot and train_rows else []
    picks = fewshot.draws(len(train), num_fewshot, [None] * len(test),
                          "train.jsonl (next to test.jsonl)")
    out = []
    for doc_id, ((question, answer), idx) in enumerate(zip(test, picks)):
        context = "".join(f"{question_text(q)} {a}\n\n" for q, a in (train[j] for j in idx))
        out.append(Problem(doc_id, question, answer, context + question_text(question)))
    return out


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None) -> list[Problem]:
    """`path`: a folder with test.jsonl (+ train.jsonl for shots), or the test file itself
    (train.jsonl is then looked for beside it)."""
    p = Path(path)
    test = p / "test.jsonl" if p.is_dir() else p
    train = test.parent / "train.jsonl"
    test_rows = files.jsonl_rows(test, "GSM8K folder (test.jsonl, train.jsonl) or test.jsonl")
    train_rows = files.jsonl_rows(train, "GSM8K train.jsonl (the few-shot pool)") if num_fewshot else None
    return docs(test_rows, train_rows, num_fewshot, limit)


def truncate(completion: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The completion up to (not including) the earliest stop sequence."""
    cut = min((i for s in stops if (i := completion.find(s)) != -1), default=len(completion))
    return completion[:cut]


def strict_answer(completion: str) -> str:
    """The harness's "strict-match": the first "#### N" number, else INVALID."""
    found = STRICT.findall(completion)
    return found[0].strip() if found else INVALID


def flexible_answer(completion: str) -> str:
    """The harness's "flexible-extract": the last number-like match, else INVALID."""
    found = FLEXIBLE.findall(completion)
    if not found:
        return INVALID
    groups = [g for g in found[-1] if g]
    return groups[0].strip() if groups else INVALID


def normalise(text: str) -> str:
    """exact_match's normalisation of prediction and gold alike (the yaml's regexes_to_ignore,
    in order, then ignore_case)."""
    for pattern in IGNORE:
        text = pattern.sub("", text)
    return text.lower()


def score(problem: Problem, completion: str) -> dict[str, Any]:
    """One document's record: its (cut) completion, both extracted answers and both scores."""
    gold = normalise(problem.answer)
    strict, flexible = strict_answer(completion), flexible_answer(completion)
    return {"doc_id": problem.doc_id, "completion": completion, "gold": gold,
            "strict": strict, "flexible": flexible,
            "exact_match": float(normalise(strict) == gold),
            "exact_match_flexible": float(normalise(flexible) == gold)}
