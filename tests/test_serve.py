"""`tfmp predict` (tfmp.serve): every exported variant answers as the Keras model does,
from stdin and files, streamed; bad input and unusable paths exit 2 with a message; the
TFLite variants answer without TensorFlow; TensorFlow's C++ start-up lines are hidden.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfmp import cli, files
from tfmp.export import REGISTRY
from tfmp.serve import inputs, wordpiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["@united the flight was great", "@united worst delayed plane", "seat today",
         "thanks for the help !", "Straße ÉCOLE café ❤️", "中文 a b c", "x" * 120]


@pytest.fixture(scope="module")
def exported(mixed_float16_export):
    # (report, path): the session's export of its shared run, every variant (conftest.py).
    return mixed_float16_export


@pytest.fixture(scope="module")
def keras_probabilities(mixed_float16_run):
    from tfmp.models import load_model, rebuild_float32

    model = rebuild_float32(load_model(mixed_float16_run.run_dir))
    logits = model(model.preprocessor(tf.constant(TEXTS)), training=False)
    return tf.nn.softmax(logits).numpy()


def _predict(*args, stdin=None, capsys=None):
    """(exit status, answers, stderr) of `tfmp predict` run in this process."""
    code = cli.main(["predict", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    answers = [json.loads(line) for line in captured.out.splitlines()]
    return code, answers, captured.err


def _write(path, text, mode="w"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        f.write(text)
    return str(path)


# --- the tokenizer --------------------------------------------------------------------


EDGE_CASES = ["Straße ÉCOLE café", "❤️🔥 l\u200bove", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "中文字符 日本語",
              "a" * 150, "é" * 60, "", "   ", "\u00ad\u200d", "İstanbul ΣΊΣΥΦΟΣ", "ﬁne ﬂight",
              "x\u0301y", "don't!!! @united #fail http://t.co/xyz", "tab\there\r\nnew",
              "①②③ ⅷ", "𝐛𝐨𝐥𝐝", "ǅemal", "UNITED GREAT flight"]


def _in_graph_ids(vocabulary, texts):
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    return tf.function(lambda x: tokenizer(x))(tf.constant(texts)).to_list()


def test_wordpiece_matches_the_in_graph_tokenizer_token_for_token(tmp_path):
    from conftest import VOCAB

    vocab = _write(tmp_path / "vocab.txt", "\n".join(VOCAB) + "\n")
    ours = wordpiece.WordPiece(vocab, 16).tokenize(EDGE_CASES)
    assert ours == _in_graph_ids(VOCAB, EDGE_CASES)


def test_wordpiece_matches_the_in_graph_tokenizer_on_the_real_vocabulary():
    from tfmp import models, readers

    vocab = os.path.join(models.default_model_dir(), "vocab.txt")
    texts = list(readers.load_examples("airline").texts[:2000]) + EDGE_CASES
    with open(vocab, encoding="utf-8") as f:
        vocabulary = f.read().splitlines()
    assert wordpiece.WordPiece(vocab, 64).tokenize(texts) == _in_graph_ids(vocabulary, texts)


def test_wordpiece_packs_cls_ids_sep_and_pads_to_the_sequence_length(tmp_path):
    from conftest import VOCAB

    tokenizer = wordpiece.WordPiece(_write(tmp_path / "v.txt", "\n".join(VOCAB) + "\n"), 6)
    features = tokenizer(["the flight was very late", ""])
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    assert features["token_ids"][0].tolist() == [cls] + [VOCAB.index(w) for w in
                                                         "the flight was very".split()] + [sep]
    assert features["token_ids"][1].tolist() == [cls, sep, 0, 0, 0, 0]
    assert features["padding_mask"][1].tolist() == [1, 1, 0, 0, 0, 0]
    assert not features["segment_ids"].any()


# --- every variant ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(REGISTRY))
def test_every_variant_answers_as_the_keras_model_within_its_gate(
        variant, exported, keras_probabilities, tmp_path, capsys):
    report, path = exported
    lines = _write(tmp_path / "texts.txt", "\n".join(TEXTS) + "\n")
    code, answers, err = _predict(path, "--variant", variant, "--input", lines, capsys=capsys)
    if variant in report.get("skipped", {}):  # e.g. tflite_sparse of a dense model
        assert code == 2 and variant in err and not answers
        return
    assert code == 0
    assert [a["row"] for a in answers] == list(range(1, len(TEXTS) + 1))
    assert [a["text"] for a in answers] == TEXTS
    labels = report["labels"]
    got = np.array([[a["probabilities"][name] for name in labels] for a in answers])
    agreement = np.mean(got.argmax(-1) == keras_probabilities.argmax(-1))
    gate = REGISTRY[variant].gate
    # Answers are rounded to 6 decimals in the JSON: 1e-5 covers that and the gate's bound.
    assert agreement >= min(gate.min_agreement, 1 - 1 / len(TEXTS)) - 1e-9
    bound = gate.max_probability_difference or 0.1
    assert np.max(np.abs(got - keras_probabilities)) <= bound + 1e-5
    assert [a["label"] for a in answers] == [labels[i] for i in got.argmax(-1)]


def test_csv_tsv_and_jsonl_inputs_answer_by_row(exported, tmp_path, capsys):
    _, path = exported
    csv_path = _write(tmp_path / "in.csv", 'id,tweet\n1,"great, thanks"\n2,worst flight\n')
    tsv_path = _write(tmp_path / "in.tsv", "tweet\tid\ngreat thanks\t1\nworst flight\t2\n")
    jsonl_path = _write(tmp_path / "in.jsonl", '{"tweet": "great thanks"}\n\n'
                        '{"tweet": "worst flight"}\n')
    rows = {}
    for source in (csv_path, tsv_path, jsonl_path):
        code, answers, _ = _predict(path, "--variant", "tflite_fp32", "--input", source,
                                    "--text-column", "tweet", capsys=capsys)
        assert code == 0
        rows[source] = [a["row"] for a in answers]
        assert all("text" not in a for a in answers)
    assert rows == {csv_path: [2, 3], tsv_path: [2, 3], jsonl_path: [1, 3]}


def test_default_variant_is_the_fastest_that_passed_its_gate(exported, tmp_path):
    from tfmp.serve import predict

    report, _ = exported
    fastest = max(report["variants"], key=lambda n: report["variants"][n]["examples_per_second"])
    assert predict.default_variant(report) == fastest
    slowest = dict(report, variants={n: dict(r, passed=(n != fastest))
                                     for n, r in report["variants"].items()})
    assert predict.default_variant(slowest) != fastest


def test_a_run_directory_finds_its_export_under_saved_models(mixed_float16_run, exported,
                                                             tmp_path, monkeypatch, capsys):
    _, path = exported
    shutil.copytree(path, tmp_path / "saved_models" / os.path.basename(
        mixed_float16_run.run_dir))
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "saved_models" / os.path.basename(mixed_float16_run.run_dir)
    assert files.read_marker(str(marker))["run_dir"] == mixed_float16_run.run_dir
    lines = _write(tmp_path / "t.txt", "great\n")
    code, answers, _ = _predict(mixed_float16_run.run_dir, "--variant", "tflite_int8",
                                "--input", lines, capsys=capsys)
    assert code == 0 and len(answers) == 1


def test_stdin_tflite_answers_without_tensorflow_or_keras_in_under_two_seconds(exported):
    _, path = exported
    script = ("import sys, time; from tfmp.cli import main; code = main(sys.argv[1:]); "
              "bad = [m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules]; "
              "print('IMPORTED', bad, file=sys.stderr); sys.exit(code)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, "predict", path, "--variant",
                           "tflite_int8"], input="great flight\nworst delay\n", text=True,
                          capture_output=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stderr
    assert [json.loads(line)["row"] for line in proc.stdout.splitlines()] == [1, 2]
    # Under 2 s on a quiet machine (README); 10 s leaves room for a loaded test machine.
    assert elapsed < 10, elapsed


# --- bad input: exit 2 and a message ------------------------------------------------------


@pytest.mark.parametrize("name, content, fmt_args, expected", [
    ("in.txt", "great\n\nworst\n", (), "line 2 is empty"),
    ("in.csv", "id,tweet\n1,great\n", ("--text-column", "text"), "no column 'text'"),
    ("in.jsonl", '{"tweet": "great"}\n', ("--text-column", "text"),
     "line 1 has no 'text' key"),
    ("in.txt", b"\x00\x00\x00\x0cftyp binary", (), "NUL byte"),
    ("in.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00", (), "line 1 is not UTF-8 text"),
    ("in.txt", b"caf\xe9 great\n", (), "not UTF-8 text"),
    ("in.csv", "id,text\n1,great\n2,\"\"\n", (), "row 3, column 'text', is empty"),
], ids=["empty-line", "missing-csv-column", "missing-jsonl-key", "binary", "png", "latin-1",
        "empty-csv-field"])
def test_bad_input_exits_2_naming_what_and_where(name, content, fmt_args, expected, exported,
                                                 tmp_path, capsys):
    _, path = exported
    source = _write(tmp_path / name, content, "wb" if isinstance(content, bytes) else "w")
    code, _, err = _predict(path, "--variant", "tflite_int8", "--input", source, *fmt_args,
                            capsys=capsys)
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert err.startswith("tfmp predict: error: ")


def test_skip_empty_leaves_empty_lines_out(exported, tmp_path, capsys):
    _, path = exported
    source = _write(tmp_path / "in.txt", "great\n\n  \nworst\n")
    code, answers, _ = _predict(path, "--variant", "tflite_int8", "--input", source,
                                "--skip-empty", capsys=capsys)
    assert code == 0 and [a["row"] for a in answers] == [1, 4]


def test_unfinished_unexported_and_unknown_paths_exit_2(mixed_float16_run, exported,
                                                         tmp_path, monkeypatch, capsys):
    _, path = exported
    monkeypatch.chdir(tmp_path)  # no saved_models/ here: the run is not exported
    code, _, err = _predict(mixed_float16_run.run_dir, capsys=capsys)
    assert code == 2 and "has not been exported" in err and "tfmp export" in err
    unfinished = tmp_path / "run"
    shutil.copytree(mixed_float16_run.run_dir, unfinished)
    os.remove(unfinished / files.MARKER)
    code, _, err = _predict(unfinished, capsys=capsys)
    assert code == 2 and "unfinished run" in err
    half_export = tmp_path / "half"
    shutil.copytree(path, half_export)
    os.remove(half_export / files.MARKER)
    code, _, err = _predict(half_export, capsys=capsys)
    assert code == 2 and "not a finished tfmp export" in err
    code, _, err = _predict(tmp_path, capsys=capsys)
    assert code == 2 and "neither a tfmp export nor a tfmp run" in err
    code, _, err = _predict(path, "--variant", "nope", capsys=capsys)
    assert code == 2 and "has no variant 'nope'" in err
    code, _, err = _predict(path, "--batch-size", "0", capsys=capsys)
    assert code == 2 and "--batch-size" in err


def test_answers_stream_in_constant_memory(exported, tmp_path, capsys):
    """60,000 lines, read and answered 64 at a time: the reader holds one batch."""
    _, path = exported
    records = inputs.read_texts(iter([b"great flight\n"] * 60_000), "big", "lines")
    from tfmp.serve import predict, runners

    report = predict.read_report(path)
    runner = runners.open_variant(path, "tflite_int8", report)
    seen = []
    original = runner._predict
    runner._predict = lambda texts: seen.append(len(texts)) or original(texts)
    n = sum(1 for _ in predict.answers(runner, ((r, None, t) for r, t in records), 64))
    assert n == 60_000 and max(seen) == 64


# --- quiet start ------------------------------------------------------------------------


def test_tensorflow_start_up_lines_are_hidden_unless_verbose(exported):
    _, path = exported
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    args = [sys.executable, "-m", "tfmp", "predict", path, "--variant", "savedmodel_fp32"]
    quiet = subprocess.run(args, input="great\n", text=True, capture_output=True, env=env,
                           cwd=ROOT, timeout=300)
    loud = subprocess.run(args + ["--verbose"], input="great\n", text=True,
                          capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert json.loads(quiet.stdout)["row"] == 1
    native = ("I0000", "E0000", "W0000", "absl::InitializeLog", "cuInit")
    assert not any(marker in quiet.stderr for marker in native), quiet.stderr
    assert any(marker in loud.stderr for marker in native), loud.stderr


def test_quiet_filter_keeps_tfmp_lines_and_fatal_ones():
    from tfmp import quiet

    assert not quiet.keep(b"E0000 00:00:1795990549.837609   29751 cuda_platform.cc:52] "
                          b"failed call to cuInit: INTERNAL: CUDA error")
    assert not quiet.keep(b"WARNING: All log messages before absl::InitializeLog() is called "
                          b"are written to STDERR")
    assert quiet.keep(b"F0000 00:00:1.0 1 x.cc:1] Check failed")
    assert quiet.keep(b"tfmp predict: error: line 2 is empty")
    assert not quiet.wanted(verbose=True)
    assert not quiet.wanted(environ={"TF_CPP_MIN_LOG_LEVEL": "0"})
