"""GSM8K: loading (jsonl / HF datasets / tfds), answer extraction and grading, leak-free splits.

Grading is the measurement of the whole study, so extraction is deliberately strict about *where*
it looks (``#### N`` first, then ``\\boxed{N}``, then "the answer is N", then the last number) and
lenient about *how* a number is written ($, thousands commas, unicode minus, units, LaTeX).
Splits compare normalized question text, not only ids: the study this project re-examines
evaluated on training questions, and that must be impossible here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

SOURCES = ("jsonl", "hf", "tfds")


@dataclasses.dataclass(frozen=True)
class Example:
    """One GSM8K problem.

    ``solution`` is the full worked answer (ending in ``#### N``); ``answer`` is the gold final
    answer as a normalized number string; ``uid`` is ``"{source}:{split}:{index}"``, stable
    across runs so splits and evaluations can be audited.
    """

    question: str
    solution: str
    answer: str
    uid: str


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------

# An unsigned number: thousands-grouped or plain integer part, optional decimals, or ".5".
# The grouped form must not be followed by another digit ("1,2345" is not one thousand...).
_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
# A sign counts only when it is not glued to a preceding word or number ("16-3" is a
# subtraction, "mid-2020" is a year), and digits never start inside a word ("x2", "1.2.3").
_SIGNED = rf"(?:(?<![\w.)\]}}])-)?(?<![\w.]){_UNSIGNED}"
_TOKEN = re.compile(
    rf"(?P<lneg>-)?\\[dt]?frac\{{\s*(?P<lnum>{_SIGNED})\s*\}}\{{\s*(?P<lden>{_SIGNED})\s*\}}"
    rf"|(?P<pnum>{_SIGNED})/(?P<pden>{_UNSIGNED})(?![\d/])"
    rf"|(?P<num>{_SIGNED})"
)


def _clean(text: str) -> str:
    """Rewrites the ways models write numbers into one plain form; keeps everything else."""
    text = text.replace("\u2212", "-")  # unicode minus
    text = text.replace("\\$", "").replace("$", "")
    text = text.replace("{,}", ",")  # LaTeX thousands separator 1{,}000
    text = re.sub(r"(?<=\d)\\,(?=\d{3}(?!\d))", ",", text)  # LaTeX thin space 1\,000
    return text.replace("\\!", "")


def _decimal(number: str) -> Decimal:
    return Decimal(number.replace(",", ""))


def _token_value(match: re.Match[str]) -> Decimal | None:
    """The value of one ``_TOKEN`` match; None for a zero denominator."""
    if match.group("num") is not None:
        return _decimal(match.group("num"))
    if match.group("pnum") is not None:
        num, den = _decimal(match.group("pnum")), _decimal(match.group("pden"))
    else:
        num, den = _decimal(match.group("lnum")), _decimal(match.group("lden"))
        if match.group("lneg"):
            num = -num
    return num / den if den != 0 else None


def _format(value: Decimal) -> str:
    """Canonical string: no exponent, no trailing zeros, integers without a point, no -0."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _parse_strict(text: str) -> Decimal | None:
    """A whole string that is exactly one number (units like % or a final period allowed)."""
    core = re.sub(r"\s*%?\s*\.?\s*$", "", _clean(text).strip())
    core = re.sub(r"^-\s+", "-", core)
    match = _TOKEN.fullmatch(core)
    return None if match is None else _token_value(match)


def normalize_number(text: str) -> str | None:
    """Canonical form of a string that is one number, else None.

    ``"$1,200.50"`` -> ``"1200.5"``, ``"5.0"`` -> ``"5"``, ``"−3"`` -> ``"-3"``,
    ``"3/4"`` -> ``"0.75"``. Used for gold labels and for comparing answers.
    """
    value = _parse_strict(text)
    return None if value is None else _format(value)


# --------------------------------------------------------------------------------------------
# Extraction and grading
# --------------------------------------------------------------------------------------------


def _numbers(text: str) -> Iterable[Decimal]:
    for match in _TOKEN.finditer(text):
        value = _token_value(match)
        if value is not None:
            yield value


def _first_number(span: str) -> Decimal | None:
    """First number in an answer span; a sign separated by spaces ("#### - 5") still counts."""
    return next(iter(_numbers(re.sub(r"^\s*-\s+(?=[\d.])", "-", span))), None)


def _after_hashes(text: str) -> Decimal | None:
    # The FIRST final line wins: a model that keeps going after "#### N" writes made-up follow-up
    # problems with their own "####" lines.
    for match in re.finditer(r"####([^\n]*)", text):
        value = _first_number(match.group(1))
        if value is not None:
            return value
    return None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}``, with nested braces balanced."""
    contents = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                contents.append(text[start:end])
                break
    return contents


def _last_boxed(text: str) -> Decimal | None:
    for content in reversed(_boxed_contents(text)):
        value = _first_number(content)
        if value is not None:
            return value
    return None


def _after_answer_is(text: str) -> Decimal | None:
    # Spans start after each phrase and end at the line break, so a later phrase on the same
    # line ("the answer is 5. No, the answer is 6.") is found on its own.
    starts = [m.end() for m in re.finditer(r"\banswer\s+is\b:?", text, re.IGNORECASE)]
    for start in reversed(starts):
        end = text.find("\n", start)
        value = _first_number(text[start:] if end == -1 else text[start:end])
        if value is not None:
            return value
    return None


def _last_number(text: str) -> Decimal | None:
    values = list(_numbers(text))
    return values[-1] if values else None


_EXTRACTORS: tuple[Callable[[str], Decimal | None], ...] = (
    _after_hashes,
    _last_boxed,
    _after_answer_is,
    _last_number,
)


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a completion, normalized; None if it contains no number.

    Precedence: first ``#### N`` line, last ``\\boxed{N}``, last "the answer is N", last number.
    A marker without a number (``\\boxed{x}``) falls through to the next rule.
    """
    cleaned = _clean(text)
    for extractor in _EXTRACTORS:
        value = extractor(cleaned)
        if value is not None:
            return _format(value)
    return None


def is_correct(pred: str | None, gold: str) -> bool:
    """Numeric equality up to 1e-6 relative; ``pred`` is an extracted answer (None -> False).

    Raises ValueError if ``gold`` is not a number: a broken gold label must not score as wrong.
    """
    gold_value = _parse_strict(gold)
    if gold_value is None:
        raise ValueError(f"gold answer {gold!r} is not a number")
    pred_value = None if pred is None else _parse_strict(pred)
    if pred_value is None:
        return False
    return abs(pred_value - gold_value) <= Decimal("1e-6") * max(abs(pred_value), abs(gold_value))


def gold_answer(solution: str) -> str:
    """The normalized number after the last ``####`` of a GSM8K worked solution."""
    _, marker, tail = solution.rpartition("####")
    if not marker:
        raise ValueError("answer has no final '#### <number>' line")
    value = _parse_strict(tail)
    if value is None:
        raise ValueError(f"text after '####' is not a number: {tail.strip()!r}")
    return _format(value)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _make_example(record: Any, uid: str, where: str) -> Example:
    """Validates one raw ``{"question", "answer"}`` record; ``where`` locates it in errors."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected an object with 'question' and 'answer', "
                         f"got {type(record).__name__}")
    missing = [key for key in ("question", "answer") if key not in record]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    for key in ("question", "answer"):
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: field {key!r} must be a string, "
                             f"got {type(record[key]).__name__}")
    try:
        answer = gold_answer(record["answer"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return Example(question=record["question"], solution=record["answer"], answer=answer, uid=uid)


def load_jsonl(path: str | Path, split: str | None = None) -> list[Example]:
    """GSM8K-format jsonl (``{"question", "answer"}`` per line); ``split`` defaults to the stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K jsonl file not found: {path}")
    split = split or path.stem
    examples: list[Example] = []
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            examples.append(_make_example(record, f"jsonl:{split}:{len(examples)}", where))
    return examples


def load_hf(split: str, name: str = "openai/gsm8k", config: str = "main",
            cache_dir: str | None = None) -> list[Example]:
    """GSM8K via ``datasets.load_dataset``; set ``HF_DATASETS_OFFLINE=1`` to read only the cache."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("load_hf needs Hugging Face datasets: pip install datasets") from err
    rows = datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    return [_make_example(row, f"hf:{split}:{i}", f"{name} ({config}) split {split!r} row {i}")
            for i, row in enumerate(rows)]


def _decode_row(row: Any) -> Any:
    if not isinstance(row, Mapping):
        return row
    return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in row.items()}


def load_tfds(split: str, data_dir: str | None = None, download: bool = False) -> list[Example]:
    """GSM8K via the tfds ``gsm8k`` builder's random-access data source (no TensorFlow needed).

    ``download=False`` by default: runs never fetch data; prepare it once with
    ``tfds build gsm8k --file_format=array_record`` or pass ``download=True``.
    """
    try:
        import tensorflow_datasets as tfds
        import tensorflow_datasets.text.gsm8k  # noqa: F401  (registers the builder by name)
    except ImportError as err:
        raise ImportError("load_tfds needs TensorFlow Datasets and ArrayRecord: "
                          "pip install tensorflow-datasets array-record "
                          "(TensorFlow itself is not required)") from err
    source = tfds.data_source("gsm8k", split=split, data_dir=data_dir, download=download)
    return [_make_example(_decode_row(source[i]), f"tfds:{split}:{i}",
                          f"tfds gsm8k split {split!r} row {i}")
            for i in range(len(source))]


def load(source: str, split: str, path: str | Path | None = None, **kwargs: Any) -> list[Example]:
    """Dispatches to a loader. ``path`` is: jsonl -> a file or a directory holding
    ``{split}.jsonl``; hf -> the dataset name or a local dataset directory; tfds -> ``data_dir``.
    """
    if source == "jsonl":
        if path is None:
            raise ValueError("source='jsonl' needs path= (a .jsonl file or a directory "
                             "containing {split}.jsonl)")
        file = Path(path) / f"{split}.jsonl" if Path(path).is_dir() else Path(path)
        return load_jsonl(file, split=split, **kwargs)
    if source == "hf":
        return load_hf(split, **({"name": str(path)} if path is not None else {}), **kwargs)
    if source == "tfds":
        return load_tfds(split, data_dir=None if path is None else str(path), **kwargs)
    raise ValueError(f"unknown GSM8K source {source!r}; choose one of {', '.join(SOURCES)}")


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def normalize_question(text: str) -> str:
    """Identity of a question for leak checks: insensitive to Unicode form, curly quotes, case
    and whitespace, so a re-spaced copy of an eval question still counts as the same question."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold().split())


@dataclasses.dataclass(frozen=True)
class Splits:
    """Training prompts, the few-shot pool (teacher contexts) and held-out evaluation problems."""

    train: tuple[Example, ...]
    fewshot: tuple[Example, ...]
    eval: tuple[Example, ...]


def _dedupe(pool: Sequence[Example]) -> list[Example]:
    """First occurrence of each question (by normalized text) and of each uid."""
    seen_questions: set[str] = set()
    seen_uids: set[str] = set()
    unique = []
    for example in pool:
        key = normalize_question(example.question)
        if key not in seen_questions and example.uid not in seen_uids:
            unique.append(example)
        seen_questions.add(key)
        seen_uids.add(example.uid)
    return unique


def _rng(seed: int, stream: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`: stable across runs and PYTHONHASHSEED.
    return random.Random(f"cliffdistill:{seed}:{stream}")


def make_splits(train_pool: Sequence[Example], eval_pool: Sequence[Example], n_train: int,
                n_fewshot: int, n_eval: int, seed: int) -> Splits:
    """Deterministic, leak-free splits.

    Eval is a sample of ``eval_pool`` (kept in pool order). Train and few-shot are disjoint
    samples of ``train_pool`` after removing duplicates and every question (normalized text) or
    uid that occurs anywhere in ``eval_pool`` -- the whole pool, so the training data does not
    depend on ``n_eval``. The few-shot pool is drawn first, so it stays fixed when ``n_train``
    changes.
    """
    for field, n in (("n_train", n_train), ("n_fewshot", n_fewshot), ("n_eval", n_eval)):
        if n < 0:
            raise ValueError(f"make_splits: {field}={n} must be >= 0")
    eval_unique = _dedupe(eval_pool)
    if n_eval > len(eval_unique):
        raise ValueError(f"make_splits: n_eval={n_eval} but the eval pool has only "
                         f"{len(eval_unique)} distinct questions; lower n_eval")
    eval_questions = {normalize_question(e.question) for e in eval_pool}
    eval_uids = {e.uid for e in eval_pool}
    train_unique = _dedupe(train_pool)
    candidates = [e for e in train_unique if e.uid not in eval_uids
                  and normalize_question(e.question) not in eval_questions]
    if n_train + n_fewshot > len(candidates):
        raise ValueError(
            f"make_splits: n_train={n_train} + n_fewshot={n_fewshot} = {n_train + n_fewshot} "
            f"but only {len(candidates)} training questions remain ({len(train_pool)} in the pool, "
            f"{len(train_pool) - len(train_unique)} duplicates and "
            f"{len(train_unique) - len(candidates)} shared with the eval pool removed); "
            f"lower n_train or n_fewshot")
    eval_idx = sorted(_rng(seed, "eval").sample(range(len(eval_unique)), n_eval))
    order = _rng(seed, "train").sample(range(len(candidates)), n_train + n_fewshot)
    splits = Splits(
        train=tuple(candidates[i] for i in order[n_fewshot:]),
        fewshot=tuple(candidates[i] for i in order[:n_fewshot]),
        eval=tuple(eval_unique[i] for i in eval_idx),
    )
    check_disjoint(splits)
    return splits


def _preview(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(s if len(s) <= 80 else s[:77] + "...") for s in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_disjoint(splits: Splits) -> None:
    """Raises ValueError naming every uid and question shared by two of train/fewshot/eval."""
    problems = []
    for a, b in itertools.combinations(("train", "fewshot", "eval"), 2):
        left, right = getattr(splits, a), getattr(splits, b)
        uids = sorted({e.uid for e in left} & {e.uid for e in right})
        left_questions = {normalize_question(e.question): e.question for e in left}
        shared = left_questions.keys() & {normalize_question(e.question) for e in right}
        questions = sorted(left_questions[key] for key in shared)
        if uids:
            problems.append(f"{a}/{b} share {len(uids)} uid(s): {_preview(uids)}")
        if questions:
            problems.append(f"{a}/{b} share {len(questions)} question(s): {_preview(questions)}")
    if problems:
        raise ValueError("splits overlap (scores on seen questions are not held-out accuracy): "
                         + "; ".join(problems))
