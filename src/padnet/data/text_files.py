"""Labelled text in files: CSV, TSV or JSON-lines, read by column name, with errors naming file and line.

CSV is read with Python's ``csv`` module (quoted fields may hold commas and newlines); TSV is split on
tabs with no quote handling (as GLUE's files need: sentences hold quote characters); JSON-lines holds
one JSON object per line. Every format needs a header (CSV/TSV) or keys (JSON-lines) naming the columns.
"""

from __future__ import annotations

import csv
import json
import stat
from collections.abc import Generator, Iterator
from pathlib import Path

from ..errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def file_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; allowed: .csv, .tsv, .jsonl (one JSON "
                        "object per line)")
    return FORMATS[suffix]


MAX_LINE_BYTES = 1 << 20  # 1 MiB: a sentence, a review, an article fits; a 1 GB line is not text data
MAX_COLUMNS = 1000


def read_lines(path: Path) -> Generator[tuple[int, str], None, None]:
    """(line number, line with its newline) of a UTF-8 text file, read a line at a time: memory stays
    bounded by ``MAX_LINE_BYTES`` per line whatever the file holds (a FIFO or device is refused)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise FileNotFoundError(f"{path}: no such file") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a folder, FIFO or device)")
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes; text data has "
                                "shorter lines (is this the right file?)")
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} of the line); "
                                "save the file as UTF-8") from None
            yield number, line


def _header(path: Path, header: list[str]) -> list[str]:
    if len(header) > MAX_COLUMNS:
        raise DataError(f"{path}:1: a header of {len(header):,} columns; at most {MAX_COLUMNS:,}")
    return header


def _delimited(path: Path, lines: Iterator[tuple[int, str]], delimiter: str
               ) -> tuple[list[str], list[tuple[int, dict]]]:
    if delimiter == "\t":
        header: list[str] | None = None
        rows = []
        for number, line in lines:
            line = line.rstrip("\n").rstrip("\r")
            if header is None:
                header = _header(path, line.split("\t"))
                continue
            fields = line.split("\t")
            if fields == [""]:
                continue  # a blank line (the end of the file)
            if len(fields) != len(header):
                raise DataError(f"{path}:{number}: has {len(fields)} tab-separated fields; "
                                f"the header has {len(header)}")
            rows.append((number, dict(zip(header, fields))))
        return header or [], rows
    reader = csv.reader(line for _, line in lines)  # reader.line_num: the line the last row ended on
    header = None
    rows = []
    try:
        for fields in reader:
            if not fields:
                continue  # a blank line
            if header is None:
                header = _header(path, fields)
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{reader.line_num}: has {len(fields)} comma-separated fields; the header "
                                f"has {len(header)}")
            rows.append((reader.line_num, dict(zip(header, fields))))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
    return header or [], rows


def _jsonl(path: Path, lines: Iterator[tuple[int, str]]) -> tuple[list[str], list[tuple[int, dict]]]:
    rows: list[tuple[int, dict]] = []
    keys: list[str] = []
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            message = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            raise DataError(f"{path}:{number}: not a JSON object ({message})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a JSON {type(row).__name__}; each line must hold one JSON object")
        keys += [k for k in row if k not in keys]
        if len(keys) > MAX_COLUMNS:
            raise DataError(f"{path}:{number}: more than {MAX_COLUMNS:,} distinct keys")
        rows.append((number, row))
    return keys, rows


def column_names(path: str | Path) -> list[str]:
    """The columns a CSV/TSV header names, or the keys of a JSON-lines file's first object, reading
    only the first lines: what a check before a run starts needs. ``DataError`` / ``FileNotFoundError``
    as ``read_records``."""
    path = Path(path)
    kind = file_format(path)
    lines = read_lines(path)
    try:
        first = next(((n, line) for n, line in lines if line.strip()), None)
    finally:
        lines.close()
    if first is None:
        return []
    if kind == "jsonl":
        return _jsonl(path, iter([first]))[0]
    return _delimited(path, iter([first]), "\t" if kind == "tsv" else ",")[0]


def read_records(path: str | Path, columns: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) of every example of a CSV, TSV or JSON-lines file; each row holds ``columns``.

    Raises ``DataError`` naming the file (and line) for an empty file, a missing column, a malformed row.
    """
    path = Path(path)
    kind = file_format(path)
    lines = read_lines(path)
    header, rows = _jsonl(path, lines) if kind == "jsonl" else _delimited(path, lines, "\t" if kind == "tsv" else ",")
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
