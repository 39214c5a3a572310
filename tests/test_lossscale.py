"""Exact dynamics of each loss-scaling rule, as Keras tests its own (tfmp.lossscale)."""

import keras
import numpy as np
import pytest

from tfmp import checkpoint, optimizer
from tfmp.config import TrainConfig
from tfmp.errors import UserError
from tfmp.lossscale import LossScaling

INF = [np.full((2, 2), np.inf, "float32"), np.ones((2,), "float32")]


def _clean(value=1.0):
    return [np.full((2, 2), value, "float32"), np.full((2,), value, "float32")]


def _opt(**scaling):
    variables = [keras.Variable(np.ones((2, 2), "float32"), name="kernel"),
                 keras.Variable(np.ones((2,), "float32"), name="bias")]
    inner = keras.optimizers.SGD(learning_rate=1e-3)
    opt = optimizer.LossScaleOptimizer(inner, scaling=LossScaling(**scaling))
    opt.build(variables)
    return opt, variables


def _scale(opt):
    return float(opt.dynamic_scale.numpy())


def _run(opt, variables, steps):
    """Applies `steps` ("x": overflow, "o": clean), returns the scale after each."""
    out = []
    for s in steps:
        opt.apply(INF if s == "x" else _clean(), variables)
        out.append(_scale(opt))
    return out


def test_dynamic_halves_on_overflow_and_doubles_after_n_clean_steps():
    opt, v = _opt(mode="dynamic", initial_scale=400.0, growth_steps=3)
    assert _run(opt, v, "xxooooo") == [200, 100, 100, 100, 200, 200, 200]
    assert int(opt.skipped_steps.numpy()) == 2


def test_static_keeps_its_scale_and_skips_overflowed_steps():
    opt, v = _opt(mode="static", initial_scale=256.0, growth_steps=2)
    weights = v[0].numpy().copy()
    assert _run(opt, v, "xxx") == [256, 256, 256]
    np.testing.assert_array_equal(v[0].numpy(), weights)  # skipped, untouched
    assert _run(opt, v, "ooooo") == [256] * 5
    assert int(opt.skipped_steps.numpy()) == 3 and int(opt.iterations.numpy()) == 5


def test_hysteresis_halves_at_the_nth_overflow_and_refills_on_growth():
    opt, v = _opt(mode="hysteresis", initial_scale=1024.0, growth_steps=2, hysteresis=3)
    # Two overflows tolerated, the third halves; after that each overflow halves until
    # a growth refills the count (DeepSpeed's delayed_shift).
    assert _run(opt, v, "xxxx") == [1024, 1024, 512, 256]
    assert int(opt.overflows_left.numpy()) == 1
    assert _run(opt, v, "oo") == [256, 512]
    assert int(opt.overflows_left.numpy()) == 3
    # A clean step in between does not refill it: only growth does.
    assert _run(opt, v, "xox") == [512, 512, 512]
    assert int(opt.overflows_left.numpy()) == 1
    assert int(opt.skipped_steps.numpy()) == 6


def test_delayed_sets_the_scale_from_the_rolling_gradient_max():
    opt, v = _opt(mode="delayed", initial_scale=2.0**15, window=3, margin=8.0)
    # Clean gradients of 0.5 arrive scaled by 2**15 (unscaled 0.5): the scale becomes the
    # largest power of two with 8 x 0.5 x scale <= 65504, i.e. 2**13 (16376 x 4 = 65504).
    for _ in range(2):
        opt.apply(_clean(0.5 * _scale(opt)), v)
    assert _scale(opt) == 2.0**13
    # A larger gradient (4.0) lowers it at once: 65504 / 32 = 2047 -> 2**10.
    opt.apply(_clean(4.0 * _scale(opt)), v)
    assert _scale(opt) == 2.0**10
    # It stays 3 steps (the window), then the small gradients take it back up.
    scales = []
    for _ in range(4):
        opt.apply(_clean(0.5 * _scale(opt)), v)
        scales.append(_scale(opt))
    assert scales == [2.0**10, 2.0**10, 2.0**13, 2.0**13]


def test_delayed_halves_on_overflow_and_holds_it_for_the_window():
    opt, v = _opt(mode="delayed", initial_scale=2.0**13, window=2, margin=8.0)
    opt.apply(INF, v)
    assert _scale(opt) == 2.0**12
    # The halving is remembered as a gradient max: small gradients cannot raise it
    # until it leaves the 2-step window.
    scales = []
    for _ in range(3):
        opt.apply(_clean(0.01 * _scale(opt)), v)
        scales.append(_scale(opt))
    assert scales[0] == 2.0**12
    assert scales[-1] > 2.0**12


@pytest.mark.parametrize("mode", ["dynamic", "hysteresis", "delayed", "256"])
def test_each_rules_state_survives_a_checkpoint_and_resume(tmp_path, mode):
    config = TrainConfig(loss_scale=mode, loss_scale_hysteresis=3, dynamic_growth_steps=4,
                         initial_loss_scale=1024.0, loss_scale_window=4)

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="d")])
        from tfmp import precision
        m.compile(optimizer=optimizer.build_optimizer(precision.Policy("mixed_float16"),
                                                      10, config), loss="mse",
                  auto_scale_loss=False)
        return m

    trained = model()
    opt = trained.optimizer
    opt.apply([keras.ops.convert_to_tensor(np.full((2, 2), np.inf, "float32")),
               keras.ops.ones((2,))], trained.trainable_variables)
    for _ in range(2):
        opt.apply([keras.ops.ones((2, 2)) * 3.0, keras.ops.ones((2,))],
                  trained.trainable_variables)
    path = checkpoint.save(str(tmp_path), trained, {"config": config.to_json()})
    resumed = model()
    checkpoint.restore(resumed, *checkpoint.find_latest(str(tmp_path)))
    for a, b in zip(opt.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b), err_msg=a.path)
    assert resumed.optimizer.scaling == opt.scaling


def test_bad_loss_scale_is_refused_naming_the_choices():
    with pytest.raises(UserError, match="dynamic, hysteresis, delayed or a static"):
        TrainConfig(loss_scale="0.5").validate()
    assert optimizer.loss_scaling(TrainConfig(loss_scale="256")) == LossScaling(
        mode="static", initial_scale=256.0)
