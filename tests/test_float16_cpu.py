"""mixed_float16 on CPUs without float16 arithmetic: float16 in and out, float32 products.

Tolerances. float16 keeps 11 significant bits (relative rounding 2^-11, about 4.9e-4 per
operation); through the tiny BERT (embeddings, layer norms, 4 projections, attention and
feed-forward per layer, 2 layers) a few dozen roundings add up to about 1e-3 relative
(measured: logits 1.2e-3, the worst gradient 2e-3). So the float16 models are held to
the float32 one within RTOL = 1e-2 relative Frobenius error, on logits and on each
gradient. A gradient that is zero in exact arithmetic (the key bias: softmax ignores a
shift) is float16 rounding noise, so each gradient's error is measured against at least
1% of the global gradient norm. The emulated and the native float16 models round the
same products once each but accumulate in another order: held to each other alike.
"""

import keras
import numpy as np
import pytest

from tfmp import float16_cpu, models, precision
from tfmp.hardware import Hardware

RTOL = 1e-2
SEQ = 16
LOSS_SCALE = 2.0**12


def _inputs(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, SEQ), "int32")
    mask[:, SEQ // 2:] = rng.integers(0, 2, (batch, SEQ - SEQ // 2))  # some padding
    mask = np.sort(mask, axis=1)[:, ::-1].copy()
    return {"token_ids": rng.integers(5, 90, (batch, SEQ)).astype("int32") * mask,
            "segment_ids": np.zeros((batch, SEQ), "int32"), "padding_mask": mask}


def _assert_close(value, reference, size):
    assert value.dtype == np.float32 and np.all(np.isfinite(value))
    assert np.linalg.norm(value - reference) <= RTOL * size


def _logits_and_grads(model, x, labels):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        logits = model(x, training=False)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
        # Scaled as the loss-scale optimizer does: unscaled, the smallest gradients
        # here (about 1e-8) would be float16 subnormals or zero.
        loss = loss * LOSS_SCALE
    grads = tape.gradient(loss, model.trainable_variables)
    return (np.asarray(logits, "float32"),
            [np.asarray(tf.convert_to_tensor(g), "float32") / LOSS_SCALE for g in grads])


@pytest.fixture(scope="module")
def three_models(tiny_bert_dir):
    """float32 reference, mixed_float16 emulated, mixed_float16 native: same weights."""
    reference = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=SEQ,
                                       policy="float32")
    emulated = models.rebuild(reference, "mixed_float16")
    native = models.rebuild(reference, "mixed_float16")
    assert float16_cpu.use_float16_cpu(emulated) > 0
    return reference, emulated, native


def test_emulated_float16_matches_float32_and_native_float16(three_models):
    reference, emulated, native = three_models
    # Every float16 product is swapped: 2 layers x (q, k, v, output, attention,
    # intermediate, output dense) + pooler; the float32 logits Dense is not.
    swapped = [l for l in emulated._flatten_layers() if type(l) in float16_cpu._ORIGINAL]
    assert len(swapped) == 2 * 7 + 1
    assert type(emulated.get_layer("logits")) not in float16_cpu._ORIGINAL
    x, labels = _inputs(), np.array([0, 1, 2, 1])
    results = {id(m): _logits_and_grads(m, x, labels) for m in three_models}
    for model, against in ((emulated, reference), (native, reference), (emulated, native)):
        logits, grads = results[id(model)]
        ref_logits, ref_grads = results[id(against)]
        _assert_close(logits, ref_logits, np.linalg.norm(ref_logits))
        floor = 0.01 * np.sqrt(sum(np.sum(r**2) for r in ref_grads))
        for g, r in zip(grads, ref_grads):
            _assert_close(g, r, max(np.linalg.norm(r), floor))


def _dense(emulate):
    layer = keras.layers.Dense(1, use_bias=False, dtype="mixed_float16")
    layer.build((None, 2))
    if emulate:
        float16_cpu.use_float16_cpu(keras.Sequential([keras.Input((2,)), layer]))
        assert type(layer) is not keras.layers.Dense
    return layer


@pytest.mark.parametrize("emulate", [True, False])
def test_products_use_the_float16_weight_and_overflow_to_inf(emulate):
    layer = _dense(emulate)
    # 1 + 2^-12 rounds to 1 in float16: with the float16 weight (as on a GPU) x.w is 0,
    # with the float32 master weight it would be 2^-12.
    layer.kernel.assign([[1 + 2**-12], [1.0]])
    assert float(layer(np.array([[1.0, -1.0]], "float16"))[0, 0]) == 0.0
    # 256 * 256 + 256 = 65792 > 65504: float16 output overflows to inf, as on a GPU.
    layer.kernel.assign([[256.0], [1.0]])
    out = layer(np.array([[256.0, 256.0]], "float16"))
    assert out.dtype == "float16" and np.isposinf(float(out[0, 0]))


def test_a_layer_pinned_to_float32_after_the_swap_computes_in_float32():
    layer = _dense(emulate=True)
    layer.kernel.assign([[1 + 2**-12], [1.0]])
    layer.dtype_policy = keras.DTypePolicy("float32")  # what precision.pin_float32 does
    out = layer(np.array([[1.0, -1.0]], "float32"))
    assert out.dtype == "float32" and float(out[0, 0]) == 2**-12  # the float32 weight


@pytest.mark.parametrize("emulate", [True, False])
def test_overflowing_step_is_skipped_by_the_loss_scale_optimizer(tiny_bert_dir, emulate):
    from keras_hub.layers import TransformerEncoder

    from tfmp.config import TrainConfig
    from tfmp.optimizer import build_optimizer

    policy = precision.resolve("mixed_float16")
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=SEQ,
                                   policy=policy)
    float16_cpu.use_float16_cpu(model, on=emulate)
    encoder = next(l for l in model._flatten_layers() if isinstance(l, TransformerEncoder))
    # Every feature 100 after the attention block, every weight 100: the feed-forward
    # product is 32 x 100 x 100 = 320000 > 65504, so inf in float16 (fine in float32).
    encoder._self_attention_layer_norm.beta.assign(np.full([32], 100.0, "float32"))
    intermediate = encoder._feedforward_intermediate_dense
    intermediate.kernel.assign(np.full(intermediate.kernel.shape, 100.0, "float32"))
    assert (type(intermediate) in float16_cpu._ORIGINAL) is emulate
    model.compile(optimizer=build_optimizer(policy, total_steps=10, config=TrainConfig()),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  auto_scale_loss=False)
    x, labels = _inputs(), np.array([0, 1, 2, 1])
    model.train_step((x, labels))  # builds the optimizer: that step is skipped too
    before = [np.array(v) for v in model.trainable_variables]
    scale = float(model.optimizer.dynamic_scale)
    model.train_step((x, labels))
    assert float(model.optimizer.dynamic_scale) == scale / 2  # dynamic loss scale halved
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(np.array(v), b)  # step skipped: no weight moved
    assert int(model.optimizer.inner_optimizer.iterations) == 0


def test_transform_is_training_only_and_absent_from_saved_files(tiny_bert_dir, tmp_path):
    from tfmp.config import TrainConfig
    from tfmp.train import compile_classifier

    policy = precision.resolve("mixed_float16")
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=SEQ,
                                   policy=policy)
    plain_config = model.get_config()
    # Inference transforms only at construction: the fp16 export keeps native products.
    assert not [l for l in model._flatten_layers() if type(l) in float16_cpu._ORIGINAL]
    compile_classifier(model, policy, total_steps=2, config=TrainConfig())
    if precision.emulate_float16(policy):
        assert [l for l in model._flatten_layers() if type(l) in float16_cpu._ORIGINAL]
    x = _inputs()
    before = np.asarray(model(x), "float32")
    path = str(tmp_path / "m.keras")
    models.save_inference_model(model, path)
    loaded = keras.saving.load_model(path)
    assert model.get_config() == plain_config == loaded.get_config()
    assert not [l for l in loaded._flatten_layers() if type(l) in float16_cpu._ORIGINAL]
    np.testing.assert_allclose(np.asarray(loaded(x), "float32"), before, atol=1e-3)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_float32_and_bfloat16_models_are_never_touched(tiny_bert_dir, policy):
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=SEQ,
                                   policy=policy)
    cpu = Hardware(cpu_flags=frozenset({"avx512f"}))
    assert float16_cpu.emulate_float16_products(model, hardware=cpu) == 0
    assert float16_cpu.use_float16_cpu(model) == 0  # not even when asked: no float16 layer


def test_emulate_float16_decision():
    plain_cpu = Hardware(cpu_flags=frozenset({"avx512f", "avx512_bf16"}))
    assert precision.emulate_float16("mixed_float16", plain_cpu)
    assert precision.emulate_float16(precision.resolve("mixed_float16"), plain_cpu)
    for policy in ("float32", "mixed_bfloat16"):
        assert not precision.emulate_float16(policy, plain_cpu)
    for flag in ("avx512_fp16", "amx_fp16"):  # the CPU has float16 arithmetic
        assert not precision.emulate_float16(
            "mixed_float16", Hardware(cpu_flags=frozenset({"avx512f", flag})))
    gpu = Hardware(gpus=(("T4", (7, 5)),), cpu_flags=plain_cpu.cpu_flags)
    assert not precision.emulate_float16("mixed_float16", gpu)
    assert not precision.emulate_float16("mixed_float16", Hardware(tpu=True))
