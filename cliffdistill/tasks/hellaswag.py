"""HellaSwag (lm-eval `hellaswag`, validation split): context
preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices = the four
preprocessed endings, acc and acc_norm. With k shots, each is its context + " " + its gold
ending + "\\n\\n", drawn from the train split by the harness's seeded sampler on its eval-doc
path (`fewshot`: hellaswag.yaml has no fewshot_split and no test_split, and the harness takes
None == None as "shots from the eval split": k + 1 rows drawn, a row equal to the document's
own dropped, the first k kept).

Accepted files:
  * JSON lines with {"activity_label", "ctx_a", "ctx_b", "endings", "label"} (HF `Rowan/hellaswag`
    and the original rowanz/hellaswag release; `.gz`/`.bz2` allowed);
  * the 6-lines-per-task text file (`*.txt`, `*.txt.bz2`, klosax/hellaswag_text_data): the joined
    "activity_label: ctx", the label, four endings. That copy has no ctx_a/ctx_b split, so the
    harness's capitalisation of ctx_b cannot be applied: its contexts can differ from the
    harness's in one letter's case (documented in docs/EVALUATION.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cliffdistill.tasks import fewshot, files
from cliffdistill.tasks.multiple_choice import ChoiceDoc

LINES_PER_TASK = 6
TRAIN_FILE = "hellaswag_train.jsonl"  # the few-shot pool beside the eval file (rowanz's name)
EXCLUDES_EVAL_DOC = True  # hellaswag.yaml: fewshot_split None == test_split None


def preprocess(text: str) -> str:
    """The harness's cleanup: strip, " [title]" -> ". ", drop any "[...]", "  " -> " " (once)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def parse_row(row: dict[str, Any], doc_id: int, where: str) -> ChoiceDoc:
    label = files.field(row, "activity_label", str, where)
    ctx = files.field(row, "ctx_a", str, where) + " " + files.field(row, "ctx_b", str, where).capitalize()
    endings = files.field(row, "endings", list, where)
    gold_raw = files.field(row, "label", (str, int), where)
    try:
        gold = int(gold_raw)
    except ValueError:
        raise ValueError(f"{where}: field 'label' is {gold_raw!r}, expected an index") from None
    gold = files.gold_index(gold, len(endings), where)
    return ChoiceDoc(doc_id, preprocess(f"{label}: {ctx}"),
                     tuple(preprocess(str(e)) for e in endings), gold)


def _text_tasks(p: Path, limit: int | None) -> list[ChoiceDoc]:
    with files.open_text(p) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % LINES_PER_TASK:
        raise ValueError(f"{p}: {len(lines)} lines, not a multiple of {LINES_PER_TASK} (context, "
                         "label, 4 endings per task); the file is truncated or not this format")
    docs = []
    for start in range(0, len(lines), LINES_PER_TASK):
        if limit is not None and len(docs) >= limit:
            break
        ctx, label, *endings = lines[start:start + LINES_PER_TASK]
        if not label.strip().isdigit():
            raise ValueError(f"{p}:{start + 2}: label line {label!r} is not a choice index")
        gold = files.gold_index(int(label), len(endings), f"{p}:{start + 2}")
        docs.append(ChoiceDoc(len(docs), preprocess(ctx), tuple(preprocess(e) for e in endings), gold))
    return docs


def docs(rows: files.Rows, num_fewshot: int = 0, limit: int | None = None,
         train_rows: files.Rows | None = None, train_source: str = "(the train split)"
         ) -> list[ChoiceDoc]:
    """HellaSwag documents from (where, row) pairs (a jsonl file's lines or a hub split's rows),
    each with `num_fewshot` shots drawn from `train_rows` (the harness's sampler, eval-doc path)."""
    return fewshot.choice_task(rows, train_rows, parse_row, num_fewshot, limit,
                               EXCLUDES_EVAL_DOC, train_source)


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None,
         train: str | Path | None = None) -> list[ChoiceDoc]:
    """`path`: the validation file (jsonl or the text format); the few-shot pool (read only
    when num_fewshot > 0) is `train`, or TRAIN_FILE in the same folder (jsonl rows)."""
    p = files.require_file(path, "HellaSwag file")
    pool, source = fewshot.local_pool(num_fewshot, train, lambda: p.with_name(TRAIN_FILE),
                                      f"put HellaSwag's train split (jsonl rows) beside "
                                      f"{p.name} as {TRAIN_FILE}")
    if p.name.endswith((".txt", ".txt.bz2", ".txt.gz")):  # no source rows to compare: no clash
        shots = fewshot.keyed(pool, parse_row, None) if pool is not None else []
        return fewshot.choice_docs([(None, d) for d in _text_tasks(p, limit)], shots,
                                   num_fewshot, EXCLUDES_EVAL_DOC, source)
    return docs(files.jsonl_rows(p, "HellaSwag file"), num_fewshot, limit, pool, source)
