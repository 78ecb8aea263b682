"""MBPP under lm-evaluation-harness's `mbpp` task (0.4.x, `mbpp.yaml`): the prompt is
"You are an expert Python programmer, and here is your task: {text} Your code should pass these
tests:\\n\\n{test 1}\\n{test 2}\\n{test 3}\\n[BEGIN]\\n"; k shots (k <= 3; the harness's default
is 3) are the first k of its three fixed examples (MBPP task ids 2, 3, 4, its
`utils.list_fewshot_samples`), each that prompt + its code + "\\n[DONE]", joined by "\\n\\n";
generation is cut at "[DONE]"; the program is the completion + "\\n" + the first three asserts
of `test_list` (HF `code_eval`'s assembly of the harness's prediction and reference), run by
`executor`. pass@1 greedy; pass@k from n samples (`runner.Sampling`), as for HumanEval.

As in the harness, `test_setup_code` is read but not run (its reference is the three asserts),
and `challenge_test_list` is not used.

Data: the original release's `mbpp.jsonl` (974 rows) or a jsonl copy of HF
`google-research-datasets/mbpp` (`full`): {"task_id", "text", "code", "test_list",
"test_setup_code"} per line. The harness scores the `test` split, task ids 11-510; rows outside
that range (the release's prompt, validation and train rows) are skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

from cliffdistill.tasks import files, humaneval

STOP_SEQUENCES = ("[DONE]",)
TEST_IDS = range(11, 511)  # the test split's task ids
N_TESTS = 3  # asserts shown in the prompt and run (the harness's doc_to_text / doc_to_target)
FEWSHOT_DELIMITER = "\n\n"
# The harness's three few-shot examples (lm_eval/tasks/mbpp/utils.py): (text, code, tests).
SHOTS = (
    ("Write a function to find the similar elements from the given two tuple lists.",
     "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & "
     "set(test_tup2))\r\n  return (res) ",
     ("assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
      "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
      "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)")),
    ("Write a python function to identify non-prime numbers.",
     "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in "
     "range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n"
     "    return result",
     ("assert is_not_prime(2) == False", "assert is_not_prime(10) == True",
      "assert is_not_prime(35) == True")),
    ("Write a function to find the largest integers from a given list of numbers using heap "
     "queue algorithm.",
     "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = "
     "hq.nlargest(n, nums)\r\n  return largest_nums",
     ("assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]")),
)


@dataclasses.dataclass(frozen=True)
class Problem:
    doc_id: int  # 0-based among the test-split rows
    task_id: str  # MBPP's task id, as a string (records and pass@k group by it)
    prompt: str  # shots + this task, ready to generate from
    code: str  # the reference solution
    tests: tuple[str, ...]  # the asserts that are run (the first N_TESTS of test_list)
    test_setup_code: str  # carried, not run (as in the harness)


def question_text(text: str, tests: tuple[str, ...]) -> str:
    """The harness's doc_to_text."""
    return (f"You are an expert Python programmer, and here is your task: {text} Your code "
            "should pass these tests:\n\n" + "\n".join(tests[:N_TESTS]) + "\n[BEGIN]\n")


def shots_text(num_fewshot: int) -> str:
    """The first `num_fewshot` fixed examples, each prompt + code + "\\n[DONE]" + "\\n\\n"."""
    if not 0 <= num_fewshot <= len(SHOTS):
        raise ValueError(f"--num_fewshot {num_fewshot}: MBPP's few-shot examples are the "
                         f"harness's {len(SHOTS)} fixed ones; pass 0 to {len(SHOTS)} (its "
                         f"default is {len(SHOTS)})")
    return "".join(question_text(t, tests) + code + "\n[DONE]" + FEWSHOT_DELIMITER
                   for t, code, tests in SHOTS[:num_fewshot])


def _task_id(row: dict[str, Any], where: str) -> int:
    return files.field(row, "task_id", int, where)


def parse_row(row: dict[str, Any], doc_id: int, where: str, shots: str = "") -> Problem:
    text, code = files.field(row, "text", str, where), files.field(row, "code", str, where)
    tests = files.field(row, "test_list", list, where)
    if len(tests) < N_TESTS or not all(isinstance(t, str) for t in tests):
        raise ValueError(f"{where}: field 'test_list' has {len(tests)} entries, expected at "
                         f"least {N_TESTS} assert strings (the prompt shows and runs three)")
    setup = files.field(row, "test_setup_code", str, where) if "test_setup_code" in row else ""
    tests = tuple(tests[:N_TESTS])
    return Problem(doc_id, str(_task_id(row, where)), shots + question_text(text, tests), code,
                   tests, setup)


def test_rows(rows: files.Rows) -> Iterator[tuple[str, dict[str, Any]]]:
    """The rows of the test split (task ids in TEST_IDS), in order."""
    return ((where, row) for where, row in rows if _task_id(row, where) in TEST_IDS)


def docs(rows: files.Rows, num_fewshot: int = 0, limit: int | None = None) -> list[Problem]:
    """Problems from (where, row) pairs: a file's lines or a hub split's rows."""
    shots = shots_text(num_fewshot)
    return files.parse_rows(test_rows(rows), lambda r, i, w: parse_row(r, i, w, shots), limit)


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None) -> list[Problem]:
    return docs(files.jsonl_rows(path, "MBPP jsonl file (mbpp.jsonl)"), num_fewshot, limit)


def truncate(completion: str) -> str:
    """The completion up to (not including) "[DONE]"."""
    return humaneval.truncate(completion, STOP_SEQUENCES)


def reference(problem: Problem) -> str:
    """The harness's reference for the eval doc (doc_to_target): the asserts, one a line."""
    return "\n".join(problem.tests)


def program(problem: Problem, completion: str) -> str:
    """code_eval's program: the (cut) completion, a newline, the reference."""
    return completion + "\n" + reference(problem)
