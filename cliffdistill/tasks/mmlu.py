"""MMLU (lm-eval `mmlu`, the 57 `mmlu_<subject>` tasks): test split, k shots = the first k
rows of the subject's dev split in file order, every prompt headed by the subject's
description line. Scored by `acc` (the harness's metric; `acc_norm` is reported beside it).

The data path is a folder in the original release layout: `dev/<subject>_dev.csv` and
`test/<subject>_test.csv`, headerless CSV rows `question, A, B, C, D, answer letter` (or the hub's
`cais/mmlu` rows, `{question, subject, choices, answer index}`, through `tasks.hub`).
Averages: per subject, per category and overall, each over documents (the harness's
size-weighted group aggregation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cliffdistill.tasks import files
from cliffdistill.tasks.multiple_choice import FEWSHOT_DELIMITER, TARGET_DELIMITER, ChoiceDoc

LETTERS = ("A", "B", "C", "D")
CATEGORIES = {
    "stem": ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics",
             "computer_security", "conceptual_physics", "electrical_engineering",
             "elementary_mathematics", "high_school_biology", "high_school_chemistry",
             "high_school_computer_science", "high_school_mathematics", "high_school_physics",
             "high_school_statistics", "machine_learning"),
    "other": ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts",
              "human_aging", "management", "marketing", "medical_genetics", "miscellaneous",
              "nutrition", "professional_accounting", "professional_medicine", "virology"),
    "social_sciences": ("econometrics", "high_school_geography",
                        "high_school_government_and_politics", "high_school_macroeconomics",
                        "high_school_microeconomics", "high_school_psychology", "human_sexuality",
                        "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence",
                   "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
                   "prehistory", "professional_law", "world_religions"),
}
CATEGORY_OF = {s: c for c, subjects in CATEGORIES.items() for s in subjects}
Row = tuple[str, tuple[str, ...], int]  # question, the four options, gold index


def description(subject: str) -> str:
    return ("The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.{FEWSHOT_DELIMITER}")


def question_text(question: str, options: Sequence[str]) -> str:
    """The harness's doc_to_text: the stripped question, lettered options, "Answer:"."""
    lines = [question.strip()] + [f"{l}. {o}" for l, o in zip(LETTERS, options)]
    return "\n".join(lines) + "\nAnswer:"


def render(subject: str, question: str, options: Sequence[str],
           shots: Sequence[tuple[str, Sequence[str], int]]) -> str:
    """description + each shot "text answer-letter" + "\\n\\n" + the question text."""
    parts = [question_text(q, o) + TARGET_DELIMITER + LETTERS[g] + FEWSHOT_DELIMITER
             for q, o, g in shots]
    return description(subject) + "".join(parts) + question_text(question, options)


def read_rows(path: Path) -> list[Row]:
    """(question, options, gold index) per CSV row; a bad row raises naming file and record."""
    rows = []
    for n, cells in files.read_csv(path):
        where = f"{path}:{n}"
        if len(cells) != 6:
            raise ValueError(f"{where}: {len(cells)} columns, expected 6 (question, A, B, C, D, "
                             "answer letter)")
        answer = cells[5].strip()
        if answer not in LETTERS:
            raise ValueError(f"{where}: answer {answer!r} is not one of {LETTERS}")
        rows.append((cells[0], tuple(cells[1:5]), LETTERS.index(answer)))
    return rows


def parse_hub_row(row: dict[str, Any], where: str) -> tuple[str, Row]:
    """A `cais/mmlu` row -> (subject, row)."""
    subject = files.field(row, "subject", str, where)
    options = files.field(row, "choices", list, where)
    if len(options) != len(LETTERS):
        raise ValueError(f"{where}: {len(options)} choices, expected {len(LETTERS)} (A-D)")
    gold = files.gold_index(files.field(row, "answer", int, where), len(LETTERS), where)
    return subject, (files.field(row, "question", str, where), tuple(str(o) for o in options), gold)


def by_subject(rows: files.Rows) -> dict[str, list[Row]]:
    """Hub rows grouped by their `subject` column (row order kept within a subject), subjects
    sorted as the release folder's file names are."""
    out: dict[str, list[Row]] = {}
    for where, row in rows:
        subject, parsed = parse_hub_row(row, where)
        out.setdefault(subject, []).append(parsed)
    return dict(sorted(out.items()))


def subjects_in(root: Path) -> list[str]:
    test = root / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"{root}: no test/ folder; --data mmlu=PATH must be the MMLU "
                                "folder holding dev/ and test/ (<subject>_test.csv)")
    found = sorted(p.name[:-len("_test.csv")] for p in test.glob("*_test.csv"))
    if not found:
        raise FileNotFoundError(f"{test}: no <subject>_test.csv files")
    return found


def check_shots(num_fewshot: int) -> None:
    if not 0 <= num_fewshot <= 5:
        raise ValueError(f"num_fewshot={num_fewshot}: MMLU's dev split has 5 rows per subject")


def from_subjects(test: dict[str, Sequence[Row]], dev: dict[str, Sequence[Row]],
                  num_fewshot: int, limit: int | None, dev_source: str) -> list[ChoiceDoc]:
    """Every subject's test documents in the given subject order then row order (`limit`: per
    subject), each headed by the first `num_fewshot` rows of its subject's dev rows."""
    check_shots(num_fewshot)
    docs = []
    for subject, rows in test.items():
        shots = list(dev.get(subject, ()))[:num_fewshot]
        if len(shots) < num_fewshot:
            raise ValueError(f"{dev_source}: {len(shots)} dev rows for {subject}, fewer than "
                             f"num_fewshot={num_fewshot}")
        docs += [ChoiceDoc(i, render(subject, q, o, shots), LETTERS, g, group=subject)
                 for i, (q, o, g) in enumerate(rows[:limit])]
    return docs


def load(path: str | Path, num_fewshot: int = 0, limit: int | None = None,
         subjects: Sequence[str] | None = None) -> list[ChoiceDoc]:
    """Every subject's test documents in subject then file order (`limit`: per subject)."""
    root = Path(path)
    chosen = list(subjects) if subjects else subjects_in(root)
    check_shots(num_fewshot)

    def split(name: str) -> dict[str, list[Row]]:
        return {s: read_rows(files.require_file(root / name / f"{s}_{name}.csv",
                                                f"MMLU {s} {name} CSV")) for s in chosen}

    return from_subjects(split("test"), split("dev") if num_fewshot else {}, num_fewshot, limit,
                         str(root / "dev"))


def group_means(records: Sequence[dict], metric: str = "acc") -> dict[str, dict[str, float]]:
    """{"subjects": {s: mean}, "categories": {c: mean}} over documents (size-weighted)."""
    by_subject: dict[str, list[float]] = {}
    for r in records:
        by_subject.setdefault(r["subject"], []).append(r[metric])
    by_category: dict[str, list[float]] = {}
    for s, vals in by_subject.items():
        by_category.setdefault(CATEGORY_OF.get(s, "unknown"), []).extend(vals)
    mean = lambda d: {k: float(np.mean(v)) for k, v in sorted(d.items())}  # noqa: E731
    return {"subjects": mean(by_subject), "categories": mean(by_category)}
