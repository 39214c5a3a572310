"""Texts to classify, streamed from a file or stdin: one per line, or a CSV/TSV/JSONL column.

    for row, text in read_texts(open("tweets.csv", "rb"), "tweets.csv", "csv", "text"):
        ...

Reads one record at a time (constant memory). Each problem is an `InputError` naming
the source, the row (plain text and JSONL: the line number; CSV/TSV: the record
number, the header being row 1, as `tfmp train` counts) and what to do: an empty
text, a missing column, bytes that are not UTF-8 text (binary input).
"""

import csv
import json
import os
import select
import stat

from tfmp.errors import InputError

FORMATS = ("lines", "csv", "tsv", "jsonl")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_COLUMN = "text"


class LineSource:
    """The lines of a binary stream; `idle` says no further line is ready without waiting.

    A regular file is read as usual (never idle before its end). A pipe or terminal
    is read with `os.read` as bytes arrive, so that `tfmp predict` answers the texts it
    has when the writer pauses (an interactive session, a request at a time) instead
    of waiting for a full batch.
    """

    def __init__(self, stream):
        self.stream, self.idle = stream, False
        try:
            fd = stream.fileno()
            self._fd = None if stat.S_ISREG(os.fstat(fd).st_mode) else fd
        except (AttributeError, OSError, ValueError):
            self._fd = None  # an in-memory stream or an iterable of lines

    def __iter__(self):
        if self._fd is None:
            yield from self.stream
            return
        pending = b""
        while True:
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for i, line in enumerate(lines):
                self.idle = i == len(lines) - 1 and not select.select([self._fd], [], [], 0)[0]
                yield line + b"\n"
        if pending:
            self.idle = True
            yield pending


def guess_format(name, given=None):
    """The input format: `given`, else from the file's extension, else plain lines."""
    if given:
        return given
    return EXTENSIONS.get(os.path.splitext(name)[1].lower(), "lines")


def _decoded(stream, source):
    """(line number, str line without its line break) of a binary stream, strictly UTF-8."""
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark
        if b"\x00" in raw:
            raise InputError(f"{source}: line {number} holds a NUL byte: this looks like "
                             "a binary file, not text. Give a UTF-8 text, CSV, TSV or "
                             "JSONL file.")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{source}: line {number} is not UTF-8 text (byte "
                             f"0x{raw[e.start]:02x} at column {e.start + 1}): a binary file "
                             "or another encoding. Convert it to UTF-8 (e.g. `iconv -t "
                             "UTF-8`).") from None
        yield number, line.rstrip("\r\n")


def _empty(source, where, skip_empty):
    if not skip_empty:
        raise InputError(f"{source}: {where} is empty: there is no text to classify. Remove "
                         "empty texts, or pass --skip-empty to leave them out.")


def _lines(stream, source, skip_empty):
    for number, line in _decoded(stream, source):
        if not line.strip():
            _empty(source, f"line {number}", skip_empty)
            continue
        yield number, line


def _delimited(stream, source, delimiter, column, skip_empty):
    lines = (line + "\n" for _, line in _decoded(stream, source))
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise InputError(f"{source}: row 1 (the header) is not valid CSV ({e}).") from None
    if column not in header:
        raise InputError(f"{source}: no column {column!r} in the header; its columns are "
                         f"{header}. Pass --text-column with one of them.")
    index = header.index(column)
    row = 1
    try:
        for record in reader:
            row += 1
            if not record:
                continue  # a blank line between records: csv gives []
            if index >= len(record):
                raise InputError(f"{source}: row {row} has {len(record)} fields, no "
                                 f"{column!r} (field {index + 1}). Fix the row.")
            text = record[index]
            if not text.strip():
                _empty(source, f"row {row}, column {column!r},", skip_empty)
                continue
            yield row, text
    except csv.Error as e:
        raise InputError(f"{source}: row {row + 1} is not valid CSV ({e}).") from None


def _jsonl(stream, source, column, skip_empty):
    for number, line in _decoded(stream, source):
        if not line.strip():
            continue  # JSONL allows blank lines between records
        try:
            record = json.loads(line)
        except ValueError as e:
            raise InputError(f"{source}: line {number} is not JSON ({e}).") from None
        if not isinstance(record, dict) or column not in record:
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            raise InputError(f"{source}: line {number} has no {column!r} key (it has "
                             f"{keys}). Pass --text-column with the key of the text.")
        text = record[column]
        if not isinstance(text, str):
            raise InputError(f"{source}: line {number}: {column!r} is "
                             f"{type(text).__name__}, not a string.")
        if not text.strip():
            _empty(source, f"line {number}, key {column!r},", skip_empty)
            continue
        yield number, text


def read_texts(stream, source, fmt="lines", column=None, skip_empty=False):
    """Yields (row, text) from binary `stream`; `InputError` on the first bad record.

    Args:
        stream: a binary file object (a file, or `sys.stdin.buffer`).
        source: str. How messages name it ("tweets.csv", "stdin").
        fmt: one of FORMATS.
        column: str or None. The text column or key of CSV/TSV/JSONL (None: "text").
        skip_empty: bool. Leave empty texts out instead of refusing them.
    """
    if fmt not in FORMATS:
        raise InputError(f"Unknown input format {fmt!r}; choose from {list(FORMATS)}.")
    if fmt == "lines":
        if column:
            raise InputError("--text-column is for CSV, TSV and JSONL input; this input is "
                             "read as one text per line (pass --format to say otherwise).")
        return _lines(stream, source, skip_empty)
    column = column or DEFAULT_COLUMN
    if fmt == "jsonl":
        return _jsonl(stream, source, column, skip_empty)
    return _delimited(stream, source, "," if fmt == "csv" else "\t", column, skip_empty)
