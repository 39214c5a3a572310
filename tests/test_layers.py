import keras
import numpy as np
import pytest

from tfmp import layers


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_dropout_keeps_share_scales_and_gradient_uses_same_mask(dtype):
    import tensorflow as tf

    layer = layers.FastDropout(0.1, seed=1, dtype=dtype)
    x = tf.ones([64, 128, 128], dtype)  # 1,048,576 elements
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") * 3.0)
    grad = tape.gradient(loss, x)
    y, grad = np.asarray(tf.cast(y, "float32")), np.asarray(tf.cast(grad, "float32"))
    kept = y != 0
    # Binomial(1M, 0.9): sd 0.0003, so 0.002 is > 6 sd.
    assert abs(kept.mean() - 0.9) < 0.002
    scale = float(tf.cast(tf.constant(1 / (1 - 6554 / 65536)), dtype))
    np.testing.assert_allclose(y[kept], scale, rtol=1e-6)
    # d(sum 3y)/dx = 3 * scale where kept, 0 where dropped: the forward mask.
    np.testing.assert_array_equal(grad != 0, kept)
    np.testing.assert_allclose(grad[kept], float(tf.cast(3.0 * scale, dtype)), rtol=1e-2)
    # The mask is not striped by the 16-bit halves: neighbours are independent.
    flat = kept.ravel()
    both = np.mean(flat[0::2] & flat[1::2])
    assert abs(both - 0.81) < 0.003


def test_fast_dropout_draws_new_masks_repeats_with_seed_and_is_identity_at_inference():
    x = np.ones([8, 1000], "float32")
    a, b = layers.FastDropout(0.5, seed=3), layers.FastDropout(0.5, seed=3)
    first, second = (keras.ops.convert_to_numpy(a(x, training=True)) for _ in range(2))
    assert (first != second).mean() > 0.3  # a new mask each call
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(b(x, training=True)), first)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a(x, training=False)), x)
    assert keras.ops.convert_to_numpy(layers.FastDropout(1.0)(x, training=True)).max() == 0


def test_classifier_uses_fast_dropout_everywhere_and_swaps_back(tiny_bert_dir, tmp_path):
    from tfmp import models

    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy="float32")
    kinds = [type(l) for l in model._flatten_layers() if isinstance(l, keras.layers.Dropout)]
    # Embeddings, pooled output, and 3 per transformer layer (2 layers in the tiny BERT).
    assert kinds == [layers.FastDropout] * len(kinds) and len(kinds) >= 8
    path = str(tmp_path / "m.keras")
    models.save_inference_model(model, path)
    loaded = keras.saving.load_model(path)
    assert all(type(l) is layers.FastDropout for l in loaded._flatten_layers()
               if isinstance(l, keras.layers.Dropout))
    assert layers.use_fast_dropout(model, fast=False) == len(kinds)
    assert not any(isinstance(l, layers.FastDropout) for l in model._flatten_layers())


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 2e-2), ("float16", 2e-3)])
def test_fused_gelu_matches_keras_hub_value_and_gradient(dtype, tol):
    import tensorflow as tf
    from keras_hub.src.utils.keras_utils import gelu_approximate

    x = tf.cast(tf.linspace(-6.0, 6.0, 4001), dtype)
    values, grads = [], []
    for fn in (gelu_approximate, layers.fused_gelu_approximate):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(tf.cast(y, "float32") * 1.5)
        values.append(np.asarray(tf.cast(y, "float32")))
        grads.append(np.asarray(tf.cast(tape.gradient(loss, x), "float32")))
        assert y.dtype == x.dtype
    # Values and slopes (1.5 * gelu'(x): down to -0.19 near x = -1.5, up to 1.69 near 1.5).
    np.testing.assert_allclose(values[1], values[0], atol=tol * 6, rtol=tol)
    np.testing.assert_allclose(grads[1], grads[0], atol=tol * 1.5, rtol=tol)
    assert grads[0].min() < -0.18 and grads[0].max() > 1.6


def test_fused_gelu_is_for_training_and_stays_out_of_saved_models(tiny_bert_dir, tmp_path):
    from keras_hub.src.utils.keras_utils import gelu_approximate

    from tfmp import models, precision
    from tfmp.config import TrainConfig
    from tfmp.train import compile_classifier

    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy="float32")
    dense = [l for l in model._flatten_layers() if isinstance(l, keras.layers.Dense)
             and l.activation is gelu_approximate]
    assert len(dense) == 2  # one feed-forward layer per transformer layer
    x = {"token_ids": np.ones((2, 16), "int32"), "segment_ids": np.zeros((2, 16), "int32"),
         "padding_mask": np.ones((2, 16), "int32")}
    before = keras.ops.convert_to_numpy(model(x))
    compile_classifier(model, precision.resolve("float32"), total_steps=2, config=TrainConfig())
    assert all(l.activation is layers.fused_gelu_approximate for l in dense)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), before, atol=1e-5)
    path = str(tmp_path / "m.keras")
    models.save_inference_model(model, path)
    loaded = keras.saving.load_model(path)
    assert [l.activation for l in loaded._flatten_layers() if isinstance(l, keras.layers.Dense)
            and "intermediate" in l.name] == [gelu_approximate] * 2
    assert layers.use_fused_gelu(model, fused=False) == 2
