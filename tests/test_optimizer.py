import keras
import numpy as np
import pytest

from tfmp import optimizer, precision
from tfmp.callbacks import LossScaleGuard
from tfmp.errors import TrainingStopped


def _variables():
    return [keras.Variable(np.ones((2, 2), "float32"), name="kernel"),
            keras.Variable(np.ones((2,), "float32"), name="bias")]


@pytest.mark.parametrize("name", precision.POLICIES)
def test_optimizer_is_wrapped_exactly_under_mixed_float16(name):
    opt = optimizer.build_optimizer(precision.resolve(name), total_steps=10)
    wrapped = isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert wrapped == (name == "mixed_float16")
    inner = opt.inner_optimizer if wrapped else opt
    assert isinstance(inner, keras.optimizers.AdamW)
    # Clipping belongs to the inner optimizer, which sees unscaled gradients.
    assert inner.global_clipnorm == 1.0


def test_warmup_then_linear_decay_values():
    schedule = optimizer.WarmupLinearDecay(peak=1.0, total_steps=10, warmup_steps=2)
    got = [float(schedule(s)) for s in (0, 1, 2, 6, 10, 20)]
    np.testing.assert_allclose(got, [0.5, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-7)
    clone = optimizer.WarmupLinearDecay.from_config(schedule.get_config())
    assert float(clone(6)) == pytest.approx(0.5)


def test_weight_decay_skips_biases_and_layer_norms(tiny_bert_dir):
    from tfmp import models

    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy="float32")
    opt = optimizer.build_optimizer(precision.resolve("float32"), total_steps=10)
    opt.build(model.trainable_variables)
    decayed = {v.path: opt._use_weight_decay(v) for v in model.trainable_variables}
    for v in model.trainable_variables:
        # The rule: kernels and embedding tables decay; biases (attention biases are
        # 2-D, (heads, head_dim)) and LayerNorm gamma/beta don't.
        assert decayed[v.path] == (v.name in ("kernel", "embeddings", "position_embeddings")), v.path
        if len(v.shape) == 1:
            assert not decayed[v.path], v.path
    assert any(decayed.values()) and not all(decayed.values())
    assert not decayed["embeddings_layer_norm/gamma"]


def _wrapped(initial_scale=400.0, growth=2000, min_scale=1.0, inner=None):
    inner = inner or keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.01)
    return optimizer.LossScaleOptimizer(inner, initial_scale=initial_scale,
                                        dynamic_growth_steps=growth, min_scale=min_scale)


def test_inf_gradients_skip_step_keep_weights_and_slots_and_halve_scale():
    variables = _variables()
    opt = _wrapped(initial_scale=400.0)
    opt.build(variables)
    opt.apply([np.full((2, 2), 1.0, "float32"), np.ones((2,), "float32")], variables)
    weights = [v.numpy().copy() for v in variables]
    slots = [v.numpy().copy() for v in opt.inner_optimizer.variables]
    scale_before = float(opt.dynamic_scale.numpy())
    opt.apply([np.full((2, 2), np.inf, "float32"), np.ones((2,), "float32")], variables)
    for before, v in zip(weights, variables):
        np.testing.assert_array_equal(before, v.numpy())
    for before, v in zip(slots, opt.inner_optimizer.variables):
        np.testing.assert_array_equal(before, v.numpy())
    assert float(opt.dynamic_scale.numpy()) == scale_before / 2
    assert int(opt.skipped_steps.numpy()) == 1
    assert int(opt.iterations.numpy()) == 1  # the skipped step does not advance the schedule


def test_four_overflows_take_scale_400_to_25_and_count_four():
    variables = _variables()
    opt = _wrapped(initial_scale=400.0)
    opt.build(variables)
    for _ in range(4):
        opt.apply([np.full((2, 2), np.nan, "float32"), np.ones((2,), "float32")], variables)
    assert float(opt.dynamic_scale.numpy()) == 25.0
    assert optimizer.loss_scale_state(opt) == {"loss_scale": 25.0, "skipped_steps": 4,
                                               "iterations": 0}


def test_scale_doubles_after_growth_steps_clean_steps():
    variables = _variables()
    opt = _wrapped(initial_scale=8.0, growth=3)
    opt.build(variables)
    scales = []
    for _ in range(4):
        opt.apply([np.ones((2, 2), "float32"), np.ones((2,), "float32")], variables)
        scales.append(float(opt.dynamic_scale.numpy()))
    assert scales == [8.0, 8.0, 16.0, 16.0]


def test_clipping_applies_to_unscaled_gradients():
    v = [keras.Variable(np.zeros((2,), "float32"), name="kernel")]
    opt = _wrapped(initial_scale=1024.0,
                   inner=keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=1.0))
    opt.build(v)
    # True gradient (3, 4) has norm 5 and arrives multiplied by the loss scale.
    opt.apply([np.array([3.0, 4.0], "float32") * 1024.0], v)
    # Clipped after unscaling: a step of exactly norm 1 (not 1/1024).
    np.testing.assert_allclose(v[0].numpy(), [-0.6, -0.8], rtol=1e-6)
    # A true gradient under the clip norm passes through untouched.
    opt.apply([np.array([0.3, 0.4], "float32") * 1024.0], v)
    np.testing.assert_allclose(v[0].numpy(), [-0.9, -1.2], rtol=1e-6)


def test_scale_below_minimum_raises_training_stopped():
    variables = _variables()
    opt = _wrapped(initial_scale=4.0, min_scale=1.0)
    opt.build(variables)
    for _ in range(2):
        opt.apply([np.full((2, 2), np.inf, "float32"), np.ones((2,), "float32")], variables)
        opt.check_scale()  # 2.0, then 1.0: not below the floor yet
    opt.apply([np.full((2, 2), np.inf, "float32"), np.ones((2,), "float32")], variables)
    with pytest.raises(TrainingStopped, match="0.5, below the minimum 1, after 3 skipped"):
        opt.check_scale()


def test_fit_stops_when_loss_scale_collapses():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def overflowing_loss(y_true, y_pred):
        return keras.ops.mean(y_pred) * np.float16(np.inf)

    model.compile(optimizer=_wrapped(initial_scale=8.0, min_scale=1.0),
                  loss=overflowing_loss, auto_scale_loss=False)
    x, y = np.ones((40, 2), "float32"), np.ones((40, 1), "float32")
    with pytest.raises(TrainingStopped, match="below the minimum"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[LossScaleGuard()])
    assert int(model.optimizer.skipped_steps.numpy()) == 4  # 8 -> 4 -> 2 -> 1 -> 0.5


def test_nan_loss_without_loss_scaling_stops_training():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=lambda t, p: keras.ops.mean(p) * np.nan)
    with pytest.raises(TrainingStopped, match="became nan"):
        model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=4, verbose=0,
                  callbacks=[LossScaleGuard()])


def test_loss_scale_optimizer_config_round_trips_min_scale():
    opt = _wrapped(initial_scale=64.0, growth=10, min_scale=2.0)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, optimizer.LossScaleOptimizer)
    assert (clone.initial_scale, clone.dynamic_growth_steps, clone.min_scale) == (64.0, 10, 2.0)


@pytest.mark.parametrize("clipnorm", [1.0, None])
def test_fused_adamw_matches_keras_update(clipnorm):
    """The fused kernels (ResourceApplyAdam, ResourceApplyGradientDescent) give Keras'
    AdamW step: decay on matrices only, clipping, bias correction, over 5 steps."""
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    grads = [[3 * rng.normal(size=v.shape).astype("float32") for v in init] for _ in range(5)]
    results = {}
    for fused in (True, False):
        variables = [keras.Variable(init[0], name="kernel"), keras.Variable(init[1], name="bias")]
        opt = optimizer.AdamW(learning_rate=optimizer.WarmupLinearDecay(1e-2, 10, 2),
                              weight_decay=0.1, global_clipnorm=clipnorm, epsilon=1e-6,
                              fused=fused)
        opt.exclude_from_weight_decay(var_names=list(optimizer.NO_DECAY_PATTERNS))
        for g in grads:
            opt.apply([keras.ops.convert_to_tensor(x) for x in g], variables)
        results[fused] = [keras.ops.convert_to_numpy(v) for v in variables] + [
            keras.ops.convert_to_numpy(s) for s in opt._momentums + opt._velocities]
        assert float(opt.grad_norm) > 0
    for a, b in zip(results[True], results[False]):
        # Float rounding differs (op order); a missing decay alone would be 1e-3 relative.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The update really moved the weights (so the comparison is not of two no-ops).
    assert np.abs(results[True][0] - init[0]).max() > 1e-2


def test_fused_flag_round_trips_in_config():
    opt = optimizer.AdamW(learning_rate=1e-3, fused=False)
    assert optimizer.AdamW.from_config(opt.get_config()).fused is False


def test_grad_norm_is_the_global_norm_of_the_applied_gradients():
    """One L2Loss per gradient (tfmp) gives numpy's global norm, to float32 rounding."""
    rng = np.random.default_rng(1)
    init = [rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(8,)).astype("float32")]
    grads = [rng.normal(size=v.shape).astype("float32") for v in init]
    variables = [keras.Variable(v) for v in init]
    opt = optimizer.AdamW(learning_rate=1e-3, weight_decay=0.01)
    opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    expected = np.sqrt(sum(float(np.sum(g.astype("float64") ** 2)) for g in grads))
    np.testing.assert_allclose(float(opt.grad_norm), expected, rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_traced_step_computes_the_rate_and_bias_corrections_once(policy, monkeypatch):
    """Keras evaluates the schedule (and each update beta^t) once per variable: 106 copies
    in MiniLM's step, ~1,700 of its 8,807 ops and ~1.5 s of its first call here. The
    fused AdamW computes them once a step, for every variable alike."""
    import tensorflow as tf

    calls = []
    schedule_call = optimizer.WarmupLinearDecay.__call__
    monkeypatch.setattr(optimizer.WarmupLinearDecay, "__call__",
                        lambda self, step: (calls.append(1), schedule_call(self, step))[1])
    opt = optimizer.build_optimizer(precision.resolve(policy), total_steps=10)
    variables = [keras.Variable(np.ones((4, 4), "float32"), name=f"kernel{i}")
                 for i in range(12)]
    opt.build(variables)
    step = tf.function(lambda grads: opt.apply(grads, variables))
    graph = step.get_concrete_function(
        [tf.TensorSpec((4, 4), tf.float32)] * len(variables)).graph
    graph_def = graph.as_graph_def()  # a loss scale puts the update inside a cond's branch
    ops = [n.op for n in graph_def.node] + [
        n.op for f in graph_def.library.function for n in f.node_def]
    assert len(calls) == 2, calls  # the update's rate, and the weight decay's
    assert ops.count("Pow") == 2 and ops.count("ResourceApplyAdam") == len(variables)
