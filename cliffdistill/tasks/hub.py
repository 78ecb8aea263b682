"""Benchmarks straight from the Hugging Face hub (`--data TASK=hf`), for a machine that is online.

Each task loads its standard dataset with `datasets.load_dataset` and every hub row becomes the
document the local-file loader makes from the same row (the loaders' own row parsers, so the two
routes cannot drift apart). A failed load (offline, `datasets` not installed, a renamed dataset)
is an error naming the dataset and the local-file alternative: never a silent fallback.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from cliffdistill.tasks import arc, hellaswag, humaneval, mbpp, mmlu

HUB = "hf"  # the --data value that selects the hub (a local file named so: pass ./hf)


@dataclasses.dataclass(frozen=True)
class Source:
    path: str
    name: str | None
    split: str

    def describe(self) -> str:
        return self.path + (f" ({self.name})" if self.name else "") + f", split {self.split}"


SOURCES = {
    "arc_challenge": Source("allenai/ai2_arc", "ARC-Challenge", "test"),
    "arc_easy": Source("allenai/ai2_arc", "ARC-Easy", "test"),
    "hellaswag": Source("Rowan/hellaswag", None, "validation"),
    "mmlu": Source("cais/mmlu", "all", "test"),
    "humaneval": Source("openai/openai_humaneval", None, "test"),
    "mbpp": Source("google-research-datasets/mbpp", "full", "test"),
}
MMLU_SHOTS_SPLIT = "dev"  # cais/mmlu's 5 rows per subject, the few-shot pool
FEWSHOT_SPLITS = {"arc_challenge": "train", "arc_easy": "train", "hellaswag": "train"}  # pools
ROW_TASKS: dict[str, Callable[..., list[Any]]] = {
    "arc_challenge": arc.docs, "arc_easy": arc.docs, "hellaswag": hellaswag.docs,
    "humaneval": humaneval.docs, "mbpp": mbpp.docs,
}


def source(task: str) -> Source:
    """The task's hub dataset, or ValueError for a task that has none."""
    if task not in SOURCES:
        raise ValueError(f"--data {task}={HUB}: {task} has no hub dataset (hub tasks: "
                         f"{', '.join(SOURCES)}); pass --data {task}=PATH")
    return SOURCES[task]


def rows(task: str, src: Source) -> list[tuple[str, dict[str, Any]]]:
    """("<dataset>, split <s> row <i>", row) for every row of the split."""
    try:
        import datasets

        split = datasets.load_dataset(src.path, src.name, split=src.split)
    except Exception as e:  # offline, no package, gone from the hub: all mean "use a local copy"
        raise FileNotFoundError(f"could not load the hub dataset {src.describe()} for {task} "
                                f"({type(e).__name__}: {e}); pass --data {task}=PATH with a "
                                "local copy instead (docs/EVALUATION.md)") from None
    return [(f"{src.describe()} row {i}", dict(row)) for i, row in enumerate(split)]


def load(task: str, num_fewshot: int = 0, limit: int | None = None) -> list[Any]:
    """The task's documents (or HumanEval problems) from its hub dataset."""
    src = source(task)
    if task == "mmlu":
        shots = dataclasses.replace(src, split=MMLU_SHOTS_SPLIT)
        dev = mmlu.by_subject(rows(task, shots)) if num_fewshot else {}
        return mmlu.from_subjects(mmlu.by_subject(rows(task, src)), dev, num_fewshot, limit,
                                  shots.describe())
    if task in FEWSHOT_SPLITS:
        pool = dataclasses.replace(src, split=FEWSHOT_SPLITS[task])
        return ROW_TASKS[task](rows(task, src), num_fewshot, limit,
                               rows(task, pool) if num_fewshot else None, pool.describe())
    return ROW_TASKS[task](rows(task, src), num_fewshot, limit)
