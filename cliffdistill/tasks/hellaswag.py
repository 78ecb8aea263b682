"""HellaSwag (lm-eval `hellaswag`, validation split): zero-shot, context
preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices = the four
preprocessed endings, acc and acc_norm.

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

from cliffdistill.tasks import files
from cliffdistill.tasks.multiple_choice import ChoiceDoc

LINES_PER_TASK = 6


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


def check_zero_shot(num_fewshot: int) -> None:
    if num_fewshot:
        raise ValueError("HellaSwag is scored zero-shot here (harness shots come at random from "
                         "the train split, not read by this loader); use --num_fewshot 0")


def docs(rows: files.Rows, num_fewshot: int = 0, limit: int | None = None) -> list[ChoiceDoc]:
    """HellaSwag documents from (where, row) pairs: a jsonl file's lines or a hub split's rows."""
    check_zero_shot(num_fewshot)
    return files.parse_rows(rows, parse_row, limit)


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None) -> list[ChoiceDoc]:
    p = files.require_file(path, "HellaSwag file")
    if p.name.endswith((".txt", ".txt.bz2", ".txt.gz")):
        check_zero_shot(num_fewshot)
        return _text_tasks(p, limit)
    return docs(files.jsonl_rows(p, "HellaSwag file"), num_fewshot, limit)
