"""The harness's few-shot draw (lm-eval 0.4.x `api.samplers.ContextSampler`, seeded by
`Task.set_fewshot_seed(1234)`) and where a local file's few-shot pool lives.

One `random.Random(FEWSHOT_SEED)` per task draws every document's shots in document order with
`Random.sample` over the whole pool (in file order). When the task's few-shot split is "the same"
as its test split (the harness compares `fewshot_split == test_split`; HellaSwag has neither, so
None == None holds), the sampler draws k + 1 rows, drops any equal to the document being scored
and keeps the first k (re-drawing from the pool without that row if fewer remain): one more
draw per document, which changes every later document's shots. Indices are drawn, not rows:
`Random.sample` picks the same positions whatever the elements are.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, Sequence

from cliffdistill.tasks import files
from cliffdistill.tasks.multiple_choice import FEWSHOT_DELIMITER, ChoiceDoc

FEWSHOT_SEED = 1234
Clash = Callable[[int], bool]  # pool index -> is it the document being scored


def draw(rnd: random.Random, pool_size: int, k: int, clashes: Clash | None = None) -> list[int]:
    """Pool indices of one document's k shots, as `ContextSampler.sample(k, eval_doc)` draws
    them (`clashes` given = the eval-doc path: k + 1 drawn, the clashing ones dropped)."""
    if k == 0:
        return []
    if clashes is None:
        return rnd.sample(range(pool_size), k)
    picked = [j for j in rnd.sample(range(pool_size), k + 1) if not clashes(j)][:k]
    if len(picked) < k:
        picked = rnd.sample([j for j in range(pool_size) if not clashes(j)], k)
    return picked


def draws(pool_size: int, k: int, clashes: Sequence[Clash | None], source: str) -> list[list[int]]:
    """Every document's shot indices (one entry of `clashes` per document, in document order:
    None when the task draws without the eval-doc exclusion), from one Random(FEWSHOT_SEED), so
    `--limit` does not change the shots of the first documents. Too small a pool is refused
    naming `source`."""
    if k < 0:
        raise ValueError(f"--num_fewshot {k}: must be >= 0")
    need = k + 1 if any(c is not None for c in clashes) and k else k
    if need > pool_size:
        raise ValueError(f"--num_fewshot {k} draws {need} rows per document from the few-shot "
                         f"pool {source}, which has {pool_size}; pass a smaller --num_fewshot "
                         "or a larger pool")
    rnd = random.Random(FEWSHOT_SEED)
    return [draw(rnd, pool_size, k, c) for c in clashes]


def shot_text(doc: ChoiceDoc) -> str:
    """A multiple-choice shot: context, target delimiter, the gold choice, few-shot delimiter."""
    return doc.context + doc.delimiter + doc.choices[doc.gold] + FEWSHOT_DELIMITER


def with_shots(doc: ChoiceDoc, shots: Sequence[ChoiceDoc]) -> ChoiceDoc:
    """`doc` with its context headed by the rendered shots (its choices unchanged)."""
    return ChoiceDoc(doc.doc_id, "".join(map(shot_text, shots)) + doc.context, doc.choices,
                     doc.gold, doc.group, doc.delimiter)


Keyed = tuple[dict | None, ChoiceDoc]  # (the source row, for the eval-doc comparison; its doc)


def choice_docs(test: Sequence[Keyed], pool: Sequence[Keyed], k: int, exclude_eval: bool,
                source: str) -> list[ChoiceDoc]:
    """The test documents, each with k shots drawn from `pool`; `exclude_eval`: the harness's
    eval-doc path, a pool row equal to the document's own row (both known) being skipped."""
    if not k:
        return [d for _, d in test]

    def clash(row: dict | None) -> Clash | None:
        if not exclude_eval:
            return None
        return lambda j: row is not None and pool[j][0] == row

    picks = draws(len(pool), k, [clash(row) for row, _ in test], source)
    return [with_shots(d, [pool[j][1] for j in idx]) for (_, d), idx in zip(test, picks)]


def keyed(rows: files.Rows, parse_row: Callable[[dict, int, str], ChoiceDoc],
          limit: int | None) -> list[Keyed]:
    """(row, document) pairs: `files.parse_rows` keeping each source row."""
    return files.parse_rows(rows, lambda row, i, where: (row, parse_row(row, i, where)), limit)


def choice_task(test_rows: files.Rows, train_rows: files.Rows | None,
                parse_row: Callable[[dict, int, str], ChoiceDoc], num_fewshot: int,
                limit: int | None, exclude_eval: bool, source: str) -> list[ChoiceDoc]:
    """A multiple-choice task's documents (the first `limit` test rows) with `num_fewshot`
    shots each from the parsed `train_rows` (all of them, in order: the pool), `source` naming
    the pool in errors."""
    if num_fewshot and train_rows is None:
        raise ValueError(f"--num_fewshot {num_fewshot} needs the few-shot pool {source}")
    test = keyed(test_rows, parse_row, limit)
    pool = keyed(train_rows, parse_row, None) if num_fewshot and train_rows is not None else []
    return choice_docs(test, pool, num_fewshot, exclude_eval, source)


TEST_WORD = re.compile(r"test", re.IGNORECASE)


def train_beside(test: Path) -> Path:
    """The train file next to a test file: its name with the last "test" (any case, the case
    kept) replaced by "train" (arc_easy_test.jsonl -> arc_easy_train.jsonl, ARC-Easy-Test.jsonl
    -> ARC-Easy-Train.jsonl). A name without "test" is refused."""
    found = list(TEST_WORD.finditer(test.name))
    if not found:
        raise ValueError(f"{test}: the name has no 'test' to derive the few-shot train file's "
                         "name from; pass the train file with --fewshot_data TASK=PATH")
    m = found[-1]
    word = m.group()
    train = "TRAIN" if word.isupper() else "Train" if word[0].isupper() else "train"
    return test.with_name(test.name[:m.start()] + train + test.name[m.end():])


def local_pool(num_fewshot: int, train: str | Path | None, default: Callable[[], Path],
               how: str) -> tuple[files.Rows | None, str]:
    """(rows, name) of a local task's few-shot pool: the file `train` if given, else
    `default()` (the naming rule); (None, "") when zero-shot (nothing is read). A missing file
    is refused naming it and `how` to provide it."""
    if not num_fewshot:
        return None, ""
    path = Path(train) if train is not None else default()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file: the few-shot pool (train split) that "
                                f"--num_fewshot {num_fewshot} draws from; {how}, or pass "
                                "--fewshot_data TASK=PATH, or use --num_fewshot 0")
    return files.jsonl_rows(path, "few-shot train file"), str(path)
