"""HumanEval (lm-eval `humaneval`; openai/human-eval's program assembly): the prompt is the
problem's `prompt`, generation is cut at the first stop sequence, the program is
prompt + completion + "\\n" + test + "\\n" + "check(entry_point)", run by `executor`.
pass@1 greedy; pass@k from n samples (`runner.Sampling`) with the unbiased estimator.

Data: `HumanEval.jsonl.gz` as released (or plain jsonl): {"task_id", "prompt",
"canonical_solution", "test", "entry_point"} per line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cliffdistill.tasks import files

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclasses.dataclass(frozen=True)
class Problem:
    doc_id: int
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def parse_row(row: dict[str, Any], doc_id: int, where: str) -> Problem:
    return Problem(doc_id, *(files.field(row, k, str, where) for k in (
        "task_id", "prompt", "canonical_solution", "test", "entry_point")))


def docs(rows: files.Rows, num_fewshot: int = 0, limit: int | None = None) -> list[Problem]:
    """Problems from (where, row) pairs: a file's lines or a hub split's rows."""
    if num_fewshot:
        raise ValueError("HumanEval is zero-shot; use --num_fewshot 0")
    return files.parse_rows(rows, parse_row, limit)


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None) -> list[Problem]:
    return docs(files.jsonl_rows(path, "HumanEval jsonl(.gz) file"), num_fewshot, limit)


def truncate(completion: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The completion up to (not including) the earliest stop sequence."""
    cut = min((i for s in stops if (i := completion.find(s)) != -1), default=len(completion))
    return completion[:cut]


def program(problem: Problem, completion: str) -> str:
    return (problem.prompt + completion + "\n" + problem.test + "\n"
            + f"check({problem.entry_point})")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), evaluated as a
    product so large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
