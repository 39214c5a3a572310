"""LoRA (tfmp.lora): float32 adapters on a frozen base, their file, the merge, runs, int8 base."""

import json
import os
import signal

import keras
import numpy as np
import pytest

from conftest import RUN_SETTINGS, write_tiny_checkpoint
from tfmp import checkpoint_saver, cli, lora, models, precision
from tfmp.config import TrainConfig
from tfmp.errors import InputError, UserError
from tfmp.train import compile_classifier, train

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
TEXTS = ["@united the worst flight", "@united thanks a good seat", "@united plane today was",
         "@united rude crew and delayed", "@united love the help"]
# Two epochs of 18 steps; LoRA trains fewer weights, so a higher learning rate.
LORA_SETTINGS = dict(RUN_SETTINGS, epochs=2, lr=1e-2, lora_rank=4)


def _classifier(model_dir, policy="float32"):
    return models.load_classifier(model_dir, num_classes=3, sequence_length=16, policy=policy)


def _randomize_adapters(classifier, seed=0):
    rng = np.random.default_rng(seed)
    for v in classifier.trainable_weights:  # A, B and the head: B starts at zero
        v.assign(rng.normal(0, 0.2, v.shape).astype(np.float32))


@pytest.mark.parametrize("policy", POLICIES)
def test_adapters_are_float32_and_only_they_and_the_head_train(tiny_bert_dir, policy):
    classifier = _classifier(tiny_bert_dir, policy)
    layers = lora.enable(classifier, rank=4)
    assert sorted({layer.name for layer in layers}) == ["query", "value"] and len(layers) == 4
    for layer in layers:
        assert layer.lora_kernel_a.dtype == "float32" and layer.lora_kernel_b.dtype == "float32"
        assert layer._kernel.dtype == "float32" and not layer._kernel.trainable
        assert layer.compute_dtype == policy.replace("mixed_", "")
    trainable = sorted(v.path.rsplit("/", 1)[-1] for v in classifier.trainable_weights)
    assert trainable == ["bias", "kernel"] + ["lora_kernel_a"] * 4 + ["lora_kernel_b"] * 4
    d = lora.describe(classifier)
    # 4 layers x (32x2x4 + 4x16) adapter weights, plus the 32x3+3 head.
    assert d["adapter_parameters"] == 4 * (32 * 2 * 4 + 4 * 16)
    assert d["trainable_parameters"] == d["adapter_parameters"] + 32 * 3 + 3
    assert d["trainable_share"] == pytest.approx(d["trainable_parameters"] / d["total_parameters"])
    assert "LoRA: rank 4 on 4 layers" in lora.summary(classifier)


@pytest.mark.parametrize("policy,atol", [("float32", 1e-5), ("mixed_bfloat16", 3e-2)])
def test_merged_plain_model_predicts_like_the_adapted_one(tiny_bert_dir, policy, atol):
    classifier = _classifier(tiny_bert_dir, policy)
    lora.enable(classifier, rank=4, targets=("query", "value", "feedforward_output_dense"))
    _randomize_adapters(classifier)
    merged = models.rebuild(classifier, policy)
    assert not lora.adapted(merged)
    assert len(merged.weights) == len(_classifier(tiny_bert_dir).weights)
    layer = lora.adapted_layers(classifier)[0]
    merged_kernel = {w.path: w for w in merged.weights}[layer._kernel.path]
    np.testing.assert_allclose(  # W + (alpha/rank)·A·B, in float32
        merged_kernel.numpy(), layer._kernel.numpy() + np.matmul(layer.lora_kernel_a.numpy(),
                                          layer.lora_kernel_b.numpy()), rtol=1e-6, atol=1e-6)
    a = keras.ops.softmax(classifier.predict(TEXTS, verbose=0)).numpy()
    b = keras.ops.softmax(merged.predict(TEXTS, verbose=0)).numpy()
    np.testing.assert_allclose(a, b, atol=atol)


def test_adapters_file_round_trips_and_names_its_base(tiny_bert_dir, tmp_path):
    classifier = _classifier(tiny_bert_dir)
    lora.enable(classifier, rank=4)
    _randomize_adapters(classifier, seed=1)
    path = str(tmp_path / lora.ADAPTERS)
    record = lora.save_adapters(classifier, path, tiny_bert_dir)
    assert record["file_bytes"] == os.path.getsize(path) < 10_000
    fresh = _classifier(tiny_bert_dir)
    loaded = lora.load_adapters(fresh, path, model_dir=tiny_bert_dir)
    assert loaded["rank"] == 4 and loaded["base_sha256"] == record["base_sha256"]
    np.testing.assert_allclose(fresh.predict(TEXTS, verbose=0),
                               classifier.predict(TEXTS, verbose=0), atol=1e-6)
    other = write_tiny_checkpoint(tmp_path / "other", seed=3)
    with pytest.raises(InputError, match="model.safetensors differs"):
        lora.load_adapters(_classifier(other), path, model_dir=other)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a readable adapters file"):
        lora.load_adapters(fresh, str(tmp_path / "junk.safetensors"))


@pytest.mark.slow  # about 40 s on 2 shared cores
def test_int8_base_stays_frozen_while_adapters_train(tiny_bert_dir):
    classifier = _classifier(tiny_bert_dir, "mixed_bfloat16")
    lora.enable(classifier, rank=4, base_int8=True)
    base = {v.path: v.numpy().copy() for v in classifier.backbone.weights
            if "lora_kernel" not in v.path}
    assert sum(v.dtype == "int8" for v in classifier.backbone.weights) == 2 * 6 + 1
    config = TrainConfig(lr=1e-2, warmup_ratio=0.0)
    compile_classifier(classifier, precision.resolve("mixed_bfloat16"), 4, config)
    labels = np.array([0, 2, 1, 0, 2])
    classifier.fit(np.array(TEXTS), labels, batch_size=5, epochs=4, verbose=0)
    for v in classifier.backbone.weights:
        if "lora_kernel" not in v.path:
            np.testing.assert_array_equal(v.numpy(), base[v.path], err_msg=v.path)
    assert all(np.any(layer.lora_kernel_b.numpy() != 0)
               for layer in lora.adapted_layers(classifier))
    merged = models.rebuild(classifier, "float32")  # dequantized, merged, float32
    assert {v.dtype for v in merged.weights} == {"float32"}
    agree = np.mean(merged.predict(TEXTS, verbose=0).argmax(-1)
                    == classifier.predict(TEXTS, verbose=0).argmax(-1))
    assert agree >= 0.8


@pytest.mark.parametrize("args,words", [
    (["--lora-rank", "-1"], ["--lora-rank must be 0 (off) or more"]),
    (["--base-int8"], ["--base-int8", "--lora-rank R"]),
    (["--lora-rank", "4", "--lora-targets", "query,qkv"], ["qkv", "choose from", "value"]),
    (["--lora-rank", "40"], ["--lora-rank 40 exceeds", "16 or less"]),
])
def test_bad_lora_flags_exit_2_with_a_clear_message(capsys, sentiment_csv, tiny_bert_dir,
                                                    tmp_path, args, words):
    code = cli.main(["train", "--data", sentiment_csv, "--model", tiny_bert_dir, "--seq-len",
                     "16", "--out", str(tmp_path / "run"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not os.path.exists(tmp_path / "run")


# --- Whole runs (about 20-40 s each on 2 shared cores) --------------------------------------


@pytest.fixture(scope="module")
def lora_run(sentiment_csv, tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    return train(TrainConfig(data=sentiment_csv, model=tiny_bert_dir, policy="mixed_bfloat16",
                             out=str(out), **LORA_SETTINGS), verbose=0)


@pytest.mark.slow
def test_lora_run_writes_adapters_and_a_merged_model(lora_run, tiny_bert_dir):
    run_dir = lora_run.run_dir
    saved = json.load(open(os.path.join(run_dir, "config.json")))["lora"]
    assert saved["trainable_share"] < 0.06 and saved["file_bytes"] < 10_000
    assert saved["base_model_dir"] == os.path.abspath(tiny_bert_dir)
    assert os.path.isfile(os.path.join(run_dir, "adapters.safetensors"))
    assert os.listdir(os.path.join(run_dir, "logs"))  # TensorBoard
    assert "LoRA rank 4 on 4 layers (query, value)" in open(os.path.join(run_dir, "report.md")).read()
    loaded = models.load_model(run_dir)
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0),
                               lora_run.model.predict(TEXTS, verbose=0), atol=1e-5)
    # The base is untouched except the adapted kernels, which are W + A·B exactly.
    base = _classifier(tiny_bert_dir)
    adapted = _classifier(tiny_bert_dir)
    lora.load_adapters(adapted, os.path.join(run_dir, "adapters.safetensors"), tiny_bert_dir)
    lora.copy_weights(adapted, base)
    for a, b in zip(loaded.weights, base.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-7, err_msg=a.path)


@pytest.mark.slow
def test_lora_run_exports_through_the_parity_gate(lora_run, tmp_path):
    from tfmp import export

    report = export.export(lora_run.run_dir, out_root=str(tmp_path),
                           variants=["savedmodel_fp32", "tflite_fp32"])
    assert report["passed"]
    assert report["variants"]["tflite_fp32"]["argmax_agreement"] >= 0.999


@pytest.mark.slow
def test_interrupted_lora_run_resumes_to_the_same_adapters(lora_run, sentiment_csv,
                                                           tiny_bert_dir, tmp_path, monkeypatch):
    saver_end = checkpoint_saver.CheckpointSaver.on_train_batch_end

    def interrupt_at_step_23(self, batch, logs=None):
        saver_end(self, batch, logs)
        if int(self.model.optimizer.iterations.numpy()) == 23:
            os.kill(os.getpid(), signal.SIGINT)  # StopAtBatchEnd raises after the next step

    monkeypatch.setattr(checkpoint_saver.CheckpointSaver, "on_train_batch_end", interrupt_at_step_23)
    out = str(tmp_path / "run")
    config = TrainConfig(data=sentiment_csv, model=tiny_bert_dir, policy="mixed_bfloat16",
                         out=out, **LORA_SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        train(config, verbose=0)
    monkeypatch.setattr(checkpoint_saver.CheckpointSaver, "on_train_batch_end", saver_end)
    resumed = train(resume=out, verbose=0)
    assert resumed.metrics["accuracy"] == lora_run.metrics["accuracy"]
    for a, b in zip(resumed.model.weights, lora_run.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6, err_msg=a.path)


@pytest.mark.slow
def test_int8_base_run_trains_and_saves_a_float32_model(sentiment_csv, tiny_bert_dir, tmp_path):
    result = train(TrainConfig(data=sentiment_csv, model=tiny_bert_dir, policy="mixed_bfloat16",
                               out=str(tmp_path / "run"), base_int8=True, **LORA_SETTINGS),
                   verbose=0)
    saved = json.load(open(os.path.join(result.run_dir, "config.json")))["lora"]
    assert saved["base_int8"] and saved["trainable_share"] < 0.06
    loaded = models.load_model(result.run_dir)
    assert {v.dtype for v in loaded.weights} == {"float32"}
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0),
                               result.model.predict(TEXTS, verbose=0), atol=1e-5)


def test_config_round_trips_lora_fields(tmp_path):
    config = TrainConfig(lora_rank=8, lora_targets=("query", "key"), base_int8=True)
    back = TrainConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert back == config
    with pytest.raises(UserError, match="--lora-targets must name"):
        TrainConfig(lora_rank=8, lora_targets=()).validate()


@pytest.mark.slow  # a SavedModel export: about 20 s
def test_export_of_an_adapted_classifier_starts_from_the_merged_model(tiny_bert_dir, tmp_path):
    from tfmp.export import export_classifier

    classifier = _classifier(tiny_bert_dir)
    lora.enable(classifier, rank=4)
    _randomize_adapters(classifier, seed=2)
    report = export_classifier(classifier, ["negative", "neutral", "positive"], TEXTS,
                               [0, 2, 1, 0, 2], str(tmp_path / "export"),
                               variants=["savedmodel_fp32"])
    assert report["passed"]
    # The gate's reference is the merged float32 model; the adapted one agrees with it.
    assert report["keras"]["run_policy_max_probability_difference"] < 1e-5
    assert report["variants"]["savedmodel_fp32"]["max_probability_difference"] < 1e-5


@pytest.mark.slow  # about 30 s
def test_mixed_float16_lora_run_trains_under_the_loss_scale_and_is_monitored(
        sentiment_csv, tiny_bert_dir, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    result = train(TrainConfig(data=sentiment_csv, model=tiny_bert_dir, policy="mixed_float16",
                               out=str(tmp_path / "run"), lost_update_every=10,
                               headroom_every=10, **LORA_SETTINGS), verbose=0)
    state = result.metrics["optimizer"]
    assert state["iterations"] + state["skipped_steps"] == 36 and state["loss_scale"] >= 1
    saved = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert saved["optimizer"]["loss_scale_optimizer"]
    events = ea.EventAccumulator(os.path.join(result.run_dir, "logs", "train"),
                                 size_guidance={ea.TENSORS: 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    # Only what trains is measured: the adapters and the head, no frozen base kernel.
    lost = [t for t in tags if t.startswith("lost_updates/") and t != "lost_updates/all"]
    assert len(lost) == 4 * 2 + 2 and all("lora_kernel" in t or "logits" in t for t in lost)
    assert {"precision/loss_scale", "precision/headroom"} <= set(tags)
