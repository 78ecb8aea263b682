"""A multiple-choice benchmark of your own (`choice_jsonl`): one document per JSON line,

    {"context": "...", "choices": ["...", "..."], "gold": 0, "delimiter": " "}

scored like every harness task here (the summed log-probability of `delimiter + choice` after
the context; `acc` and `acc_norm`). `delimiter` is optional (default `" "`, the harness's target
delimiter); a task whose answers follow the context directly (e.g. `"12+5="` -> `"17"`) sets it
to `""`. The context is used as written: shots, if any, are already in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cliffdistill.tasks import files
from cliffdistill.tasks.multiple_choice import TARGET_DELIMITER, ChoiceDoc


def parse_row(row: dict[str, Any], doc_id: int, where: str) -> ChoiceDoc:
    context = files.field(row, "context", str, where)
    choices = files.field(row, "choices", list, where)
    if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{where}: field 'choices' must list at least two non-empty strings")
    gold = files.gold_index(files.field(row, "gold", int, where), len(choices), where)
    delimiter = files.field(row, "delimiter", str, where) if "delimiter" in row else TARGET_DELIMITER
    return ChoiceDoc(doc_id, context, tuple(choices), gold, delimiter=delimiter)


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None) -> list[ChoiceDoc]:
    if num_fewshot:
        raise ValueError("choice_jsonl documents carry their whole context (put any shots in "
                         "it); use --num_fewshot 0")
    return files.load_rows(path, parse_row, limit, "multiple-choice jsonl file")
