import keras
import numpy as np
import pytest

from tfmp import accumulate, data, models, optimizer, precision
from tfmp.config import TrainConfig
from tfmp.errors import UserError
from tfmp.train import compile_classifier


def test_micro_batches_split_evenly_and_are_never_empty():
    def sizes(rows, steps):
        count, bounds = accumulate.micro_bounds(rows, steps)
        return [bounds(i)[1] - bounds(i)[0] for i in range(count)]

    assert sizes(32, 4) == [8, 8, 8, 8]
    assert sizes(14, 4) == [3, 4, 3, 4]  # a last partial batch
    assert sizes(3, 4) == [1, 1, 1]


def _texts(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["great", "awful", "seat", "the", "my", "flight", "crew", "late", "thanks"]
    # Every text past 16 tokens: one batch width, one trace of the training step.
    texts = [" ".join(rng.choice(words, rng.integers(16, 24))) for _ in range(n)]
    return data.Split(texts, rng.integers(0, 3, n).astype("int32"))


def _trained(model_dir, grad_accum, split):
    """A tiny BERT without dropout, trained by tfmp's AdamW on `split` in batches of 32."""
    keras.utils.set_random_seed(0)
    model = models.load_classifier(model_dir, num_classes=3, sequence_length=16,
                                   policy="float32", dropout=0.0)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0  # the backbone's too: micro-batches draw other masks
    config = TrainConfig(lr=1e-3, grad_accum=grad_accum, batch_size=32)
    compile_classifier(model, precision.resolve("float32"), total_steps=10, config=config)
    accumulate.install(model, grad_accum)
    initial = model.get_weights()
    norms = []
    norm_log = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: norms.append(
        float(model.optimizer.grad_norm.numpy())))
    model.fit(data.make_dataset(split, None, 32), epochs=1, shuffle=False, verbose=0,
              callbacks=[norm_log])
    return model, norms, initial


@pytest.mark.slow  # two tiny-BERT fits: ~20 s alone, 60 s on a loaded machine
def test_grad_accum_4_of_8_matches_batch_32_in_float32(tiny_bert_dir):
    split = _texts(96)  # three batches of 32 (uneven ones: the next test)
    plain, plain_norms, initial = _trained(tiny_bert_dir, 1, split)
    accumulated, norms, _ = _trained(tiny_bert_dir, 4, split)
    assert int(plain.optimizer.iterations) == int(accumulated.optimizer.iterations) == 3
    # Adam hides a wrongly scaled gradient (m / sqrt(v)); the gradient's norm does not:
    # the micro-batches' weighted sum is the batch's mean-loss gradient.
    np.testing.assert_allclose(norms, plain_norms, rtol=1e-5)
    moved = max(np.abs(a - b).max() for a, b in zip(plain.get_weights(), initial))
    assert moved > 1e-3  # the comparison below could fail
    for a, b in zip(plain.get_weights(), accumulated.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_a_last_partial_batch_is_weighted_by_rows_not_micro_batches():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(46, 4)).astype("float32"), rng.integers(0, 3, 46)
    models_ = []
    for steps in (1, 4):  # batches of 32 and 14; 14 runs as 3 + 4 + 3 + 4
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        # Plain SGD: a step proportional to the gradient, so any misweighting shows.
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.
                      SparseCategoricalCrossentropy(from_logits=True))
        accumulate.install(model, steps)
        model.fit(x, y, batch_size=32, shuffle=False, verbose=0)
        models_.append(model)
    for a, b in zip(*(m.get_weights() for m in models_)):
        np.testing.assert_allclose(b, a, atol=1e-6)


def _dense_model(scaled_optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, dtype="mixed_float16")])
    model.compile(optimizer=scaled_optimizer, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), auto_scale_loss=False)
    return model


def _batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.integers(0, 3, 64).astype("int32")
    x[8:16] = 1e5  # second micro-batch of the first batch: inf in float16
    return x, y


def test_overflow_in_one_micro_batch_skips_the_whole_step_and_halves_the_scale_once():
    x, y = _batches()
    config = TrainConfig(initial_loss_scale=1024.0)
    policy = precision.resolve("mixed_float16")
    model = _dense_model(optimizer.build_optimizer(policy, total_steps=10, config=config))
    accumulate.install(model, 4)
    model.optimizer.build(model.trainable_variables)
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x[:32], y[:32])
    opt = model.optimizer
    assert optimizer.loss_scale_state(opt) == {"loss_scale": 512.0, "skipped_steps": 1,
                                               "iterations": 0}
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # no micro-batch's gradient was applied
    np.testing.assert_array_equal(opt.inner_optimizer._momentums[0].numpy(), 0.0)
    # The next batch is a whole, clean step, as it is without accumulation.
    model.train_on_batch(x[32:], y[32:])
    reference = _dense_model(optimizer.build_optimizer(policy, total_steps=10, config=config))
    reference.train_on_batch(x[:32], y[:32])
    reference.train_on_batch(x[32:], y[32:])
    assert optimizer.loss_scale_state(opt) == optimizer.loss_scale_state(reference.optimizer)
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-6)
    assert np.abs(model.get_weights()[0] - before[0]).max() > 2e-5  # AdamW's first step: lr


def test_keras_accumulation_under_a_loss_scale_drops_only_the_overflowing_micro_batch():
    # Why tfmp does not use Keras' `gradient_accumulation_steps` (tfmp/accumulate.py):
    # its LossScaleOptimizer checks each micro-batch alone, so the first batch's
    # overflow is skipped by itself and its step later takes a micro-batch of the next.
    x, y = _batches()
    inner = keras.optimizers.AdamW(learning_rate=0.1, gradient_accumulation_steps=4)
    model = _dense_model(keras.optimizers.LossScaleOptimizer(inner, initial_scale=1024.0))
    before = [w.copy() for w in model.get_weights()]
    for start in range(0, 32, 8):  # the first batch's four micro-batches of 8
        model.train_on_batch(x[start:start + 8], y[start:start + 8])
    assert float(model.optimizer.dynamic_scale.numpy()) == 512.0
    assert int(inner._iterations.numpy()) == 3  # one micro-batch still to come
    np.testing.assert_array_equal(before[0], model.get_weights()[0])
    model.train_on_batch(x[32:40], y[32:40])  # the next batch's first micro-batch
    assert np.abs(model.get_weights()[0] - before[0]).max() > 0  # ... completes the step


def test_install_refuses_a_model_with_its_own_train_step():
    class Custom(keras.Model):
        def train_step(self, data):
            return {}

    with pytest.raises(UserError, match="own train_step"):
        accumulate.install(Custom(), 2)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert accumulate.install(model, 1) is model and "train_step" not in vars(model)


def test_grad_accum_must_fit_in_the_batch():
    with pytest.raises(UserError, match="--grad-accum must be between 1 and --batch-size"):
        TrainConfig(batch_size=4, grad_accum=8).validate()
    with pytest.raises(UserError, match="--grad-accum"):
        TrainConfig(grad_accum=0).validate()
    TrainConfig(batch_size=8, grad_accum=8).validate()
