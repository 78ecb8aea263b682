"""Reading benchmark files with errors that name the file, the line and the field.

Every loader takes a path to the user's own copy (`.gz` and `.bz2` are opened transparently);
`tasks.hub` feeds the same row parsers from the Hugging Face hub instead.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

Doc = TypeVar("Doc")
Rows = Iterable[tuple[str, dict[str, Any]]]  # (where, row): "file:line" or a hub row's name


def require_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or FileNotFoundError naming what the file should hold."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file; pass the {what} with --data TASK=PATH")
    return p


def open_text(path: Path) -> io.TextIOBase:
    """A text handle on a plain, `.gz` or `.bz2` file (UTF-8)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line; a bad line raises ValueError."""
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); expected one JSON "
                                 "object per line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: a JSON {type(row).__name__}, expected an object")
            yield n, row


def jsonl_rows(path: str | Path, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", object) per row of a JSON-lines file; a missing file is refused now, not
    at the first row."""
    p = require_file(path, what)
    return ((f"{p}:{n}", row) for n, row in read_jsonl(p))


def parse_rows(rows: Rows, parse_row: Callable[[dict[str, Any], int, str], Doc],
               limit: int | None) -> list[Doc]:
    """The first `limit` rows (all when None), each turned into a document by
    `parse_row(row, doc_id, where)`: one loop for every row source (a jsonl file, a hub split),
    so the 0-based doc_id and the error location are the same everywhere."""
    docs: list[Doc] = []
    for where, row in rows:
        if limit is not None and len(docs) >= limit:
            break
        docs.append(parse_row(row, len(docs), where))
    return docs


def load_rows(path: str | Path, parse_row: Callable[[dict[str, Any], int, str], Doc],
              limit: int | None, what: str) -> list[Doc]:
    """`parse_rows` over a JSON-lines file."""
    return parse_rows(jsonl_rows(path, what), parse_row, limit)


def read_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based record number, cells) of a headerless CSV file."""
    with open_text(path) as f:
        for n, cells in enumerate(csv.reader(f), start=1):
            if cells:
                yield n, cells


def field(row: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """row[name], checked to be of `kind`; `where` is "file:line" for the error message."""
    if name not in row:
        raise ValueError(f"{where}: missing field {name!r} (fields present: {sorted(row)})")
    value = row[name]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: field {name!r} is a {type(value).__name__}, expected {names}")
    return value


def gold_index(value: int, n_choices: int, where: str) -> int:
    if not 0 <= value < n_choices:
        raise ValueError(f"{where}: gold index {value} is outside the {n_choices} choices")
    return value
