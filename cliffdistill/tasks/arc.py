"""ARC-Easy / ARC-Challenge (lm-eval `arc_easy`, `arc_challenge`): context
"Question: {question}\\nAnswer:", choices = the answer texts, acc and acc_norm. With k shots,
each is "Question: ...\\nAnswer: {gold text}" + "\\n\\n", drawn from the train split by the
harness's seeded sampler (`fewshot`; ARC's yaml sets no fewshot_split, so no eval-doc exclusion).

Accepted rows (one JSON object per line, `.gz`/`.bz2` allowed), detected per row:
  * HF `allenai/ai2_arc`: {"question", "choices": {"text": [...], "label": [...]}, "answerKey"}
  * the original ARC release: {"question": {"stem", "choices": [{"text", "label"}, ...]}, "answerKey"}
  * llm-foundry's repackaging: {"query": "Question: ...", "choices": [...], "gold": i}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cliffdistill.tasks import fewshot, files
from cliffdistill.tasks.multiple_choice import ChoiceDoc

TEMPLATE = "Question: {question}\nAnswer:"
FOUNDRY_PREFIX = "Question: "
EXCLUDES_EVAL_DOC = False  # arc_easy.yaml: fewshot_split unset (None) != test_split "test"


def _labelled(texts: list[Any], labels: list[Any], key: str, where: str) -> tuple[tuple[str, ...], int]:
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"{where}: {len(texts)} choice texts but {len(labels)} labels")
    if key not in labels:
        raise ValueError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
    return tuple(str(t) for t in texts), labels.index(key)


def parse_row(row: dict[str, Any], doc_id: int, where: str) -> ChoiceDoc:
    """One ARC row (any accepted format) -> its document."""
    if "query" in row:  # llm-foundry
        query = files.field(row, "query", str, where)
        if not query.startswith(FOUNDRY_PREFIX):
            raise ValueError(f"{where}: field 'query' does not start with {FOUNDRY_PREFIX!r}")
        choices = tuple(files.field(row, "choices", list, where))
        gold = files.gold_index(files.field(row, "gold", int, where), len(choices), where)
        return ChoiceDoc(doc_id, query + "\nAnswer:", tuple(str(c) for c in choices), gold)
    key = str(files.field(row, "answerKey", (str, int), where))
    q = files.field(row, "question", (str, dict), where)
    if isinstance(q, dict):  # original release
        stem = files.field(q, "stem", str, where + " (question)")
        opts = files.field(q, "choices", list, where + " (question)")
        texts, labels = [o.get("text") for o in opts], [o.get("label") for o in opts]
    else:
        stem = q
        ch = files.field(row, "choices", dict, where)
        texts = files.field(ch, "text", list, where + " (choices)")
        labels = files.field(ch, "label", list, where + " (choices)")
    choices, gold = _labelled(texts, labels, key, where)
    return ChoiceDoc(doc_id, TEMPLATE.format(question=stem), choices, gold)


def docs(rows: files.Rows, num_fewshot: int = 0, limit: int | None = None,
         train_rows: files.Rows | None = None, train_source: str = "(the train split)"
         ) -> list[ChoiceDoc]:
    """ARC documents from (where, row) pairs (a file's lines or a hub split's rows), each with
    `num_fewshot` shots drawn from `train_rows` (the harness's sampler; `fewshot` module)."""
    return fewshot.choice_task(rows, train_rows, parse_row, num_fewshot, limit,
                               EXCLUDES_EVAL_DOC, train_source)


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None,
         train: str | Path | None = None) -> list[ChoiceDoc]:
    """`path`: the test file; the few-shot pool (read only when num_fewshot > 0) is `train`, or
    the file beside it named by `fewshot.train_beside` (arc_easy_test.jsonl ->
    arc_easy_train.jsonl)."""
    test = files.require_file(path, "ARC jsonl file")
    pool, source = fewshot.local_pool(
        num_fewshot, train, lambda: fewshot.train_beside(test),
        "put ARC's train split (same format) beside the test file under that name")
    return docs(files.jsonl_rows(test, "ARC jsonl file"), num_fewshot, limit, pool, source)
