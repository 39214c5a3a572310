"""Hostile input files and hand-edited settings end in exit 2 with a message, never a traceback.

Issue 13, item 11. The end-to-end tests run `tfmp train` on real files, as a user would, and
check the rule for every user input: exit status 2, a message naming the file, the row or
line, the column or field, and what to do; no "Traceback"; and nothing written: no `--out`,
no `<out>.partial`, no lock left behind. The reader-level tests pin what is read and how.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from tfmp import checkpoint, cli, data, files, precision, report
from tfmp.config import TrainConfig
from tfmp.errors import InputError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [("great flight", "positive"), ("lost my bag", "negative"), ("on time", "neutral")] * 10


def _csv_text(rows=ROWS, header=("text", "label")):
    return "".join(",".join(fields) + "\n" for fields in [header, *rows])


def _train(capsys, data_path, out, model, *extra):
    """(exit status, stderr) of `tfmp train` run in this process."""
    code = cli.main(["train", "--data", str(data_path), "--out", str(out), "--model", str(model),
                     "--policy", "float32", "--epochs", "1", "--batch-size", "4",
                     "--seq-len", "16", "--quiet", *extra])
    return code, capsys.readouterr().err


def _assert_refused(code, err, out, *needles, partial=False):
    """Exit 2, no traceback, every needle in the message, and no `out` (nor `<out>.partial`
    unless it was there before, nor a lock) written."""
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err[-2000:])
    for path in (out, f"{out}.lock") + (() if partial else (f"{out}.partial",)):
        assert not os.path.lexists(path), f"{path} was written"


# --- 1. Deeply nested JSON Lines -------------------------------------------------------------


def test_deeply_nested_jsonl_is_refused_naming_the_line(tmp_path, tiny_bert_dir, capsys):
    path = tmp_path / "nested.jsonl"
    rows = [json.dumps({"text": t, "label": y}) for t, y in ROWS]
    rows[2] = '{"text": "hi", "label": "positive", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, err = _train(capsys, path, tmp_path / "run", tiny_bert_dir)
    _assert_refused(code, err, tmp_path / "run", str(path), "line 3", "nested too deeply",
                    "remove the nested value")


def test_deeply_nested_jsonl_in_a_subprocess_exits_2_without_traceback(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text('{"text": "a", "label": ' + "[" * 50_000 + "]" * 50_000 + "}\n",
                    encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tfmp", "train", "--data", str(path), "--out", str(out),
         "--model", str(tmp_path / "no-model"), "--policy", "float32", "--quiet"],
        capture_output=True, text=True, timeout=180, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFMP_AUTO_PROBE="0"))
    _assert_refused(proc.returncode, proc.stderr, out, str(path), "line 1", "nested too deeply")


# --- 2. An integer past Python's int-string limit ----------------------------------------------


def test_integer_label_past_4300_digits_is_refused_naming_the_line(tmp_path, tiny_bert_dir, capsys):
    path = tmp_path / "big.jsonl"
    rows = [json.dumps({"text": t, "label": y}) for t, y in ROWS]
    rows[4] = '{"text": "hi", "label": ' + "9" * 5000 + "}"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, err = _train(capsys, path, tmp_path / "run", tiny_bert_dir)
    _assert_refused(code, err, tmp_path / "run", str(path), "line 5", "4300 digits",
                    "write it as a string")


# --- JSON escapes of half a character (seen while writing the fuzz tests) ----------------------


def test_jsonl_unpaired_surrogate_escape_is_replaced_and_counted(tmp_path):
    # Seen while writing tests/test_fuzz.py: "\ud800" decodes to half a character, which tf.constant
    # (and any UTF-8 file) refuses, so training failed with a ValueError after reading.
    import tensorflow as tf

    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a\\ud800b", "label": "x\\udc80"}\n{"text": "c", "label": "y"}\n',
                    encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 row\(s\) had bytes that do not decode"):
        examples = data.load_examples(path)
    assert examples.texts == ["a\ufffdb", "c"] and examples.labels == ["x\ufffd", "y"]
    tf.constant(examples.texts)


# --- 5. A CSV field over the csv module's default 128 KiB limit --------------------------------


def test_csv_field_over_128_kib_is_read(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(_csv_text([("x" * 300_000, "positive"), *ROWS]), encoding="utf-8")
    examples = data.load_examples(path)
    assert len(examples.texts[0]) == 300_000 and examples.labels[0] == "positive"


def test_csv_field_over_16_mib_says_field_too_long_with_row_and_column(tmp_path, tiny_bert_dir,
                                                                       capsys):
    path = tmp_path / "huge.csv"
    path.write_text(_csv_text([*ROWS[:3], ('"' + "x" * (17 << 20) + '"', "positive")]),
                    encoding="utf-8")
    code, err = _train(capsys, path, tmp_path / "run", tiny_bert_dir)
    _assert_refused(code, err, tmp_path / "run", str(path), "row 5", "column 'text'",
                    "field too long", "16 MiB")
    assert "malformed" not in err
