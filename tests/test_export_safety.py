"""`tfmp export` never loses work or exports the wrong thing (issue 13, export side).

Findings 2 (--overwrite replaces only an export), 3 (one writer per export target),
4 (a finished export is complete and durable; a killed export's leftovers are swept),
9 (the test split is the run's, checked by path, hash and indices), 10 (the serving
signature on hostile inputs, the warm-up replay, the HF tokenizer's length) and 11
(labels.txt). Processes and files are real where the finding is about them: exports
are killed with SIGKILL, two exports run at once, directories are real.

The run's labels are not ASCII, so an export in an ASCII locale shows every file is
written as UTF-8.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_sentiment_csv

from tfmp import cli, files, models
from tfmp.config import TrainConfig
from tfmp.errors import InputError
from tfmp.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not ASCII: the export must write them as UTF-8 whatever the locale.
RENAME = {"negative": "négatif", "neutral": "neutre", "positive": "positif ✓"}
CHEAP = ["--variants", "tflite_fp32", "--max-examples", "8"]
SEQ_LEN = 16


def _env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFMP_AUTO_PROBE="0",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def _write_csv(path, seed=0):
    """The sentiment CSV of conftest with non-ASCII label names."""
    plain = write_sentiment_csv(str(path) + ".plain", seed=seed)
    with open(plain, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    os.remove(plain)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0]] + [[t, RENAME[label]] for t, label in rows[1:]])
    return str(path)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return _write_csv(tmp_path_factory.mktemp("export_safety_data") / "tweets.csv")


@pytest.fixture(scope="module")
def run_dir(data_csv, tiny_bert_dir, tmp_path_factory):
    """A finished mixed_float16 run (read-only: tests that change it copy it)."""
    out = tmp_path_factory.mktemp("export_safety_run") / "demo"
    return train(TrainConfig(data=data_csv, model=tiny_bert_dir, policy="mixed_float16",
                             out=str(out), epochs=1, batch_size=16, seq_len=SEQ_LEN,
                             lr=5e-3), verbose=0).run_dir


# What the tests of a finished export read: the three SavedModels' serving signatures
# and the HF tokenizer (test_export.py checks that every variant is written).
EXPORTED = ["savedmodel_fp32", "savedmodel_fp16", "savedmodel_bf16", "hf"]


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    from tfmp.export import export

    root = tmp_path_factory.mktemp("export_safety_exports")
    return export(run_dir, out_root=str(root), name="tiny", variants=EXPORTED)


def _copy_run(run_dir, tmp_path, name="demo"):
    copy = tmp_path / "runs" / name
    shutil.copytree(run_dir, copy)
    return copy


def _export(capsys, *args):
    """(exit status, stderr) of `tfmp export ARGS` in this process."""
    code = cli.main(["export", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the export gets as far as loading the model."""
    def load_model(run_dir):
        raise AssertionError("the export started working before refusing its target")

    monkeypatch.setattr(models, "load_model", load_model)


def _dead_pid():
    """The pid of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _host():
    return files.unique_suffix().rsplit("-", 2)[0]  # as staging names spell it


# --- 2. --overwrite replaces only an export, refusing up front. ---

def test_overwrite_refuses_the_run_being_exported_before_any_work(
        run_dir, tmp_path, capsys, no_work):
    run = _copy_run(run_dir, tmp_path)
    before = sorted(os.listdir(run))
    code, err = _export(capsys, run, "--out-root", run.parent, "--overwrite")
    assert code == 2 and "Traceback" not in err, err
    assert f"it holds {run}" in err
    assert sorted(os.listdir(run)) == before and files.is_complete(run)


def test_overwrite_refuses_a_directory_tfmp_did_not_write_or_another_run(
        run_dir, tmp_path, capsys, no_work):
    run = _copy_run(run_dir, tmp_path)
    other = _copy_run(run_dir, tmp_path, "other")
    notes = tmp_path / "exports" / "notes"
    notes.mkdir(parents=True)
    (notes / "todo.txt").write_text("keep me", encoding="utf-8")
    for root, name in ((notes.parent, "notes"), (other.parent, "other")):
        code, err = _export(capsys, run, "--out-root", root, "--name", name, "--overwrite")
        assert code == 2 and "not tfmp's to replace" in err, err
    assert (notes / "todo.txt").read_text(encoding="utf-8") == "keep me"
    assert files.is_complete(other) and os.path.isfile(other / "model.keras")


def test_a_symlink_or_a_file_as_export_target_is_refused_with_exit_2(
        run_dir, tmp_path, capsys, no_work):
    run = _copy_run(run_dir, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep", encoding="utf-8")
    exports = tmp_path / "exports"
    exports.mkdir()
    os.symlink(elsewhere, exports / "link")
    (exports / "file").write_text("a file", encoding="utf-8")
    for name, what in (("link", "symbolic link"), ("file", "is a file")):
        code, err = _export(capsys, run, "--out-root", exports, "--name", name, "--overwrite")
        assert code == 2 and what in err and "Traceback" not in err, err
    assert os.path.islink(exports / "link") and os.listdir(elsewhere) == ["keep.txt"]
    assert (exports / "file").read_text(encoding="utf-8") == "a file"


def test_overwrite_replaces_an_earlier_export_with_or_without_its_marker(
        run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    target = tmp_path / "exports" / "demo"
    # An export written before exports had a COMPLETE marker: recognised by its report.
    (target / "serving").mkdir(parents=True)
    files.write_json(target / "export_report.json", {"variants": {}})
    for _ in range(2):  # then over the export (with its marker) the first pass wrote
        code, err = _export(capsys, run, "--out-root", target.parent, "--overwrite", *CHEAP)
        assert code == 0, err
        assert files.is_complete(target) and not (target / "serving").exists()
        with open(target / files.MARKER, encoding="utf-8") as f:
            assert json.load(f)["kind"] == "export"
    assert sorted(os.listdir(target.parent)) == ["demo"]  # no staging, aside or lock left


# --- 3. One export per target at a time; 11. files are UTF-8 in any locale. ---

def test_a_second_export_to_the_same_target_is_refused_naming_the_running_one(
        run_dir, tmp_path, capsys):
    root = tmp_path / "exports"
    lock = root / "demo.lock"
    # The first export runs in an ASCII locale (no UTF-8 coercion): every file it
    # writes with a non-ASCII label in it must name its encoding.
    first = subprocess.Popen(
        [sys.executable, "-m", "tfmp", "export", run_dir, "--out-root", str(root),
         "--variants", "tflite_fp32,hf", "--max-examples", "8"],
        cwd=tmp_path, env=_env(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        deadline = time.monotonic() + 180
        while not lock.exists():
            assert first.poll() is None, f"the first export took no lock: {first.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        code, err = _export(capsys, run_dir, "--out-root", root, *CHEAP)
        assert code == 2 and f"pid {first.pid}" in err and "Traceback" not in err, err
        _, first_err = first.communicate(timeout=300)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, first_err[-3000:]
    target = root / "demo"
    assert files.is_complete(target) and not lock.exists()
    with open(target / "tflite" / "labels.txt", encoding="utf-8") as f:
        names = f.read().splitlines()
    assert names == json.loads((target / "export_report.json").read_text("utf-8"))["labels"]
    assert "positif ✓" in names
    hf_config = json.loads((target / "hf" / "config.json").read_text("utf-8"))
    assert sorted(hf_config["label2id"]) == sorted(RENAME.values())


# --- 4. Finished exports are complete; a killed export's leftovers are swept. ---

def test_an_export_is_published_with_its_marker_and_readers_can_check_it(exported, tmp_path):
    from tfmp.export import check_export

    path = exported["path"]
    check_export(path)  # what a reader of an export calls first
    with open(os.path.join(path, files.MARKER), encoding="utf-8") as f:
        assert json.load(f)["kind"] == "export"
    assert sorted(os.listdir(os.path.dirname(path))) == ["tiny"]
    half = tmp_path / "half"
    shutil.copytree(path, half)
    os.remove(half / files.MARKER)
    with pytest.raises(InputError, match="COMPLETE"):
        check_export(half)


def test_a_killed_exports_staging_is_swept_and_live_or_foreign_ones_are_kept(
        run_dir, tmp_path, capsys):
    root = tmp_path / "exports"
    killed = subprocess.Popen(
        [sys.executable, "-m", "tfmp", "export", run_dir, "--out-root", str(root)],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while not (root.is_dir() and any(n.startswith(".demo.partial-")
                                         for n in os.listdir(root))):
            assert killed.poll() is None, killed.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # into its first variant
    finally:
        killed.send_signal(signal.SIGKILL)  # a power cut, as far as the export can tell
        killed.wait()
    left = [n for n in os.listdir(root) if n.startswith(".demo.partial-")]
    assert len(left) == 1
    # Staging that a live process of this host, or any process of another host, holds.
    live = root / f".demo.partial-{files.unique_suffix()}"
    foreign = root / ".demo.partial-some-other-host-4242-0123abcd"
    for path in (live, foreign):
        path.mkdir()
    code, err = _export(capsys, run_dir, "--out-root", root, *CHEAP)
    assert code == 0, err
    assert files.is_complete(root / "demo")
    assert sorted(os.listdir(root)) == sorted(["demo", live.name, foreign.name])


def test_an_export_cut_short_between_its_two_renames_is_put_in_place(
        exported, run_dir, tmp_path, capsys):
    # What `files.publish` leaves when killed after renaming the old export aside and
    # before renaming the complete new one in: no target, both beside it.
    root = tmp_path / "exports"
    suffix = f"{_host()}-{_dead_pid()}-0123abcd"
    new, old = root / f".demo.partial-{suffix}", root / f"demo.old-{suffix}"
    shutil.copytree(exported["path"], new)
    files.write_json(new / files.MARKER, {"kind": "export", "run_dir": run_dir})
    shutil.copytree(exported["path"], old)
    (new / "new.txt").write_text("the new one", encoding="utf-8")
    code, err = _export(capsys, run_dir, "--out-root", root, *CHEAP)
    assert code == 2 and "--overwrite" in err and "put in place" in err, err
    assert sorted(os.listdir(root)) == ["demo"]
    assert files.is_complete(root / "demo") and (root / "demo" / "new.txt").exists()


# --- 9. The test split is the one the run was tested on. ---

def _relocated_run(run_dir, data_csv, tmp_path, given=None):
    """A copy of the run as if trained on a copy of its data at tmp_path/a/tweets.csv.

    `given`: what `--data` was at training (default: the absolute path).
    """
    run = _copy_run(run_dir, tmp_path)
    data = tmp_path / "a" / "tweets.csv"
    data.parent.mkdir()
    shutil.copy(data_csv, data)
    _edit_config(run, lambda c: (c["config"].update(data=given or str(data)),
                                 c["data"].update(path=str(data))))
    return run, data


def _edit_config(run, edit):
    with open(run / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    edit(config)
    files.write_json(run / "config.json", config)


def test_export_refuses_a_data_file_edited_since_training(run_dir, data_csv, tmp_path, capsys):
    run, data = _relocated_run(run_dir, data_csv, tmp_path)
    with open(data, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["@united great thanks", "positif ✓"])
    code, err = _export(capsys, run, "--out-root", tmp_path / "exports", *CHEAP)
    assert code == 2 and f"'{data}'" in err and "edited" in err and "sha256" in err, err
    assert not (tmp_path / "exports" / "demo").exists()


def test_export_reads_the_recorded_path_not_one_under_todays_working_directory(
        run_dir, data_csv, tmp_path, capsys, monkeypatch):
    # Trained with `--data tweets.csv` in a/; exported from b/, where another tweets.csv is.
    run, data = _relocated_run(run_dir, data_csv, tmp_path, given="tweets.csv")
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    _write_csv(elsewhere / "tweets.csv", seed=7)
    monkeypatch.chdir(elsewhere)
    exports = tmp_path / "exports"
    code, err = _export(capsys, run, "--out-root", exports, *CHEAP)
    assert code == 0, err
    with open(exports / "demo" / "export_report.json", encoding="utf-8") as f:
        assert json.load(f)["data"]["path"] == str(data)
    os.remove(data)  # moved away: b/tweets.csv is another file
    code, err = _export(capsys, run, "--out-root", exports, "--overwrite", *CHEAP)
    assert code == 2 and f"'{data}'" in err and "missing" in err, err
    assert str(elsewhere / "tweets.csv") in err and "different content" in err
    shutil.copy(data_csv, elsewhere / "tweets.csv")  # moved here, unchanged: verified
    with pytest.warns(UserWarning, match="same sha256"):
        code, err = _export(capsys, run, "--out-root", exports, "--overwrite", *CHEAP)
    assert code == 0, err


def test_export_refuses_a_rebuilt_test_split_that_is_not_the_recorded_one(
        run_dir, data_csv, tmp_path, capsys):
    run, data = _relocated_run(run_dir, data_csv, tmp_path)
    # As if the split had changed (another seed, another tfmp): one position differs.
    _edit_config(run, lambda c: c["data"]["test_indices"].__setitem__(
        0, max(c["data"]["test_indices"]) + 1))
    code, err = _export(capsys, run, "--out-root", tmp_path / "exports", *CHEAP)
    assert code == 2 and "test split" in err and f"'{data}'" in err, err
    assert not (tmp_path / "exports" / "demo").exists()


def test_a_run_recorded_before_data_fingerprints_exports_with_a_warning(
        run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    _edit_config(run, lambda c: [c["data"].pop(k) for k in ("path", "sha256", "test_indices")])
    with pytest.warns(UserWarning, match="not verified"):
        code, err = _export(capsys, run, "--out-root", tmp_path / "exports", *CHEAP)
    assert code == 0, err


# --- 10. The serving signature on hostile input, the warm-up replay, the HF length. ---

HUGE = "great " * 17_000  # 102,000 characters
INVALID_UTF8 = b"\xff\xfe\xc3( great \x80"


def _keras_probabilities(run_dir, texts):
    """The float32 Keras model's probabilities, tokenizing in a graph as the SavedModel does.

    (Called eagerly, keras-hub's tokenizer decodes in Python and raises on invalid
    UTF-8, which tensorflow-text in the graph reads.)
    """
    model = models.rebuild_float32(models.load_model(run_dir))

    @tf.function
    def probabilities(text):
        return tf.nn.softmax(model(model.preprocessor(text), training=False))

    return probabilities(tf.constant(texts, tf.string)).numpy()


@pytest.mark.parametrize("variant", ["serving/1", "serving_fp16/1", "serving_bf16/1"])
def test_serving_signature_answers_empty_huge_invalid_utf8_and_empty_batches(
        exported, run_dir, variant):
    serve = tf.saved_model.load(os.path.join(exported["path"], variant)).signatures[
        "serving_default"]
    texts = [t.encode() for t in ("", HUGE)] + [INVALID_UTF8, b"great " * (SEQ_LEN - 2)]
    out = serve(text=tf.constant(texts, tf.string))
    assert out["probabilities"].shape == (4, 3) and out["label_id"].shape == (4,)
    assert out["label"].shape == (4,)
    probabilities = out["probabilities"].numpy()
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    if variant == "serving/1":  # the float32 SavedModel: the Keras model's answers
        np.testing.assert_allclose(probabilities, _keras_probabilities(run_dir, texts),
                                   atol=1e-5)
    # 100 KB is cut at the run's sequence length, as its first words alone are.
    np.testing.assert_allclose(probabilities[1], probabilities[3], atol=1e-5)
    empty = serve(text=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 3)
    assert empty["label_id"].shape == (0,) and empty["label"].shape == (0,)


REPLAY = textwrap.dedent("""
    # TF Serving loads a SavedModel into a session and replays its warm-up records
    # through their signature_def before it serves; this does the same.
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (TF Serving links these ops in)
    from tensorflow_serving.apis import prediction_log_pb2

    tf.compat.v1.disable_eager_execution()
    path, results = sys.argv[1], []
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        warmup = path + "/assets.extra/tf_serving_warmup_requests"
        requests = []
        for record in tf.compat.v1.io.tf_record_iterator(warmup):
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            requests.append((request.model_spec.signature_name or "serving_default",
                             {k: tf.make_ndarray(v) for k, v in request.inputs.items()}))
        hostile = [np.array(x, dtype=object) for x in
                   ([""], [sys.argv[2]], [b"\\xff\\xfe\\xc3( great \\x80"], [])]
        requests += [("serving_default", {"text": x}) for x in hostile]
        for name, inputs in requests:
            signature = meta.signature_def[name]
            out = sess.run({k: v.name for k, v in signature.outputs.items()},
                           {signature.inputs[k].name: v for k, v in inputs.items()})
            results.append({"batch": len(inputs["text"]),
                            "shapes": {k: list(v.shape) for k, v in out.items()},
                            "finite": bool(np.all(np.isfinite(out["probabilities"])))})
    print(json.dumps(results))
""")


def test_warmup_records_and_hostile_inputs_replay_through_a_session_as_tf_serving_does(
        exported):
    path = os.path.join(exported["path"], "serving", "1")
    proc = subprocess.run([sys.executable, "-c", REPLAY, path, HUGE], capture_output=True,
                          text=True, env=_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["batch"] for r in results] == [1, 8, 1, 1, 1, 0]  # 2 warm-up records, 4 more
    for r in results:
        n = r["batch"]
        assert r["shapes"] == {"probabilities": [n, 3], "label_id": [n], "label": [n]}, r
        assert r["finite"]


def test_hf_tokenizer_truncates_at_the_runs_sequence_length(exported):
    from transformers import AutoTokenizer

    hf = os.path.join(exported["path"], "hf")
    with open(os.path.join(hf, "tokenizer_config.json"), encoding="utf-8") as f:
        assert json.load(f)["model_max_length"] == SEQ_LEN == exported["sequence_length"]
    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert tokenizer.model_max_length == SEQ_LEN
    assert len(tokenizer(HUGE, truncation=True)["input_ids"]) == SEQ_LEN


# --- 11. labels.txt: line i+1 is class i, so a name may not hold a line break. ---

@pytest.mark.parametrize("bad", ["neg\native", "neg\rative", "neg\u2028ative"])
def test_labels_txt_refuses_a_label_name_with_a_line_break_before_any_work(
        run_dir, tmp_path, monkeypatch, bad):
    from tfmp.export import export_classifier, pipeline

    classifier = models.load_model(run_dir)

    def reference(*args):
        raise AssertionError("the export started working before checking the label names")

    monkeypatch.setattr(pipeline, "_reference", reference)
    with pytest.raises(ValueError, match="line break"):
        export_classifier(classifier, [bad, "neutre", "positif"], ["a", "b"], [0, 1],
                          str(tmp_path / "x"), variants=["tflite_fp32"])
    assert os.listdir(tmp_path) == []
