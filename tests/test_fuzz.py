"""Property tests of the reader layer: whatever the bytes, examples or a message naming the file.

Issue 13, item 12. Hypothesis writes JSON Lines of any structure (nesting depth, value types,
sizes), text in UTF-16/32 with and without a byte-order mark, Latin-1, random bytes, archives
renamed `.csv`, control characters in headers and labels, overlong fields, and directories
where a file is expected. The readers (`tfmp.data.load_examples`, `tfmp.data.prepare_data`) must
return examples or raise `UserError` naming the file; any other exception is a bug. A few
cases go end to end through `tfmp train`: exit 0 or 2, never an exception, nothing written
on refusal.

Derandomized, so a run in CI tries the same examples as a run here.
"""

import csv
import gzip
import io
import itertools
import json
import os
import warnings
import zipfile
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from tfmp import cli, data, readers
from tfmp.config import TrainConfig
from tfmp.errors import UserError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SUFFIXES = (".csv", ".tsv", ".jsonl")
# Small, so an overlong field (the CSV reader's limit) is cheap to write.
SMALL_FIELD_LIMIT = 4096
_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _path(workdir, suffix):
    return workdir / f"f{next(_counter)}{suffix}"


def _reads(path, **kwargs):
    """load_examples(path): Examples, or None after a `UserError` that names the file."""
    try:
        with warnings.catch_warnings(), mock.patch.object(readers, "FIELD_LIMIT", SMALL_FIELD_LIMIT):
            warnings.simplefilter("ignore")
            examples = data.load_examples(path, **kwargs)
    except UserError as e:
        _check_message(e, path)
        _event("load_examples: refused")
        return None
    _event("load_examples: read")
    assert len(examples.texts) == len(examples.labels) == len(examples.rows) > 0
    assert all(isinstance(t, str) and t.strip() for t in examples.texts)
    assert all(isinstance(label, str) and label for label in examples.labels)
    return examples


def _prepares(path, **kwargs):
    """prepare_data of a TrainConfig on `path`: the same rule, through labels and splits."""
    config = TrainConfig(data=str(path), **kwargs)
    try:
        with warnings.catch_warnings(), mock.patch.object(readers, "FIELD_LIMIT", SMALL_FIELD_LIMIT):
            warnings.simplefilter("ignore")
            examples, label_map, splits = data.prepare_data(config)
    except UserError as e:
        _check_message(e, path)
        _event("prepare_data: refused")
        return None
    _event("prepare_data: split")
    assert len(splits.train) + len(splits.validation) + len(splits.test) <= len(examples.texts)
    assert all(not data.label_problem(name) for name in label_map.names)
    return examples


def _event(outcome):
    """Counts `outcome` in Hypothesis' statistics (pytest --hypothesis-show-statistics)."""
    try:
        event(outcome)
    except InvalidArgument:  # called by a plain test, not under @given
        pass


def _check_message(error, path):
    message = str(error)
    assert str(path) in message, message[:500]
    # Values are quoted cut short: a message is read in a terminal, not scrolled through.
    assert len(message) < 4000, message[:500]


# --- Strategies -----------------------------------------------------------------------------

# Any character, control characters, separators and unpaired surrogates included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
LABELS = st.one_of(st.sampled_from(["positive", "negative", "neutral", "1", "0", " pos "]),
                   ANY_TEXT)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(ANY_TEXT, inner, max_size=4)), max_leaves=12)


@st.composite
def jsonl_lines(draw):
    """One line of a JSON Lines file: usually an object with text and label, sometimes not."""
    kind = draw(st.sampled_from(["plain"] * 8 + ["row"] * 3 + ["object", "value", "deep",
                                                               "bigint", "garbage", "blank"]))
    if kind == "plain":  # enough of these and the file trains: labels and splits are reached
        return json.dumps({"text": draw(st.text(min_size=1, max_size=20)),
                           "label": draw(st.sampled_from(["positive", "negative", 1]))})
    if kind == "row":
        row = {"text": draw(st.one_of(ANY_TEXT, JSON_VALUES)),
               "label": draw(st.one_of(LABELS, JSON_VALUES))}
        row.update(draw(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=2)))
        return json.dumps(row, ensure_ascii=draw(st.booleans()))
    if kind == "object":
        return json.dumps(draw(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4)))
    if kind == "value":
        return json.dumps(draw(JSON_VALUES))
    if kind == "deep":
        depth = draw(st.sampled_from([10, 500, 990, 1000, 5000, 100_000]))
        opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return '{"text": "t", "label": "x", "n": ' + opening * depth + "1" + closing * depth + "}"
    if kind == "bigint":
        digits = draw(st.sampled_from([4299, 4300, 4301, 20_000]))
        return '{"text": "t", "label": ' + "9" * digits + "}"
    if kind == "garbage":
        return draw(st.binary(max_size=40)).decode("latin-1")
    return ""


def _table_bytes(header, rows, delimiter, long_field):
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    for text, label in rows:
        writer.writerow([text, label])
    if long_field:
        writer.writerow(["x" * (SMALL_FIELD_LIMIT + 1), "positive"])
    return out.getvalue()


ENCODINGS = ("utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be",
             "utf-32", "utf-32-le", "utf-32-be")


# --- Properties ------------------------------------------------------------------------------


@FUZZ
@given(lines=st.lists(jsonl_lines(), min_size=1, max_size=40),
       on_decode_error=st.sampled_from(["replace", "strict"]))
def test_jsonl_of_any_structure_reads_or_names_the_file(workdir, lines, on_decode_error):
    path = _path(workdir, ".jsonl")
    # surrogatepass writes unpaired surrogates as the (invalid) UTF-8 bytes a buggy writer would.
    path.write_bytes("\n".join(lines).encode("utf-8", errors="surrogatepass"))
    _reads(path, on_decode_error=on_decode_error)
    _prepares(path, on_decode_error=on_decode_error)


@FUZZ
@given(header=st.one_of(st.just(["text", "label"]), st.just(["label", "text", "id"]),
                        st.lists(st.one_of(st.sampled_from(["text", "label"]), ANY_TEXT), max_size=4)),
       rows=st.lists(st.tuples(ANY_TEXT, st.one_of(st.sampled_from(["positive", "negative"]), LABELS)),
                     max_size=30),
       suffix=st.sampled_from([".csv", ".tsv"]), long_field=st.booleans(),
       columns=st.sampled_from([(None, None), ("text", "label"), ("text", "text"),
                                ("te\x00xt", "lab\nel")]))
def test_tables_with_control_characters_and_long_fields_read_or_name_the_file(
        workdir, header, rows, suffix, long_field, columns):
    path = _path(workdir, suffix)
    text = _table_bytes(header, rows, "," if suffix == ".csv" else "\t", long_field)
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    _reads(path, text_column=columns[0], label_column=columns[1])
    if columns[0] != columns[1]:
        _prepares(path, text_column=columns[0], label_column=columns[1])


@st.composite
def labelled_rows(draw):
    """20 to 60 rows with any text; the labels common ones, but for one odd label at most."""
    rows = draw(st.lists(st.tuples(ANY_TEXT, st.sampled_from(["positive", "negative", "1"])),
                         min_size=20, max_size=60))
    if draw(st.booleans()):
        where = draw(st.integers(0, len(rows) - 1))
        rows[where] = (rows[where][0], draw(LABELS))
    return rows


@FUZZ
@given(rows=labelled_rows(), suffix=st.sampled_from(SUFFIXES),
       labels=st.sampled_from([None, ("negative", "positive")]))
def test_files_that_parse_reach_labels_and_splits_or_name_the_file(workdir, rows, suffix, labels):
    # Well-formed files, any character in texts and in a label: what is left to refuse is a
    # bad label name, an unknown label, one class only, or too few examples to split.
    path = _path(workdir, suffix)
    if suffix == ".jsonl":
        text = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    else:
        text = _table_bytes(["text", "label"], rows, "," if suffix == ".csv" else "\t", False)
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    _prepares(path, labels=labels)


@FUZZ
@given(rows=st.lists(st.tuples(st.text(st.characters(exclude_characters="\x00"), max_size=20),
                               st.sampled_from(["positive", "negative", "neutral"])),
                     min_size=1, max_size=8),
       written=st.sampled_from(ENCODINGS), bom=st.booleans(),
       read=st.one_of(st.none(), st.sampled_from(ENCODINGS + ("nope", "hex"))),
       on_decode_error=st.sampled_from(["replace", "strict"]), suffix=st.sampled_from(SUFFIXES))
def test_any_encoding_reads_or_names_the_file_and_the_right_one_round_trips(
        workdir, rows, written, bom, read, on_decode_error, suffix):
    if suffix == ".jsonl":
        text = "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in rows)
    else:
        text = _table_bytes(["text", "label"], rows, "," if suffix == ".csv" else "\t", False)
    mark = "\ufeff" if bom and written[-3:] in ("-le", "-be") else ""
    try:
        encoded = (mark + text).encode(written)
    except UnicodeEncodeError:  # Latin-1 and cp1252 hold few characters: write what they can
        encoded = (mark + text).encode(written, errors="replace")
    path = _path(workdir, suffix)
    path.write_bytes(encoded)
    read = read or written
    got = _reads(path, encoding=read, on_decode_error=on_decode_error)
    if read == written:  # then the texts are those of the same file in UTF-8
        reference = _path(workdir, suffix)
        reference.write_bytes(encoded.decode(written).lstrip("\ufeff").encode("utf-8"))
        expected = _reads(reference)
        assert (got is None) == (expected is None)
        if got is not None:
            assert (got.texts, got.labels, got.rows) == (expected.texts, expected.labels,
                                                          expected.rows)


def _zip(payload):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("data.csv", payload)
    return out.getvalue()


@FUZZ
@given(content=st.one_of(
    st.binary(max_size=2000),
    st.binary(max_size=500).map(_zip),
    st.binary(max_size=500).map(gzip.compress),
    st.binary(max_size=200).map(lambda b: b"text,label\n" + b),
    st.binary(max_size=200).map(lambda b: b'{"text": "' + b + b'", "label": "x"}\n')),
       suffix=st.sampled_from(SUFFIXES), encoding=st.sampled_from(ENCODINGS),
       on_decode_error=st.sampled_from(["replace", "strict"]))
def test_binary_files_and_archives_read_or_name_the_file(workdir, content, suffix, encoding,
                                                         on_decode_error):
    path = _path(workdir, suffix)
    path.write_bytes(content)
    _reads(path, encoding=encoding, on_decode_error=on_decode_error)


def test_a_directory_or_a_missing_file_where_a_file_is_expected_is_named(workdir):
    directory = _path(workdir, ".csv")
    directory.mkdir()
    a_file = _path(workdir, ".csv")
    a_file.write_text("text,label\nhi,positive\n", encoding="utf-8")
    loop = _path(workdir, ".csv")
    os.symlink(loop, loop)
    for path in (directory, a_file / "inside.csv", workdir / "missing.csv", loop,
                 workdir / ("x" * 300 + ".csv")):
        assert _reads(path) is None
        assert _prepares(path) is None


# --- End to end: `tfmp train` exits 0 or 2 --------------------------------------------------

GOOD_ROWS = [("great flight", "positive"), ("lost my bag", "negative"), ("on time", "neutral")] * 10


def _good_csv():
    return _table_bytes(["text", "label"], GOOD_ROWS, ",", False)


E2E_CASES = {
    "utf-16 with --encoding utf-16": (".csv", _good_csv().encode("utf-16"), ["--encoding", "utf-16"]),
    "utf-16 read as utf-8": (".csv", _good_csv().encode("utf-16"), []),
    "zip renamed .csv": (".csv", _zip(_good_csv()), []),
    "random bytes": (".tsv", bytes(range(256)) * 4, []),
    "control characters in the header": (
        ".csv", _table_bytes(["te\x07xt", "la\x00bel"], GOOD_ROWS, ",", False).encode(), []),
    "a label with a line break": (
        ".jsonl", "".join(json.dumps({"text": t, "label": y.replace("pos", "pos\n")}) + "\n"
                          for t, y in GOOD_ROWS).encode(), []),
    "deep nesting": (".jsonl", b'{"text": "a", "label": ' + b"[" * 10**5 + b"]" * 10**5 + b"}\n", []),
    "a directory": (".csv", None, []),
}


@pytest.mark.parametrize("case", list(E2E_CASES))
def test_train_on_hostile_input_exits_0_or_2(case, tmp_path, tiny_bert_dir, capsys):
    suffix, content, extra = E2E_CASES[case]
    path = tmp_path / f"data{suffix}"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(path), "--out", str(out), "--model", tiny_bert_dir,
                     "--policy", "float32", "--epochs", "1", "--batch-size", "8",
                     "--seq-len", "16", "--quiet", *extra])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err[-2000:]
    if code == 2:
        assert str(path) in err
        assert not any(os.path.lexists(p) for p in (out, f"{out}.partial", f"{out}.lock"))
    else:
        assert os.path.isfile(out / "COMPLETE")
