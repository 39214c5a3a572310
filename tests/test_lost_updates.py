import warnings

import keras
import numpy as np
import pytest
from conftest import read_scalars

from tfmp import lost_updates, optimizer, precision


@pytest.mark.parametrize("dtype,lost", [("bfloat16", 1.0), ("float32", 0.0)])
def test_a_weight_of_1024_loses_every_small_update_in_bfloat16_and_none_in_float32(
        dtype, lost):
    # bfloat16 holds 1024 with an ulp of 8: an Adam step of ~lr = 1e-3 is far below half
    # of it (4) and rounds away; float32's ulp at 1024 is 2**-13, half of it 6.1e-5.
    w = keras.Variable(np.full((4,), 1024.0), dtype=dtype, name="kernel")
    # beta_2 0.99: bfloat16 rounds Keras' 0.999 to 1.0 (its slots share the weight's
    # dtype), which would stop v, and so every update, for another reason.
    opt = optimizer.AdamW(learning_rate=1e-3, weight_decay=0.0, beta_2=0.99)
    for _ in range(3):
        opt.apply([keras.ops.ones((4,), dtype=dtype)], [w])
    shares = lost_updates.lost_shares(opt)
    assert shares == {w.path: lost}
    moved = float(keras.ops.convert_to_numpy(w)[0]) != 1024.0
    assert moved == (lost == 0.0)  # the measurement agrees with what happened


def test_half_ulp_of_known_values():
    np.testing.assert_array_equal(lost_updates.half_ulp([1024.0, 1.0, 0.0], "bfloat16"),
                                  [4.0, 2.0**-8, 0.0])
    np.testing.assert_array_equal(lost_updates.half_ulp([1.0], "float32"), [2.0**-24])


def test_monitor_logs_each_variable_and_names_the_stalled_layer(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(4, name="moving"),
                              keras.layers.Dense(1, name="stuck", dtype="float32")])
    # The stuck layer's weights are huge against the rate: every update is lost.
    stuck = model.get_layer("stuck")
    stuck.kernel.assign(np.full((4, 1), 3.0e4, "float32"))
    stuck.bias.assign(np.full((1,), 3.0e4, "float32"))
    model.compile(optimizer=optimizer.AdamW(learning_rate=1e-5, weight_decay=0.0),
                  loss="mse")
    monitor = lost_updates.LostUpdateMonitor(str(tmp_path), every=2)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    name = model.name
    assert monitor.shares[f"{name}/stuck/kernel"] == 1.0
    assert monitor.shares[f"{name}/stuck/bias"] == 1.0
    assert monitor.shares[f"{name}/moving/kernel"] == 0.0
    assert monitor.stalled == [f"{name}/stuck"]
    assert any("stuck" in str(w.message) and "moving" not in str(w.message) for w in caught)
    tags = read_scalars(str(tmp_path / "train"))
    assert {"lost_updates/all", f"lost_updates/{name}/stuck/kernel",
            f"lost_updates/{name}/moving/kernel"} <= set(tags)
    assert any("stopped learning" in text for _, text in tags["tfmp/notes"])
