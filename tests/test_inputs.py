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


# --- 3. A hand-edited config with a value of the wrong type ------------------------------------


@pytest.mark.parametrize("field, value, expected", [
    ("epochs", "2", "an integer"), ("epochs", 2.0, "an integer"), ("lr", "5e-5", "a finite number"),
    ("lr", float("nan"), "a finite number"), ("length_grouping", 1, "true or false"),
    ("model", 3, "a string or null"), ("labels", "a,b", "a list of strings or null"),
    ("float32_layers", [1], "a list of strings"), ("seed", True, "an integer"),
])
def test_saved_config_with_a_wrong_type_names_field_value_and_type(field, value, expected):
    saved = dict(TrainConfig().to_json(), **{field: value})
    with pytest.raises(UserError) as e:
        TrainConfig.from_json(saved, source="runs/a/config.json")
    message = str(e.value)
    assert all(s in message for s in ("runs/a/config.json", repr(field), repr(value)[:20], expected))


def test_saved_config_accepts_ints_for_floats_and_round_trips():
    saved = dict(TrainConfig().to_json(), lr=1, labels=["b", "a"])
    config = TrainConfig.from_json(saved)
    assert config.lr == 1 and config.labels == ("b", "a")
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(UserError, match="expected a JSON object"):
        TrainConfig.from_json(["epochs", 2])


def test_validate_checks_types_of_a_config_built_in_python():
    with pytest.raises(UserError, match=r"'epochs' \(--epochs\) is '2' \(str\); expected an integer"):
        TrainConfig(epochs="2").validate()
    TrainConfig(data=pathlib.Path("a.csv")).validate()  # the Python API may pass Path objects


def test_resume_from_a_checkpoint_with_a_hand_edited_config_exits_2(tmp_path, capsys):
    # An interrupted run whose checkpoint state holds "epochs": "2" (edited by hand): its
    # files are intact, so only the type check stands between it and a TypeError.
    out = tmp_path / "run"
    ckpt = tmp_path / "run.partial" / "checkpoints" / "ckpt-000000001"
    ckpt.mkdir(parents=True)
    listed = {}
    for name in (checkpoint.WEIGHTS, checkpoint.ARRAYS):
        (ckpt / name).write_bytes(b"not used")
        listed[name] = {"bytes": 8, "sha256": files.sha256(ckpt / name)}
    config = dict(TrainConfig(data="airline", out=str(out)).to_json(), epochs="2")
    state = {"files": listed, "config": config, "global_step": 1}
    (ckpt / checkpoint.STATE).write_text(json.dumps(state), encoding="utf-8")
    (ckpt.parent / checkpoint.POINTER).write_text(ckpt.name, encoding="utf-8")
    before = sorted(p.name for p in ckpt.iterdir())
    code = cli.main(["train", "--resume", str(out), "--quiet"])
    err = capsys.readouterr().err
    _assert_refused(code, err, out, "'epochs'", "'2' (str)", "expected an integer", partial=True)
    assert sorted(p.name for p in ckpt.iterdir()) == before  # the checkpoint is left as it was


# --- 4. An invalid regular expression in --float32-layers --------------------------------------


def test_invalid_float32_layer_regex_is_refused_before_anything_runs(tmp_path, tiny_bert_dir,
                                                                       capsys):
    path = tmp_path / "a.csv"
    path.write_text(_csv_text(), encoding="utf-8")
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(path), "--out", str(out), "--model", tiny_bert_dir,
                     "--policy", "mixed_float16", "--float32-layers", "bert_backbone/((",
                     "--epochs", "1", "--batch-size", "4", "--seq-len", "16", "--quiet"])
    err = capsys.readouterr().err
    _assert_refused(code, err, out, "--float32-layers", "'bert_backbone/(('",
                    "not a valid regular expression", "missing )")


def test_pin_float32_names_an_invalid_pattern():
    import keras

    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(2, name="dense", dtype="mixed_float16")])
    with pytest.raises(UserError, match=r"'dense\[' is not a valid regular expression"):
        precision.pin_float32(model, (p for p in ["dense", "dense["]))
    assert precision.pin_float32(model, (p for p in ["dens."])) == ["dense"]


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


# --- 6. UTF-16 and UTF-32 files ----------------------------------------------------------------


@pytest.mark.parametrize("codec, named", [
    ("utf-16", "--encoding utf-16"), ("utf-32", "--encoding utf-32"),
    ("utf-16-le", "--encoding utf-16-le"), ("utf-16-be", "--encoding utf-16-be"),
    ("utf-32-le", "--encoding utf-32-le"),
])
def test_utf16_or_utf32_file_read_as_utf8_names_the_encoding(codec, named, tmp_path, tiny_bert_dir,
                                                             capsys):
    path = tmp_path / "wide.csv"
    path.write_bytes(_csv_text().encode(codec))
    code, err = _train(capsys, path, tmp_path / "run", tiny_bert_dir)
    _assert_refused(code, err, tmp_path / "run", str(path), named.split()[-1].upper()[:6], named)


@pytest.mark.parametrize("codec, bom, encoding", [
    ("utf-16", True, "utf-16"), ("utf-16-le", True, "utf-16-le"), ("utf-16-le", True, "utf-16"),
    ("utf-16-le", False, "utf-16-le"), ("utf-16-be", False, "utf-16-be"),
    ("utf-32", True, "utf-32"), ("utf-32-be", False, "utf-32-be"),
])
def test_utf16_and_utf32_files_are_read_with_encoding(codec, bom, encoding, tmp_path):
    path = tmp_path / "wide.csv"
    rows = [("café ✈ on time", "positive"), *ROWS]
    # The "utf-16"/"utf-32" codecs write a byte-order mark themselves; "-le"/"-be" do not.
    mark = "\ufeff" if bom and codec.endswith(("le", "be")) else ""
    path.write_bytes((mark + _csv_text(rows)).encode(codec))
    examples = data.load_examples(path, encoding=encoding, on_decode_error="strict")
    assert examples.texts[0] == "café ✈ on time" and examples.labels[:2] == ["positive"] * 2
    assert examples.stats["replaced_bytes"] == 0


def test_utf16_bytes_that_do_not_decode_are_replaced_or_refused(tmp_path):
    path = tmp_path / "bad.csv"
    good = _csv_text().encode("utf-16-le")
    path.write_bytes(good[:30] + b"\x00\xdc" + good[30:])  # an unpaired low surrogate
    with pytest.warns(UserWarning, match="replaced by U\\+FFFD"):
        examples = data.load_examples(path, encoding="utf-16-le")
    assert examples.stats["replaced_bytes"] == 1
    with pytest.raises(InputError, match=r"bad\.csv: line 2: bytes .* do not decode as utf-16-le"):
        data.load_examples(path, encoding="utf-16-le", on_decode_error="strict")


def test_archive_renamed_csv_is_named_as_an_archive(tmp_path):
    import zipfile

    path = tmp_path / "data.csv"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.csv", _csv_text())
    with pytest.raises(InputError, match=r"data\.csv: holds NUL bytes .* zip or gzip archive"):
        data.load_examples(path)


def test_utf8_sig_keeps_a_byte_order_mark_that_starts_a_later_line(tmp_path):
    # Seen while writing tests/test_fuzz.py: each line decoded as utf-8-sig lost its U+FEFF.
    path = tmp_path / "sig.csv"
    path.write_bytes("\ufefftext,label\n\ufeffhi,positive\nyo,negative\n".encode("utf-8"))
    assert data.load_examples(path, encoding="utf-8-sig").texts == ["\ufeffhi", "yo"]


# --- 7. A label holding a line break or another control character ------------------------------


@pytest.mark.parametrize("label", ["pos\nitive", "pos\ritive", "pos\titive", "pos\x00itive",
                                   "pos\u2028itive", "pos\x85itive"])
def test_label_with_a_control_character_is_refused_naming_row_and_label(label, tmp_path,
                                                                        tiny_bert_dir, capsys):
    # Every "positive" (rows 1, 4, 7, ...) is `label`: a class that would train, and write a
    # labels.txt whose line numbers are no longer the class ids.
    path = tmp_path / "a.jsonl"
    rows = [{"text": t, "label": label if y == "positive" else y} for t, y in ROWS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, err = _train(capsys, path, tmp_path / "run", tiny_bert_dir)
    _assert_refused(code, err, tmp_path / "run", str(path), "row 1", repr(label),
                    f"U+{ord(label[3]):04X}", "labels.txt", "rows 1, 4, 7, 10,")


def test_label_map_refuses_a_name_with_a_line_break():
    with pytest.raises(InputError, match=r"'a\\nb' holds a control character"):
        data.LabelMap(["a\nb", "c"])
    with pytest.raises(InputError, match="holds a control character"):
        data.LabelMap.from_json({"names": ["ok", "x\ry"]})


# --- 9. history.json and report.json are strict JSON ------------------------------------------


def test_report_with_nan_in_history_is_strict_json_and_renders(tmp_path):
    def reject(constant):
        raise ValueError(f"bare {constant} in strict JSON")

    history = {"loss": [0.9, math.nan], "val_loss": [math.inf], "accuracy": [0.5, math.nan]}
    metrics = {"accuracy": math.nan, "macro_f1": 0.5, "majority_class_share": 0.5,
               "optimizer": {"iterations": 4, "skipped_steps": 0, "loss_scale": math.inf}}
    run_config = {"policy": {"name": "mixed_float16", "reason": "test"}, "versions": {}}
    report.write_report(tmp_path, run_config, metrics, history)
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    saved = json.loads(text, parse_constant=reject)
    assert saved["outcome"]["final_train_loss"] is None and saved["outcome"]["accuracy"] is None
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "# Run report" in markdown and "**Test accuracy nan**" in markdown
