"""tfmp compress: pruning is exact, sharing shares, distillation's loss, the run directory.

On tiny random BERTs (tests/conftest.py): a 4-layer, 4-head one for the arithmetic,
the session's finished float32 run as the teacher of whole compressions.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import write_sentiment_csv, write_tiny_checkpoint

from tfmp import cli, data, files, models
from tfmp.compress import distil, hidden, importance, sparsity, transfer, vocab
from tfmp.compress.backbone import CompactBertBackbone
from tfmp.compress.prune import Plan, build_student, forward, mask_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["@united the flight was great thanks", "worst delay ever", "my bag",
         "seat today", "love the crew and the plane", "rude", "it was late", "a"]


@pytest.fixture(scope="module")
def deep_bert_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("deep_bert"), num_layers=4,
                                 num_heads=4, hidden_dim=32, intermediate_dim=64, seed=3)


def _classifier(model_dir):
    return models.load_classifier(model_dir, num_classes=3, sequence_length=16,
                                  policy="float32")


def _tokens(classifier):
    x = classifier.preprocessor(keras.ops.convert_to_tensor(TEXTS))
    return {k: x[k] for k in data.TOKEN_KEYS}


def _random_plan(rng, keep, units, heads, share=1):
    pick = lambda n, k: tuple(sorted(rng.choice(n, size=k, replace=False).tolist()))  # noqa
    return Plan(keep, tuple(pick(64, units) for _ in keep), tuple(pick(4, heads) for _ in keep),
                share)


def test_pruned_student_computes_what_the_masked_teacher_computes(deep_bert_dir):
    teacher = _classifier(deep_bert_dir)
    plan = _random_plan(np.random.default_rng(0), (0, 2, 3), units=24, heads=2)
    student = build_student(teacher, plan, "float32")
    # Smaller matmuls, not masks: 24 neurons, 2 heads of the teacher's size 8.
    layer = student.backbone.get_layer("transformer_layer_0")
    assert tuple(layer._feedforward_intermediate_dense.kernel.shape) == (32, 24)
    assert tuple(layer._self_attention_layer._query_dense.kernel.shape) == (32, 2, 8)
    assert student.backbone.num_layers == 3
    x = _tokens(teacher)
    expected = forward(mask_teacher(teacher, plan), x, plan.keep_layers)
    got = student(x, training=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=0)
    # The student's own layers, run one by one, compute what its functional graph does.
    np.testing.assert_allclose(np.asarray(forward(student, x)), np.asarray(got), atol=1e-6)


def test_layer_dropping_and_ffn_pruning_stay_a_plain_bert_backbone(deep_bert_dir):
    import keras_hub

    teacher = _classifier(deep_bert_dir)
    rng = np.random.default_rng(1)
    plan = Plan((1, 3), tuple(tuple(sorted(rng.choice(64, 32, replace=False).tolist()))
                              for _ in range(2)))
    student = build_student(teacher, plan, "float32")
    assert type(student.backbone) is keras_hub.models.BertBackbone  # Hugging Face exports it
    assert student.backbone.intermediate_dim == 32
    x = _tokens(teacher)
    np.testing.assert_allclose(np.asarray(student(x, training=False)),
                               np.asarray(forward(mask_teacher(teacher, plan), x, (1, 3))),
                               atol=1e-5, rtol=0)


def test_shared_layers_are_one_set_of_variables_at_every_depth(deep_bert_dir, tmp_path):
    teacher = _classifier(deep_bert_dir)
    student = build_student(teacher, Plan((0, 1, 2, 3), share=2), "float32")
    backbone = student.backbone
    assert isinstance(backbone, CompactBertBackbone) and backbone.layer_map == (0, 0, 1, 1)
    assert len(backbone.transformer_layers) == 2
    per_layer = teacher.backbone.get_layer("transformer_layer_0").count_params()
    assert teacher.count_params() - student.count_params() == 2 * per_layer
    # Initialised from the first layer of each group, applied twice.
    x = _tokens(teacher)
    expected = forward(teacher, x, (0, 0, 2, 2))
    np.testing.assert_allclose(np.asarray(student(x, training=False)), np.asarray(expected),
                               atol=1e-5, rtol=0)
    # One gradient step moves the one variable that both depths read.
    kernel = backbone.transformer_layers[0]._feedforward_intermediate_dense.kernel
    assert sum(v is kernel for v in student.trainable_variables) == 1
    # The tie survives saving and loading.
    path = str(tmp_path / "shared.keras")
    student.save(path)
    loaded = keras.saving.load_model(path, custom_objects={
        "BertClassifier": models.BertClassifier})
    assert loaded.backbone.layer_map == (0, 0, 1, 1)
    assert loaded.count_params() == student.count_params()
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)),
                               np.asarray(student(x, training=False)), atol=1e-6)


def test_a_pruned_vocabulary_computes_the_same_logits_on_training_texts(deep_bert_dir):
    teacher = _classifier(deep_bert_dir)
    train_texts = TEXTS[:4]
    kept = vocab.used_tokens(teacher.preprocessor, train_texts)
    size = teacher.preprocessor.tokenizer.vocabulary_size()
    assert len(kept) < size and 0 in kept  # [PAD] and every special token stay
    student = build_student(teacher, Plan((0, 1, 2, 3), vocab=kept), "float32")
    assert student.backbone.vocabulary_size == len(kept)
    def logits(model):  # each model tokenizes with its own vocabulary
        x = model.preprocessor(keras.ops.convert_to_tensor(train_texts))
        return np.asarray(model({k: x[k] for k in data.TOKEN_KEYS}, training=False))

    np.testing.assert_allclose(logits(student), logits(teacher), atol=1e-5, rtol=0)
    # A word never seen in training still tokenizes (spelled in kept pieces), not all [UNK].
    ids = np.asarray(student.preprocessor(keras.ops.convert_to_tensor(["zebra"]))["token_ids"])
    unk = student.preprocessor.tokenizer.token_to_id("[UNK]")
    assert ids[0, 1] != unk


def test_taylor_scores_ignore_a_removed_unit_and_top_units_keep_the_share(deep_bert_dir):
    teacher = _classifier(deep_bert_dir)
    plan = Plan((0, 1, 2, 3), ffn=tuple(tuple(range(1, 64)) for _ in range(4)),
                heads=tuple((1, 2, 3) for _ in range(4)))
    mask_teacher(teacher, plan)  # neuron 0 and head 0 of every layer removed
    split = data.Split(TEXTS * 4, np.arange(32) % 3)
    batches = importance.probe_batches(teacher, split, examples=32, batch_size=16)
    scores = importance.unit_scores(teacher, batches, (0, 1, 2, 3))
    for ffn in scores["ffn"]:
        assert ffn.shape == (64,) and ffn[0] == 0.0 and ffn[1:].max() > 0
    for heads in scores["heads"]:
        assert heads.shape == (4,) and heads[0] < 1e-12 * heads.max()
    kept = importance.top_units(scores["ffn"], 0.5)
    assert all(len(k) == 32 and 0 not in k for k in kept)
    keep, steps = importance.choose_layers(teacher, batches, drop=2)
    assert len(keep) == 2 and len(steps) == 2


def test_distillation_loss_is_cross_entropy_without_a_teacher_and_kl_against_one():
    labels = np.array([0, 2, 1])
    student = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]], np.float32)
    teacher = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]], np.float32)
    ce = keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True)
    found = np.array([True, True, False])
    loss = np.asarray(distil.distillation_loss(labels, student, teacher, found, 2.0, 0.7))
    p = np.exp(teacher / 2) / np.exp(teacher / 2).sum(-1, keepdims=True)
    q = np.exp(student / 2) / np.exp(student / 2).sum(-1, keepdims=True)
    kl = (p * np.log(p / q)).sum(-1) * 4.0
    expected = np.where(found, 0.7 * kl + 0.3 * np.asarray(ce), np.asarray(ce))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # A student equal to its teacher has no soft loss left.
    same = np.asarray(distil.distillation_loss(labels, teacher, teacher, [True] * 3, 3.0, 1.0))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_a_transfer_text_gets_the_soft_term_alone_whatever_its_label():
    student = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]], np.float32)
    teacher = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]], np.float32)
    labelled = np.array([True, False, False])
    p = np.exp(teacher / 2) / np.exp(teacher / 2).sum(-1, keepdims=True)
    q = np.exp(student / 2) / np.exp(student / 2).sum(-1, keepdims=True)
    kl = (p * np.log(p / q)).sum(-1) * 4.0
    for labels in ([0, 2, 1], [0, 0, 0], [0, 1, 2]):
        ce = np.asarray(keras.losses.sparse_categorical_crossentropy(
            np.array(labels), student, from_logits=True))
        loss = np.asarray(distil.distillation_loss(np.array(labels), student, teacher,
                                                   [True] * 3, 2.0, 0.7, labelled))
        # Labelled: 0.7 KL + 0.3 CE; transfer: all of its loss is KL, the label unread.
        np.testing.assert_allclose(loss, np.where(labelled, 0.7 * kl + 0.3 * ce, kl),
                                   rtol=1e-5)
    # Labels only (weight 0): a transfer text adds nothing.
    none = np.asarray(distil.distillation_loss(np.array([0, 0, 0]), student, teacher,
                                               [True] * 3, 2.0, 0.0, labelled))
    np.testing.assert_allclose(none[1:], 0.0, atol=1e-7)


def test_an_attached_student_reads_no_label_of_a_transfer_text(deep_bert_dir):
    import tensorflow as tf

    classifier = _classifier(deep_bert_dir)
    classifier.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    # A repeated labelled text: the table's rows are positions in `texts`, not unique texts.
    texts = TEXTS[:4] + [TEXTS[1]] + TEXTS[4:]
    table = np.random.default_rng(0).normal(size=(len(texts), 3)).astype(np.float32)
    logits = table[[0, 1, 2, 3, 5, 6, 7, 8]]  # the teacher's logits of TEXTS, in order
    distil.attach(classifier, texts, table, 2.0, 0.5, unlabelled=TEXTS[4:])
    losses = []
    for labels in ([0] * 8, [0, 1, 2, 0, 2, 2, 1, 1]):
        y = classifier.preprocess_samples(tf.constant(TEXTS), tf.constant(labels))[1]
        assert np.asarray(y["labelled"]).tolist() == [True] * 4 + [False] * 4
        # The student predicting the teacher's logits: no soft loss; the labelled half's
        # cross-entropy alone, whatever the transfer texts' labels say.
        losses.append(float(classifier.compute_loss(y=y, y_pred=tf.constant(logits))))
        ce = keras.losses.sparse_categorical_crossentropy(np.array(labels[:4]), logits[:4],
                                                          from_logits=True)
        assert losses[-1] == pytest.approx(0.5 * float(np.sum(ce)) / 8, rel=1e-5)
    assert classifier._tfmp_distillation["transfer_examples"] == 4


def test_a_distilled_students_overflow_diagnosis_reads_the_labels_of_its_targets(
        deep_bert_dir):
    # The monitor diagnoses the first skipped step; a student's preprocess_samples returns
    # its targets as a dict (label, teacher logits, ...), which broke the diagnosis once a
    # distilled mixed_float16 run overflowed (seen in a full suite run, 2026-11-30).
    import tensorflow as tf

    from tfmp import diagnose

    classifier = _classifier(deep_bert_dir)
    table = np.random.default_rng(0).normal(size=(len(TEXTS), 3)).astype(np.float32)
    distil.attach(classifier, TEXTS, table, 2.0, 0.5)
    batch = (tf.constant(TEXTS), tf.constant([0, 1, 2, 0, 2, 2, 1, 1]))
    assert isinstance(classifier.preprocess_samples(*batch)[1], dict)
    result = diagnose.diagnose(classifier, batch, reference=False)
    assert result["layers"] and result["loss"] > 0


def test_transfer_texts_are_the_left_out_training_texts_never_validation_or_test(
        sentiment_csv):
    from tfmp.config import TrainConfig
    from tfmp.errors import UserError

    config = TrainConfig(data=sentiment_csv, max_train_examples=100, seed=3)
    splits = data.prepare_data(config)[2]
    texts = transfer.choose(config, splits, 60)
    assert len(texts) == len(set(texts)) == 60
    assert texts == transfer.choose(config, splits, 60)  # the same on resume
    whole = data.prepare_data(TrainConfig(data=sentiment_csv, seed=3))[2]
    assert set(texts) <= set(whole.train.texts)
    for split in (splits.train, splits.validation, splits.test):
        assert not set(texts) & set(split.texts)
    with pytest.raises(UserError, match="--transfer-examples 10000: there are only"):
        transfer.choose(config, splits, 10_000)
    extended = transfer.extend(splits.train, texts)
    assert len(extended) == 160 and list(extended.indices[100:]) == [-1] * 60


def test_hidden_forward_is_the_classifier_and_exposes_each_depths_cls_state(deep_bert_dir):
    teacher = _classifier(deep_bert_dir)
    x = _tokens(teacher)
    plan = _random_plan(np.random.default_rng(2), (0, 1, 2, 3), units=32, heads=2, share=2)
    student = build_student(teacher, plan, "float32")  # CompactBertBackbone, tied layers
    expected = np.asarray(student(x, training=False))
    logits, states = hidden.forward(student, x)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-6)
    assert len(states) == 4 and tuple(states[0].shape) == (len(TEXTS), 32)
    # The last depth's [CLS] is what the pooler reads.
    pooled = student.backbone(x)["pooled_output"]
    np.testing.assert_allclose(
        np.asarray(student.backbone.get_layer("pooled_dense")(states[-1])), np.asarray(pooled),
        atol=1e-6)
    latest = hidden.expose(student)
    np.testing.assert_allclose(np.asarray(student(x, training=False)), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(latest["states"][2]), np.asarray(states[2]),
                               atol=1e-6)
    # Training mode runs the dropout layers (the fixture's rate is above 0).
    assert student.backbone.dropout > 0
    assert not np.allclose(np.asarray(student(x, training=True)), expected, atol=1e-6)
    # The teacher's table: its states after the kept layers, row per text.
    table = hidden.teacher_states(teacher, TEXTS, (1, 3), batch_size=3)
    _, full = hidden.forward(teacher, x)
    assert table.shape == (len(TEXTS), 2, 32) and table.dtype == np.float32
    np.testing.assert_allclose(table[:, 1], np.asarray(full[3]), atol=1e-5)


def test_state_loss_is_the_mean_squared_difference_of_found_examples():
    rng = np.random.default_rng(0)
    student = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(2)]
    teacher = rng.normal(size=(3, 2, 5)).astype(np.float32)
    loss = np.asarray(hidden.state_loss(student, teacher, np.array([True, False, True])))
    expected = ((np.stack(student, 1) - teacher) ** 2).mean(axis=(1, 2)) * [1, 0, 1]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    same = hidden.state_loss([teacher[:, 0], teacher[:, 1]], teacher, np.ones(3, bool))
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-7)


def test_a_student_seed_reorders_the_training_split_and_keeps_its_examples():
    from types import SimpleNamespace

    from tfmp.compress.run import reseed

    def run():
        texts = [f"text {i}" for i in range(40)]
        split = data.Split(texts, np.arange(40) % 3, np.arange(40) + 100)
        return SimpleNamespace(splits=data.Splits(split, split, split))

    a, b, c = run(), run(), run()
    reseed(a, 1), reseed(b, 1), reseed(c, 2)
    assert a.splits.train.texts == b.splits.train.texts  # a resumed run: the same order
    assert a.splits.train.texts != c.splits.train.texts
    assert sorted(c.splits.train.texts) == sorted(run().splits.train.texts)
    for r in (a, c):  # each text keeps its label and its position in the dataset
        t = r.splits.train
        assert [int(s.split()[1]) % 3 for s in t.texts] == t.label_ids.tolist()
        assert [int(s.split()[1]) + 100 for s in t.texts] == t.indices.tolist()


def test_magnitude_pruning_zeroes_the_smallest_share_of_each_matrix(deep_bert_dir):
    model = _classifier(deep_bert_dir)
    masks = sparsity.prune_by_magnitude(model, 0.8)
    assert len(masks) == 4 * 6 + 1  # q, k, v, o, FFN in, FFN out per layer; the pooler
    assert abs(sparsity.measured_sparsity(model) - 0.8) < 1e-3
    variable, mask = masks[0]
    variable.assign(variable + 1.0)  # what an optimizer step does to every entry
    sparsity.HoldSparsity(masks).on_train_batch_end(0)
    assert np.all(np.asarray(variable)[mask == 0] == 0)


def test_a_sparse_model_exports_a_smaller_gated_sparse_tflite_and_a_dense_one_skips_it(
        deep_bert_dir, tmp_path):
    from tfmp.export import export_classifier, format_table
    from tfmp.export.tflite import TFLiteClassifier

    labels, names = [0, 1, 2, 0, 1, 2, 0, 1], ["a", "b", "c"]
    wanted = ["tflite_sparse"]
    model = _classifier(deep_bert_dir)
    dense = export_classifier(model, names, TEXTS, labels, str(tmp_path / "dense"),
                              variants=wanted)
    # No pruned zeros: nothing written, the reason in the report and the table.
    assert "--sparsity" in dense["skipped"]["tflite_sparse"]
    assert dense["variants"].keys() == {"tflite_fp32"}  # its size reference, still exported
    assert not (tmp_path / "dense" / "tflite" / "model_sparse.tflite").exists()
    assert "tflite_sparse   skipped" in format_table(dense)
    sparsity.prune_by_magnitude(model, 0.8)  # what `tfmp compress --sparsity 0.8` starts from
    report = export_classifier(model, names, TEXTS, labels, str(tmp_path / "sparse"),
                               variants=wanted)
    rows = report["variants"]
    assert report["passed"] and report["skipped"] == {}
    assert rows["tflite_sparse"]["passed"], rows
    assert (tmp_path / "sparse" / "tflite" / "model_sparse.tflite").is_file()
    # A lossless re-encoding: every argmax, the plain file's probabilities to 1e-5.
    assert rows["tflite_sparse"]["argmax_agreement"] == 1.0
    tokens = {k: np.asarray(v, np.int32) for k, v in _tokens(model).items()}
    plain, sparse = (TFLiteClassifier(str(tmp_path / "sparse" / "tflite" / f)).predict(tokens)
                     for f in ("model_fp32.tflite", "model_sparse.tflite"))
    np.testing.assert_allclose(sparse, plain, atol=1e-5, rtol=0)
    # At most 0.9x the bytes of the plain float32 file (measured on this tiny BERT: 0.60x,
    # 136,652 against 227,908 bytes; the size gate itself is off under 1 MB).
    size = {name: rows[name]["size_bytes"] for name in rows}
    print("bytes:", size)
    assert size["tflite_sparse"] <= 0.9 * size["tflite_fp32"], size


# --- Whole compressions of the session's finished run ---------------------------------


def _compress_cli(capsys, *argv):
    code = cli.main(["compress", *map(str, argv), "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--keep-layers", ","], "keeps no layer"),
    (["--ffn-keep", "0"], "(0, 1]"),
    (["--heads-keep", "1.5"], "(0, 1]"),
    (["--keep-layers", "0,2"], "2 is out of range; the teacher has 2 layers"),
    (["--drop-layers", "2"], "would keep no layer"),
    (["--keep-layers", "0", "--drop-layers", "1"], "not both"),
    (["--hidden-weight", "-1"], "--hidden-weight must be 0 or more"),
    (["--seed", "-3"], "--seed must be a whole number"),
    (["--transfer-examples", "-1"], "--transfer-examples must be a whole number"),
    (["--transfer-examples", "5"], "there are only 0 training-split texts the teacher left"),
    (["--transfer-examples", "5", "--distil-weight", "0"], "they teach nothing"),
    (["--transfer-examples", "5", "--transfer-data", "missing.csv"], "--transfer-data: "),
])
def test_bad_options_exit_2_with_a_clear_message_and_write_nothing(
        float32_run, tmp_path, capsys, flags, message):
    out = tmp_path / "student"
    code, err = _compress_cli(capsys, float32_run.run_dir, "--out", out, *flags)
    assert code == 2 and message in err, err
    assert os.listdir(tmp_path) == []


def test_an_unfinished_teacher_is_refused(float32_run, tmp_path, capsys):
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(float32_run.run_dir, unfinished)
    os.remove(unfinished / files.MARKER)
    code, err = _compress_cli(capsys, unfinished, "--out", tmp_path / "student")
    assert code == 2 and "is not a finished tfmp run" in err, err
    assert not (tmp_path / "student").exists()


@pytest.fixture(scope="module")
def compressed(float32_run, tmp_path_factory):
    """(run directory, transfer data) of one `tfmp compress` of the session's float32 run:
    layer 1 only, half its FFN neurons and heads, 2 epochs, 40 transfer texts. Read by
    the two tests below: one compression serves both (each is a whole training run)."""
    root = tmp_path_factory.mktemp("compressed")
    extra = write_sentiment_csv(root / "more.csv", n=200, seed=11)
    out = root / "student"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["compress", float32_run.run_dir, "--out", str(out), "--keep-layers",
                         "1", "--ffn-keep", "0.5", "--heads-keep", "0.5", "--epochs", "2",
                         "--transfer-examples", "40", "--transfer-data", extra, "--quiet"])
    assert code == 0, err.getvalue()
    return out, extra


@pytest.mark.slow
def test_a_compressed_run_is_a_run_directory_that_exports(compressed, tmp_path, capsys):
    out = compressed[0]
    assert files.is_complete(out)
    for name in ("config.json", "metrics.json", "history.json", "report.json", "model.keras",
                 "logs"):
        assert (out / name).exists(), name
    record = json.loads((out / "config.json").read_text())["compress"]
    assert record["plan"]["keep_layers"] == [1]
    assert record["parameters"]["student"] < record["parameters"]["teacher"]
    assert not (out / "checkpoints").exists()
    student = models.load_model(str(out))
    assert student.backbone.num_layers == 1 and student.backbone.num_heads == 1
    code = cli.main(["export", str(out), "--out-root", str(tmp_path / "exports"),
                     "--variants", "savedmodel_fp32,tflite_fp32,savedmodel_fp16w,keras_fp16w",
                     "--max-examples", "16"])
    assert code == 0, capsys.readouterr().err
    exported = tmp_path / "exports" / "student"
    report = json.loads((exported / "export_report.json").read_text())
    assert report["passed"] and all(v["passed"] for v in report["variants"].values()), report
    # float16 variables: half the bytes of the float32 ones (5% for the index and names).
    def variables(savedmodel):
        return sum(p.stat().st_size for p in (savedmodel / "variables").glob("variables.data*"))
    ratio = variables(exported / "fp16_weights" / "serving" / "1") / variables(
        exported / "serving" / "1")
    assert 0.45 <= ratio <= 0.55, ratio
    # The Hugging Face format has no pruned heads: refused, with what to do instead.
    code = cli.main(["export", str(out), "--out-root", str(tmp_path / "hf"), "--variants", "hf"])
    assert code == 2 and "--variants" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "student").exists()


@pytest.mark.slow
def test_a_transfer_set_joins_the_training_split_and_is_recorded(float32_run, compressed):
    out, extra = compressed
    saved = json.loads((out / "config.json").read_text())
    teacher = json.loads((Path(float32_run.run_dir) / "config.json").read_text())
    assert saved["compress"]["transfer"] == {"examples": 40, "source": extra,
                                             "labelled_examples": 288}
    splits, before = saved["data"]["splits"], teacher["data"]["splits"]
    assert splits["train"] == before["train"] + 40
    assert (splits["validation"], splits["test"]) == (before["validation"], before["test"])
    assert saved["data"]["test_indices"] == teacher["data"]["test_indices"]
    assert saved["optimizer"]["steps_per_epoch"] == -(-(288 + 40) // teacher["config"]["batch_size"])


def _run_compress(argv, env):
    return subprocess.Popen([sys.executable, "-m", "tfmp", "compress", *argv, "--quiet"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_a_compression_killed_with_sigkill_resumes_to_the_same_model(float32_run, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    # With a transfer set: its texts and their place in the batches are the same on resume.
    extra = write_sentiment_csv(tmp_path / "more.csv", n=200, seed=11)
    # 64 importance examples (2 batches, not all 288): the plan is measured by the killed
    # and the whole run, and only needs to be the same in both.
    argv = [float32_run.run_dir, "--drop-layers", "1", "--ffn-keep", "0.5", "--sparsity",
            "0.5", "--epochs", "2", "--checkpoint-every", "4", "--hidden-weight", "1",
            "--seed", "5", "--transfer-examples", "40", "--transfer-data", extra,
            "--importance-examples", "64"]
    killed = _run_compress(argv + ["--out", str(tmp_path / "killed")], env)
    checkpoints = tmp_path / "killed.partial" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "latest").exists() and killed.poll() is None:
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not files.is_complete(tmp_path / "killed")
    # `tfmp train --resume` would rebuild the teacher's architecture: refused, saying how.
    code = cli.main(["train", "--resume", str(tmp_path / "killed"), "--quiet"])
    assert code == 2
    resumed = _run_compress(argv + ["--out", str(tmp_path / "killed")], env)
    whole = _run_compress(argv + ["--out", str(tmp_path / "whole")], env)
    for process in (resumed, whole):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    a = models.load_model(str(tmp_path / "killed"))
    b = models.load_model(str(tmp_path / "whole"))
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] > 0
    assert sparsity.measured_sparsity(a) >= 0.5 - 1e-3


@pytest.mark.slow
def test_a_mixed_float16_teacher_gives_a_loss_scaled_distilled_student(mixed_float16_run, tmp_path):
    from tfmp.compress import CompressConfig, compress

    result = compress(CompressConfig(teacher=mixed_float16_run.run_dir, out=str(tmp_path / "s"),
                                     keep_layers=(1,), heads_keep=0.5, epochs=1,
                                     hidden_weight=1.0), verbose=0)
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert saved["policy"]["name"] == "mixed_float16"
    assert saved["optimizer"]["loss_scale_optimizer"] is True
    assert result.model.backbone.dtype_policy.name == "mixed_float16"
    assert result.model.get_layer("logits").compute_dtype == "float32"
    history = json.loads((tmp_path / "s" / "history.json").read_text())
    assert all(np.isfinite(history["loss"])) and all(np.isfinite(history["val_loss"]))


@pytest.mark.slow
def test_hidden_state_distillation_pulls_the_students_states_to_the_teachers(
        float32_run, tmp_path):
    from tfmp.compress import CompressConfig, compress

    from tfmp.config import TrainConfig

    saved = json.loads((Path(float32_run.run_dir) / "config.json").read_text())["config"]
    texts = data.prepare_data(TrainConfig.from_json(saved))[2].train.texts
    teacher = models.load_model(float32_run.run_dir)
    distances = {}
    for weight in (0.0, 10.0):
        result = compress(CompressConfig(
            teacher=float32_run.run_dir, out=str(tmp_path / f"w{weight}"), keep_layers=(0,),
            ffn_keep=0.25, distil_weight=0.0, hidden_weight=weight, epochs=3, seed=1),
            verbose=0)
        record = json.loads((tmp_path / f"w{weight}" / "config.json").read_text())["compress"]
        assert record["options"]["hidden_weight"] == weight
        table = hidden.teacher_states(teacher, texts, (0,))
        student = hidden.teacher_states(result.model, texts, (0,))
        distances[weight] = float(np.mean((student - table) ** 2))
    # Labels alone move the state away from the teacher's; the hidden loss holds it close.
    assert distances[10.0] < 0.5 * distances[0.0], distances
