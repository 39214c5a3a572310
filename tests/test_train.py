import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfmp import cli
from tfmp.errors import UserError
from tfmp.config import TrainConfig
from tfmp.models import load_model


# The session's shared runs (conftest.py): same data, seed and settings, two policies.
# The float32 one is a second ~15 s training run, needed only by the tests marked slow.


@pytest.mark.parametrize("policy", [pytest.param("float32", marks=pytest.mark.slow),
                                    "mixed_float16"])
def test_run_learns_the_task_and_writes_a_complete_run_dir(request, policy):
    result = request.getfixturevalue(f"{policy}_run")
    m = result.metrics
    # One keyword decides the class: a tiny random BERT (72 steps) must clearly beat the
    # 50% majority class (it reaches about 75%).
    assert m["accuracy"] >= m["majority_class_share"] + 0.15, m
    for name in ("config.json", "labels.json", "metrics.json", "history.json",
                 "classification_report.txt", "model.keras"):
        assert os.path.isfile(os.path.join(result.run_dir, name)), name
    assert not os.path.exists(result.run_dir + ".partial")
    saved = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert saved["policy"]["name"] == policy and saved["policy"]["reason"]
    assert saved["optimizer"]["loss_scale_optimizer"] == (policy == "mixed_float16")
    assert json.load(open(os.path.join(result.run_dir, "labels.json")))["names"] == [
        "negative", "neutral", "positive"]
    assert "negative" in open(os.path.join(result.run_dir, "classification_report.txt")).read()


@pytest.mark.slow
def test_mixed_float16_and_float32_runs_agree_within_a_few_points(float32_run,
                                                                  mixed_float16_run):
    runs = {"float32": float32_run, "mixed_float16": mixed_float16_run}
    # Same seed and data; 36 test examples, so one example is 2.8 points.
    a, b = runs["float32"].metrics["accuracy"], runs["mixed_float16"].metrics["accuracy"]
    assert abs(a - b) <= 0.06, (a, b)
    state = runs["mixed_float16"].metrics["optimizer"]
    assert state["loss_scale"] >= 1.0 and state["skipped_steps"] >= 0
    assert runs["float32"].metrics["optimizer"]["loss_scale"] is None


def test_saved_model_reloads_and_predicts_like_the_trained_one(mixed_float16_run):
    result = mixed_float16_run
    loaded = load_model(result.run_dir)
    texts = ["the flight was great", "rude crew"]
    for a, b in zip(loaded.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.backbone.dtype_policy.name == "mixed_float16"
    # Same weights and policy; float16 kernels may be chosen differently per graph,
    # so logits agree to float16 precision (~1e-3 relative), not bitwise.
    np.testing.assert_allclose(loaded.predict(texts, verbose=0),
                               result.model.predict(texts, verbose=0), atol=2e-3)


def test_model_fit_works_in_a_notebook_on_returned_objects(sentiment_csv, tiny_bert_dir):
    # The same objects train() uses, driven by hand as a notebook would.
    from tfmp import compile_classifier, data, load_classifier, resolve

    policy = resolve("mixed_float16")
    examples = data.load_examples(sentiment_csv)
    labels = data.LabelMap.from_labels(examples.labels)
    splits = data.split_examples(examples.texts, labels.ids(examples.labels), seed=0)
    model = load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16, policy=policy)
    compile_classifier(model, policy, total_steps=10, config=TrainConfig(lr=1e-3))
    history = model.fit(data.make_dataset(splits.train, None, 32, shuffle=True), epochs=1,
                        shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.optimizer.iterations.numpy()) == -(-len(splits.train) // 32)


def _cli(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_trains_and_prints_test_accuracy(capsys, sentiment_csv, tiny_bert_dir, tmp_path):
    code, out, err = _cli(capsys, "train", "--data", sentiment_csv, "--model", tiny_bert_dir,
                          "--policy", "mixed_bfloat16", "--epochs", "1", "--seq-len", "16",
                          "--max-train-examples", "64", "--out", str(tmp_path / "r"), "--quiet",
                          "--float32-layers", "bert_backbone/transformer_layer_1")
    assert code == 0, err
    assert "test accuracy" in out
    saved = json.load(open(tmp_path / "r" / "config.json"))
    assert saved["data"]["splits"]["train"] == 64
    assert saved["config"]["policy"] == "mixed_bfloat16"
    assert saved["policy"]["float32_layers"] == ["bert_backbone/transformer_layer_1"]


@pytest.mark.parametrize(
    "args,words",
    [
        (["--data", "{missing}"], ["file not found", "missing.csv"]),
        (["--data", "{csv}", "--text-column", "tweet"], ["tweet", "--text-column"]),
        (["--data", "{csv}", "--labels", "negative,positive"], ["neutral", "row", "--labels"]),
        (["--data", "{csv}", "--model", "{missing}"], ["does not exist"]),
        (["--data", "{csv}", "--epochs", "0"], ["--epochs must be at least 1"]),
        (["--data", "{empty}"], ["empty.csv"]),
    ],
)
def test_cli_bad_input_exits_2_with_message_and_writes_nothing(capsys, sentiment_csv,
                                                               tiny_bert_dir, tmp_path,
                                                               args, words):
    (tmp_path / "empty.csv").write_text("")
    subs = {"missing": str(tmp_path / "missing.csv"), "csv": sentiment_csv,
            "empty": str(tmp_path / "empty.csv")}
    args = [a.format(**subs) for a in args]
    if "--model" not in args:
        args += ["--model", tiny_bert_dir]
    code, out, err = _cli(capsys, "train", *args, "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not os.path.exists(tmp_path / "run")
    assert not os.path.exists(str(tmp_path / "run") + ".partial")


def test_cli_refuses_an_existing_run_dir_and_unknown_policy(capsys, sentiment_csv, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    code, _, err = _cli(capsys, "train", "--data", sentiment_csv, "--out", str(tmp_path / "run"))
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--policy", "float16", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_cli_subprocess_bad_input_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tfmp", "train", "--data", str(tmp_path / "nope.tsv"),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope.tsv" in proc.stderr and "Traceback" not in proc.stderr


def test_length_grouping_is_on_by_default_and_can_be_turned_off():
    from tfmp import cli

    parser = cli.build_parser()
    on = TrainConfig(**cli.values_given(parser.parse_args(["train", "--data", "x.csv"])))
    off = TrainConfig(**cli.values_given(parser.parse_args(
        ["train", "--data", "x.csv", "--no-length-grouping", "--length-pool", "3"])))
    assert on.length_grouping is True and on.length_pool == 8
    assert off.length_grouping is False and off.length_pool == 3
    with pytest.raises(UserError, match="--length-pool"):
        TrainConfig(length_pool=0).validate()


def test_configs_saved_before_length_pool_resume_with_the_pools_they_used():
    old = TrainConfig(length_grouping=True).to_json()
    del old["length_pool"]  # as written by runs before the flag existed
    assert TrainConfig.from_json(old).length_pool == 50
    assert TrainConfig.from_json(TrainConfig().to_json()).length_pool == 8


def test_a_run_traces_its_train_step_and_its_tokenizer_graph_once(
        sentiment_csv, tiny_bert_dir, tmp_path, monkeypatch):
    # Left to Keras, the optimizer is built inside the first traced step, which is then
    # traced again (it created variables); and keras-hub maps preprocess_samples anew at
    # every fit (one an epoch) and predict. Each trace of a MiniLM step costs seconds.
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from tfmp import models
    from tfmp.train import train

    calls = {"train_step": 0, "preprocess_samples": 0}

    def counted(name, method):
        def wrapper(*args, **kwargs):
            calls[name] += 1  # a Python call inside a tf.function happens at trace time
            return method(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(TensorFlowTrainer, "train_step",
                        counted("train_step", TensorFlowTrainer.train_step))
    monkeypatch.setattr(models.BertClassifier, "preprocess_samples",
                        counted("preprocess_samples", models.BertClassifier.preprocess_samples))
    train(TrainConfig(data=sentiment_csv, model=tiny_bert_dir, policy="float32", epochs=2,
                      batch_size=16, seq_len=16, seed=1, out=str(tmp_path / "run")), verbose=0)
    # 2 epochs (2 fits with validation) and the test predictions: one trace of each.
    assert calls == {"train_step": 1, "preprocess_samples": 1}, calls


def test_a_run_tokenizes_its_texts_once_and_trains_as_it_would_on_the_texts(
        sentiment_csv, tiny_bert_dir, tmp_path, monkeypatch):
    # tf.data optimizes a dataset's functions anew for every iterator (two an epoch, one
    # more for the test scores): 0.16 s each with a BERT tokenizer graph inside, 1.1 s
    # for RoBERTa's. So a run tokenizes once and its datasets carry token features.
    from tfmp import data, models
    from tfmp.train import train

    seen = []
    make_dataset = data.make_dataset
    monkeypatch.setattr(data, "make_dataset", lambda split, *a, **k: (
        seen.append(split.features is not None), make_dataset(split, *a, **k))[1])

    def run(name):
        seen.clear()
        result = train(TrainConfig(data=sentiment_csv, model=tiny_bert_dir, policy="float32",
                                   epochs=1, batch_size=16, seq_len=16, seed=1,
                                   out=str(tmp_path / name)), verbose=0)
        return result, list(seen)

    featured, featured_seen = run("features")
    monkeypatch.setattr(models, "takes_token_features", lambda model: False)
    texts, texts_seen = run("texts")
    # training, validation, test scores
    assert len(featured_seen) == 3 and all(featured_seen), featured_seen
    assert not any(texts_seen), texts_seen
    # The same batches into the same step: the same weights, bit for bit.
    for a, b in zip(featured.model.get_weights(), texts.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert featured.metrics["accuracy"] == texts.metrics["accuracy"]
