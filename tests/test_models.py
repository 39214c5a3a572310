import os
import shutil

import keras
import numpy as np
import pytest

from tfmp import models, precision
from tfmp.export import huggingface as hf
from tfmp.errors import InputError

TEXTS = ["the flight was great thanks", "worst delay ever, rude crew", "seat 12"]


@pytest.fixture(scope="module")
def classifiers(tiny_bert_dir):
    return {name: models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                         policy=name)
            for name in precision.POLICIES}


@pytest.mark.parametrize("name", precision.POLICIES)
def test_every_policy_computes_in_its_dtype_keeps_float32_variables_and_logits(classifiers, name):
    model = classifiers[name]
    compute = keras.DTypePolicy(name).compute_dtype
    x = model.preprocessor(TEXTS)
    outputs = model.backbone(x)
    assert outputs["sequence_output"].dtype == compute
    assert outputs["pooled_output"].dtype == compute
    assert all(v.dtype == "float32" for v in model.weights)
    logits = model(x)
    assert logits.dtype == "float32" and tuple(logits.shape) == (3, 3)
    assert model.predict(TEXTS, verbose=0).dtype == np.float32


def test_building_a_classifier_leaves_the_global_policy_alone(tiny_bert_dir):
    keras.mixed_precision.set_global_policy("float32")
    models.load_classifier(tiny_bert_dir, num_classes=2, sequence_length=16,
                           policy="mixed_float16")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_padding_is_trimmed_per_batch_without_changing_logits(classifiers):
    model = classifiers["float32"]
    x, _, _ = keras.utils.unpack_x_y_sample_weight(model.preprocess_samples(
        np.array(["great", "worst delay"])))
    # [CLS] worst delay [SEP] is the longest: 4 tokens, not --seq-len 16.
    assert x["token_ids"].shape == (2, 4)
    full = model.preprocessor(["great", "worst delay"])
    np.testing.assert_allclose(model(x), model(full), atol=1e-5)


def test_preprocessor_pads_to_the_run_sequence_length_not_the_presets(tiny_bert_dir):
    model = models.load_classifier(tiny_bert_dir, num_classes=2, sequence_length=24)
    assert model.preprocessor.sequence_length == 24
    assert model.preprocessor(["hello"])["token_ids"].shape == (1, 24)


def test_rebuild_float32_copies_weights_and_matches(classifiers):
    model = classifiers["mixed_float16"]
    clone = models.rebuild_float32(model)
    assert clone.backbone.dtype_policy.name == "float32"
    assert all(l.dtype_policy.name == "float32" for l in clone.backbone.layers)
    x = model.preprocessor(TEXTS)
    # float16 compute vs float32: a tiny BERT's logits agree to float16 precision.
    np.testing.assert_allclose(model(x), clone(x), atol=2e-3)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "vocab.txt"])
def test_checkpoint_dir_missing_a_file_names_it(tiny_bert_dir, tmp_path, missing):
    broken = shutil.copytree(tiny_bert_dir, tmp_path / "ckpt")
    os.remove(broken / missing)
    with pytest.raises(InputError, match=f"missing {missing}"):
        models.load_classifier(str(broken), num_classes=2)


def test_pytorch_bin_without_safetensors_says_how_to_convert(tiny_bert_dir, tmp_path):
    broken = shutil.copytree(tiny_bert_dir, tmp_path / "ckpt")
    os.rename(broken / "model.safetensors", broken / "pytorch_model.bin")
    with pytest.raises(InputError, match="safe_serialization=True"):
        models.check_checkpoint_dir(broken)


def test_non_bert_model_type_and_missing_dir_are_refused(tiny_bert_dir, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        models.load_classifier(str(tmp_path / "nope"), num_classes=2)
    gpt = shutil.copytree(tiny_bert_dir, tmp_path / "gpt")
    (gpt / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(InputError, match="model_type='gpt2'"):
        models.load_classifier(str(gpt), num_classes=2)


def test_sequence_length_beyond_position_table_is_refused(tiny_bert_dir):
    with pytest.raises(InputError, match="--seq-len 65 exceeds the 64 positions"):
        models.load_classifier(tiny_bert_dir, num_classes=2, sequence_length=65)


def test_saved_model_keras_reloads_in_safe_mode_with_same_outputs(classifiers, tmp_path):
    model = classifiers["mixed_bfloat16"]
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, models.BertClassifier)
    np.testing.assert_array_equal(model.predict(TEXTS, verbose=0),
                                  loaded.predict(TEXTS, verbose=0))


@pytest.mark.slow
def test_real_minilm_loads_with_run_sequence_length_and_hf_round_trip_is_exact(tmp_path):
    model = models.load_classifier(num_classes=3, sequence_length=64, policy="float32")
    assert model.preprocessor.sequence_length == 64
    assert model.backbone.count_params() == 22_713_216  # all-MiniLM-L6-v2
    # Tokenization is the checkpoint's uncased WordPiece.
    ids = model.preprocessor(["Hello @united"])["token_ids"][0, :6].numpy().tolist()
    assert ids[:2] == [101, 7592] and 102 in ids
    # Writing the backbone back in Hugging Face format and reloading it is lossless.
    vocab = os.path.join(models.default_model_dir(), "vocab.txt")
    hf.save_checkpoint(model.backbone, vocab, str(tmp_path / "copy"))
    again = models.load_classifier(str(tmp_path / "copy"), num_classes=3, sequence_length=64,
                                   policy="float32")
    x = model.preprocessor(TEXTS)
    np.testing.assert_array_equal(model.backbone(x)["sequence_output"],
                                  again.backbone(x)["sequence_output"])


def test_float32_pins_from_the_policy_apply_to_those_layers_only(tiny_bert_dir):
    policy = precision.resolve("mixed_float16",
                               float32_layers=("bert_backbone/transformer_layer_1",))
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy=policy)
    block1 = model.backbone.get_layer("transformer_layer_1")
    block0 = model.backbone.get_layer("transformer_layer_0")
    assert block1.compute_dtype == "float32"
    assert block0.compute_dtype == "float16"
    x = model.preprocessor(TEXTS)
    assert block1(block0(model.backbone.get_layer("embeddings_layer_norm")(
        model.backbone.get_layer("token_embedding")(x["token_ids"])),
        padding_mask=x["padding_mask"]), padding_mask=x["padding_mask"]).dtype == "float32"
    # Rebuilding for serving keeps the pins; float32 rebuilds need none.
    assert models.rebuild(model, policy).backbone.get_layer(
        "transformer_layer_1").compute_dtype == "float32"


def test_inference_model_file_has_no_optimizer_and_same_outputs(tiny_bert_dir, tmp_path):
    from tfmp import optimizer as tfmp_optimizer

    policy = precision.resolve("mixed_float16")
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy=policy)
    model.compile(optimizer=tfmp_optimizer.build_optimizer(policy, total_steps=4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  auto_scale_loss=False)
    model.fit(TEXTS, np.array([0, 1, 2]), batch_size=3, verbose=0)
    models.save_inference_model(model, tmp_path / "slim.keras")
    model.save(tmp_path / "full.keras")
    # Weights only: the full file also holds AdamW's two slots (twice, under float16).
    assert os.path.getsize(tmp_path / "slim.keras") < 0.5 * os.path.getsize(
        tmp_path / "full.keras")
    assert model.optimizer is not None  # restored after saving
    loaded = keras.saving.load_model(tmp_path / "slim.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(TEXTS, verbose=0),
                                  model.predict(TEXTS, verbose=0))
