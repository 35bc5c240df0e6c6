"""Labelled text in files: CSV, TSV or JSON-lines, read by column name, with errors naming file and line.

CSV is read with Python's ``csv`` module (quoted fields may hold commas and newlines); TSV is split on
tabs with no quote handling (as GLUE's files need: sentences hold quote characters); JSON-lines holds
one JSON object per line. Every format needs a header (CSV/TSV) or keys (JSON-lines) naming the columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def file_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; allowed: .csv, .tsv, .jsonl (one JSON "
                        "object per line)")
    return FORMATS[suffix]


def _text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start}); save the file as "
                        "UTF-8") from None


def _delimited(path: Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict]]]:
    if delimiter == "\t":
        lines = [line.rstrip("\r") for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            return [], []
        header = lines[0].split("\t")
        rows = []
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataError(f"{path}:{number}: has {len(fields)} tab-separated fields; "
                                f"the header has {len(header)}")
            rows.append((number, dict(zip(header, fields))))
        return header, rows
    reader = csv.reader(text.splitlines(keepends=True))
    records = []
    try:
        for fields in reader:
            records.append((reader.line_num, fields))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
    records = [(n, f) for n, f in records if f]  # blank lines
    if not records:
        return [], []
    header = records[0][1]
    rows = []
    for number, fields in records[1:]:
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}: has {len(fields)} comma-separated fields; the header has {len(header)}")
        rows.append((number, dict(zip(header, fields))))
    return header, rows


def _jsonl(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    rows, keys = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a JSON {type(row).__name__}; each line must hold one JSON object")
        keys += [k for k in row if k not in keys]
        rows.append((number, row))
    return keys, rows


def read_records(path: str | Path, columns: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) of every example of a CSV, TSV or JSON-lines file; each row holds ``columns``.

    Raises ``DataError`` naming the file (and line) for an empty file, a missing column, a malformed row.
    """
    path = Path(path)
    kind = file_format(path)
    text = _text(path)
    header, rows = _jsonl(path, text) if kind == "jsonl" else _delimited(path, text, "\t" if kind == "tsv" else ",")
    if not rows:
        raise DataError(f"{path}: no examples (an empty file{'' if kind == 'jsonl' else ' or a header only'})")
    for column in columns:
        if column not in header:
            raise DataError(f"{path}: no column {column!r}; the file has {', '.join(map(repr, header[:20]))}")
    for number, row in rows:
        for column in columns:
            if row.get(column) is None:
                raise DataError(f"{path}:{number}: column {column!r} is missing or null")
    return rows
