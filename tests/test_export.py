import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmp import cli
from tfmp.errors import UserError
from tfmp.export import REGISTRY, VARIANTS, Gate, export, export_classifier

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["@united thanks, great crew", "@united worst delay, rude staff", "my seat today"]


@pytest.fixture(scope="module")
def run_dir(mixed_float16_run):
    # The session's shared run (conftest.py), read only here. mixed_float16, so every
    # export goes through the float32 rebuild.
    return mixed_float16_run.run_dir


@pytest.fixture(scope="module")
def exported(mixed_float16_export):
    # (report, path): the session's export of that run, every variant (conftest.py).
    return mixed_float16_export


def _reference(run_dir, texts):
    """float32 probabilities of the run's Keras model (rebuilt under float32)."""
    from tfmp.models import rebuild_float32
    from tfmp.models import load_model

    model = rebuild_float32(load_model(run_dir))
    logits = model(model.preprocessor(tf.constant(texts)), training=False)
    return tf.nn.softmax(logits).numpy()


def test_export_writes_every_variant_and_a_passing_report(exported):
    report, path = exported
    for relative in ("serving/1/saved_model.pb", "serving/1/assets/vocab.txt",
                     "serving/1/assets.extra/tf_serving_warmup_requests",
                     "serving_fp16/1/saved_model.pb", "serving_bf16/1/saved_model.pb",
                     "tflite/model_fp32.tflite",
                     "tflite/model_fp16.tflite", "tflite/model_int8.tflite",
                     "tflite/vocab.txt", "tflite/labels.txt", "hf/model.safetensors",
                     "hf/tokenizer.json", "export_report.json"):
        assert os.path.isfile(os.path.join(path, relative)), relative
    assert sorted(os.listdir(os.path.dirname(path))) == ["tiny"]  # no staging left
    with open(os.path.join(path, "export_report.json")) as f:
        written = json.load(f)
    # The tiny run has no pruned zeros: tflite_sparse is skipped, saying why.
    assert written["skipped"].keys() == {"tflite_sparse"}
    assert written["variants"].keys() == set(VARIANTS) - {"tflite_sparse"}
    assert report["passed"] and report["keras"]["run_policy"] == "mixed_float16"
    for name, row in report["variants"].items():
        assert row["passed"], (name, row)
        assert row["size_bytes"] > 0 and row["examples_per_second"] > 0
    # Same float32 graph as Keras: every argmax, probabilities within 1e-5.
    fp32 = report["variants"]["savedmodel_fp32"]
    assert fp32["argmax_agreement"] == 1.0 and fp32["max_probability_difference"] <= 1e-5
    with open(os.path.join(path, "tflite/labels.txt")) as f:
        assert f.read().split() == LABELS


def _graph_dtypes(savedmodel_dir):
    """The dtypes (attr T) of every op in the serving signature's functions."""
    import tensorflow as tf

    graph = tf.saved_model.load(savedmodel_dir).signatures["serving_default"].graph
    library = graph.as_graph_def().library
    return {tf.dtypes.as_dtype(node.attr["T"].type).name for f in library.function
            for node in f.node_def if "T" in node.attr and node.attr["T"].type}


def test_bf16_savedmodel_computes_in_bfloat16_and_fp32_does_not(exported):
    report, path = exported
    assert "bfloat16" in _graph_dtypes(os.path.join(path, "serving_bf16/1"))
    assert "bfloat16" not in _graph_dtypes(os.path.join(path, "serving/1"))
    row = report["variants"]["savedmodel_bf16"]
    assert row["passed"] and row["argmax_agreement"] >= 0.995


def test_hf_checkpoint_has_label_names_and_classification_head(exported):
    from safetensors.numpy import load_file

    path = os.path.join(exported[1], "hf")
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert load_file(os.path.join(path, "model.safetensors"))["classifier.weight"].shape[0] == 3


FRESH_PROCESS = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  registers the WordPiece ops
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(text=tf.constant(json.loads(sys.argv[2])))
print(json.dumps({
    "probabilities": out["probabilities"].numpy().tolist(),
    "label_id": out["label_id"].numpy().tolist(),
    "label": [s.decode() for s in out["label"].numpy()],
    "imported": sorted({m.split(".")[0] for m in sys.modules} & {"tfmp", "keras_hub"}),
}))
"""


def test_savedmodel_classifies_raw_strings_in_a_fresh_process(exported, run_dir, tmp_path):
    serving = os.path.join(exported[1], "serving", "1")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, serving, json.dumps(TEXTS)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # `import tensorflow` itself imports keras (TF 2.21 with Keras 3 installed); the
    # script imports nothing else, and neither tfmp nor keras-hub gets loaded.
    assert out["imported"] == []
    probabilities = np.array(out["probabilities"])
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities, _reference(run_dir, TEXTS), atol=1e-5)
    assert out["label"] == [LABELS[i] for i in out["label_id"]]
    assert out["label_id"] == probabilities.argmax(-1).tolist()


def test_saved_model_cli_shows_both_signatures_and_runs_on_raw_strings(exported):
    serving = os.path.join(exported[1], "serving", "1")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cli_path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    show = subprocess.run([cli_path, "show", "--dir", serving, "--all"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert show.returncode == 0, show.stderr[-2000:]
    text = show.stdout
    default = text[text.index("signature_def['serving_default']"):
                   text.index("signature_def['tokens']")]
    tokens = text[text.index("signature_def['tokens']"):]
    assert "inputs['text']" in default
    assert "dtype: DT_STRING\n        shape: (-1)\n        name: serving_default_text" in default
    for section in (default, tokens):
        assert "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n" \
               "        shape: (-1, 3)" in section
        assert "outputs['label_id'] tensor_info:\n        dtype: DT_INT64" in section
        assert "outputs['label'] tensor_info:\n        dtype: DT_STRING" in section
    for key in ("token_ids", "padding_mask", "segment_ids"):
        assert (f"inputs['{key}'] tensor_info:\n        dtype: DT_INT32\n"
                "        shape: (-1, -1)") in tokens
    # `saved_model_cli run` does not load tensorflow-text's ops (TF Serving links them
    # in); run its main after importing them, as a serving binary would have them.
    run = ("import sys, tensorflow_text\n"
           "from tensorflow.python.tools import saved_model_cli\n"
           "sys.argv = ['saved_model_cli'] + sys.argv[1:]\n"
           "saved_model_cli.main()\n")
    proc = subprocess.run(
        [sys.executable, "-c", run, "run", "--dir", serving, "--tag_set", "serve",
         "--signature_def", "serving_default", "--input_exprs", f"text={TEXTS!r}"],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Result for output key probabilities:" in proc.stdout


def test_warmup_requests_are_prediction_logs_for_serving_default(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(exported[1], "serving/1/assets.extra/tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]
    assert len(logs) == 2
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert tf.make_ndarray(request.inputs["text"]).dtype == object


def test_tokens_signature_matches_serving_default(exported):
    model = tf.saved_model.load(os.path.join(exported[1], "serving", "1"))
    from_text = model.signatures["serving_default"](text=tf.constant(TEXTS))
    vocab_path = os.path.join(exported[1], "tflite", "vocab.txt")
    import keras_hub

    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=vocab_path, lowercase=True),
        sequence_length=16)
    features = preprocessor(tf.constant(TEXTS))
    from_tokens = model.signatures["tokens"](
        **{k: tf.cast(features[k], tf.int32) for k in ("token_ids", "padding_mask",
                                                      "segment_ids")})
    np.testing.assert_allclose(from_text["probabilities"], from_tokens["probabilities"],
                               atol=1e-6)


def test_failed_gate_exits_nonzero_naming_the_variant_and_writes_nothing(
        run_dir, tmp_path, monkeypatch, capsys):
    # No model agrees on more than every argmax: the int8 gate cannot be met.
    # The gate is part of the variant's registry row: replace the row.
    monkeypatch.setitem(REGISTRY, "tflite_int8", dataclasses.replace(
        REGISTRY["tflite_int8"], gate=Gate(min_agreement=1.01)))
    status = cli.main(["export", run_dir, "--out-root", str(tmp_path), "--name", "x",
                       "--variants", "tflite_int8", "--max-examples", "8"])
    assert status != 0
    captured = capsys.readouterr()
    assert "tflite_int8" in captured.err and "argmax agreement" in captured.err
    # The error says how to export what passed (tflite_int8 failed; tflite_fp32 passed).
    assert "run again with --variants tflite_fp32 " in captured.err
    assert os.listdir(tmp_path) == []  # no export, no staging directory
    # The command says which variant it is on, and how each ended, as it goes.
    # tflite_int8 is converted from tflite_fp32, which comes first and passes.
    lines = captured.out.splitlines()
    assert lines[0] == "[1/2] tflite_fp32: writing and checking ..."
    assert lines[1].startswith("[1/2] tflite_fp32: passed, argmax agreement ")
    assert lines[2] == "[2/2] tflite_int8: writing and checking ..."
    assert lines[3].startswith("[2/2] tflite_int8: FAILED its gate, argmax agreement ")


def test_not_a_run_dir_is_a_user_error(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "not a tfmp run directory" in capsys.readouterr().err


def test_existing_export_is_kept_without_overwrite(exported, run_dir):
    path = exported[1]
    with pytest.raises(UserError, match="--overwrite"):
        export(run_dir, out_root=os.path.dirname(path), name="tiny")


@pytest.mark.slow
def test_minilm_tflite_variants_pass_the_gate(tmp_path):
    """The real all-MiniLM-L6-v2 with a head fitted on frozen features (no fine-tune)."""
    import keras
    from sklearn.linear_model import LogisticRegression

    from tfmp import data, models

    examples = data.load_examples("airline")
    label_map = data.LabelMap.from_labels(examples.labels)
    order = np.random.default_rng(0).permutation(len(examples.texts))
    texts = [examples.texts[i] for i in order[:500]]
    label_ids = label_map.ids([examples.labels[i] for i in order[:500]])
    keras.utils.set_random_seed(0)
    model = models.load_classifier(num_classes=3, sequence_length=64, policy="float32")
    # A head with real margins: logistic regression on the pooled output of 300 texts;
    # the gate is then measured on 200 others.
    pooled = model.backbone(model.preprocessor(tf.constant(texts[:300])))["pooled_output"]
    head = LogisticRegression(max_iter=1000).fit(np.asarray(pooled), label_ids[:300])
    model.output_dense.set_weights([head.coef_.T.astype(np.float32),
                                    head.intercept_.astype(np.float32)])
    report = export_classifier(
        model, label_map.names, texts[300:], label_ids[300:], str(tmp_path / "minilm"),
        variants=["tflite_fp16", "tflite_int8"])
    rows = report["variants"]
    print(json.dumps(report, indent=1))
    assert report["passed"]
    assert rows["tflite_fp32"]["argmax_agreement"] >= 0.999
    assert rows["tflite_fp16"]["argmax_agreement"] >= 0.995
    assert rows["tflite_fp16"]["size_ratio"] <= 0.52
    assert rows["tflite_int8"]["argmax_agreement"] >= 0.98
    assert rows["tflite_int8"]["accuracy_drop"] <= 0.01
    assert rows["tflite_int8"]["size_ratio"] <= 0.30
    assert "size_gate" not in rows["tflite_int8"]  # applied: MiniLM is ~90 MB


def test_the_gate_error_names_only_variants_whose_requirements_passed_too():
    from tfmp.export import pipeline

    rows = pipeline.resolve_variants(["savedmodel_fp32", "tflite_fp32", "tflite_int8",
                                      "cascade_int8_fp32"])
    results = {v.name: {"passed": v.name != "tflite_int8"} for v in rows}
    hint = pipeline._passed_hint(results, rows)
    # The cascade passed its own gate but requires the int8 file, which failed.
    assert hint.split("--variants ")[1].split(" ")[0] == "savedmodel_fp32,tflite_fp32"
    assert pipeline._passed_hint({v.name: {"passed": False} for v in rows}, rows) == ""
