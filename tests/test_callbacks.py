import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings

import keras
import numpy as np
import pytest
from conftest import read_scalars

from tfmp import callbacks, optimizer, precision
from tfmp.config import TrainConfig

MINE_SCALED = {
    callbacks.LOSS_SCALE, callbacks.SKIPPED_STEPS, callbacks.SKIP_RATE, callbacks.OVERFLOW,
    callbacks.LEARNING_RATE, callbacks.NOMINAL_LEARNING_RATE, callbacks.SCHEDULE_LAG,
    callbacks.GRAD_NORM, callbacks.EXAMPLES_PER_SECOND,
}
MINE_UNSCALED = MINE_SCALED - {callbacks.LOSS_SCALE, callbacks.SKIPPED_STEPS,
                               callbacks.SKIP_RATE, callbacks.OVERFLOW}
# What keras.callbacks.TensorBoard(update_freq="epoch") writes into <log_dir>/train.
KERAS_TAGS = {"epoch_loss", "epoch_learning_rate", "keras"}  # "keras": the model graph
BATCH, STEPS = 8, 8  # examples per step, steps per epoch


class PoisonAt(keras.layers.Layer):
    """Test-only hook: multiplies its input by inf in the `step`-th training call.

    The call count is a variable, so the poisoned step is exact inside a compiled
    multi-step execution (`steps_per_execution > 1`).
    """

    def __init__(self, step=0, **kwargs):
        super().__init__(**kwargs)
        self.step = step

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                     trainable=False, name="calls")

    def call(self, x, training=False):
        if not training:
            return x
        self.calls.assign_add(1)
        poisoned = keras.ops.equal(self.calls, self.step)
        return x * keras.ops.cast(keras.ops.where(poisoned, float("inf"), 1.0), x.dtype)

    def get_config(self):
        return dict(super().get_config(), step=self.step)


def _model(policy="mixed_float16", poison_step=0, initial_scale=2.0**10, growth=1000,
           steps_per_execution=1, epochs=1):
    keras.utils.set_random_seed(0)
    with precision.policy_scope(policy):
        model = keras.Sequential([
            keras.Input((4,)),
            keras.layers.Dense(8, name="hidden"),
            PoisonAt(poison_step, name="poison"),
            keras.layers.Dense(2, dtype="float32", name="logits"),
        ])
    opt = optimizer.build_optimizer(
        precision.Policy(policy), total_steps=STEPS * epochs, config=TrainConfig(
            lr=1e-2, warmup_ratio=0.25, initial_loss_scale=initial_scale,
            dynamic_growth_steps=growth))
    model.compile(optimizer=opt, loss="mse", steps_per_execution=steps_per_execution,
                  auto_scale_loss=False)
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(BATCH * STEPS, 4)).astype("float32"), \
        rng.normal(size=(BATCH * STEPS, 2)).astype("float32")


def _fit(model, log_dir, update_freq=1, epochs=1, initial_epoch=0, **monitor_kw):
    x, y = _data()
    monitor_kw.setdefault("skip_warning_share", 0.5)  # one skip in 8 steps is expected here
    monitor = callbacks.TrainingMonitor(log_dir, update_freq=update_freq, batch_size=BATCH,
                                        **monitor_kw)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, initial_epoch=initial_epoch,
              shuffle=False, verbose=0,
              callbacks=[monitor, keras.callbacks.TensorBoard(log_dir)])
    return monitor


def test_inf_gradients_at_step_k_skip_it_and_halve_the_scale_there(tmp_path):
    k = 3
    model = _model(poison_step=k, initial_scale=1024.0)
    monitor = _fit(model, tmp_path)
    s = read_scalars(tmp_path / "train")
    assert set(s) == MINE_SCALED | KERAS_TAGS
    assert s[callbacks.OVERFLOW] == [(k, 1.0)]
    assert s[callbacks.SKIPPED_STEPS] == [(i, float(i >= k)) for i in range(1, STEPS + 1)]
    assert s[callbacks.LOSS_SCALE] == [(i, 512.0 if i >= k else 1024.0)
                                       for i in range(1, STEPS + 1)]
    assert s[callbacks.SCHEDULE_LAG] == s[callbacks.SKIPPED_STEPS]
    assert dict(s[callbacks.SKIP_RATE])[STEPS] == pytest.approx(1 / STEPS)
    # The skipped step did not advance the schedule: step i applies the rate step
    # i - 1 would have had.
    lr, nominal = dict(s[callbacks.LEARNING_RATE]), dict(s[callbacks.NOMINAL_LEARNING_RATE])
    assert lr[k + 2] == pytest.approx(nominal[k + 1], rel=1e-6)
    assert lr[k - 1] == pytest.approx(nominal[k - 1], rel=1e-6)
    assert all(v > 0 and np.isfinite(v) for _, v in s[callbacks.GRAD_NORM])
    assert all(v > 0 for _, v in s[callbacks.EXAMPLES_PER_SECOND])
    assert [st for st, _ in s[callbacks.EXAMPLES_PER_SECOND]] == list(range(2, STEPS + 1))
    assert monitor._writer is None  # closed at the end of training


def test_dynamic_growth_doubles_the_scale_exactly_at_step_n(tmp_path):
    n = 4
    _fit(_model(initial_scale=8.0, growth=n), tmp_path)
    s = read_scalars(tmp_path / "train")
    assert s[callbacks.LOSS_SCALE] == [(i, 8.0 * 2 ** (i // n)) for i in range(1, STEPS + 1)]
    assert s[callbacks.OVERFLOW] == [] if callbacks.OVERFLOW in s else True
    assert all(v == 0.0 for _, v in s[callbacks.SKIPPED_STEPS])


def test_steps_per_execution_keeps_overflow_and_growth_steps_exact(tmp_path):
    # 4 steps per execution: the callback runs after steps 4 and 8 only.
    _fit(_model(poison_step=3, initial_scale=1024.0, growth=1000, steps_per_execution=4),
         tmp_path / "skip", update_freq=4)
    s = read_scalars(tmp_path / "skip" / "train")
    assert s[callbacks.OVERFLOW] == [(3, 1.0)]
    assert s[callbacks.SKIPPED_STEPS] == [(3, 1.0), (4, 1.0), (8, 1.0)]
    assert s[callbacks.LOSS_SCALE] == [(3, 512.0), (4, 512.0), (8, 512.0)]

    _fit(_model(initial_scale=8.0, growth=3, steps_per_execution=4), tmp_path / "grow",
         update_freq=4)
    s = read_scalars(tmp_path / "grow" / "train")
    # Growth at steps 3 and 6, seen after steps 4 and 8.
    assert s[callbacks.LOSS_SCALE] == [(3, 16.0), (4, 16.0), (6, 32.0), (8, 32.0)]


def test_resumed_training_continues_the_step_count(tmp_path):
    model = _model(poison_step=2, initial_scale=1024.0, epochs=2)
    _fit(model, tmp_path / "first")
    path = str(tmp_path / "checkpoint.keras")
    model.save(path)
    restored = keras.saving.load_model(path, custom_objects={"PoisonAt": PoisonAt})
    _fit(restored, tmp_path / "second", epochs=2, initial_epoch=1)
    s = read_scalars(tmp_path / "second" / "train")
    assert [st for st, _ in s[callbacks.LOSS_SCALE]] == list(range(STEPS + 1, 2 * STEPS + 1))
    assert {v for _, v in s[callbacks.SKIPPED_STEPS]} == {1.0}  # carried, not re-logged
    assert callbacks.OVERFLOW not in s


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_without_a_loss_scale_it_logs_what_applies_and_says_so_once(tmp_path, policy):
    _fit(_model(policy=policy), tmp_path, update_freq=2)
    s = read_scalars(tmp_path / "train")
    assert set(s) == MINE_UNSCALED | KERAS_TAGS | {callbacks.NOTES}
    assert len(s[callbacks.NOTES]) == 1 and "no loss scale" in s[callbacks.NOTES][0][1]
    assert [st for st, _ in s[callbacks.GRAD_NORM]] == [2, 4, 6, 8]
    assert all(v == 0 for _, v in s[callbacks.SCHEDULE_LAG])


def test_warns_when_skipped_steps_exceed_the_stated_share(tmp_path):
    model = _model(poison_step=1, initial_scale=1024.0)
    with pytest.warns(UserWarning, match=r"1 of 1 steps were skipped.*schedule now runs 1"):
        _fit(model, tmp_path, skip_warning_share=0.1)  # 1 > 0.1 * 8
    model = _model(poison_step=1, initial_scale=1024.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*were skipped.*")
        _fit(model, tmp_path / "quiet", skip_warning_share=0.2)  # 1 <= 1.6


def test_first_overflow_triggers_a_diagnosis(tmp_path):
    x, y = _data()
    monitor = _fit(_model(poison_step=2, initial_scale=1024.0), tmp_path,
                   diagnose_data=(x[:BATCH], y[:BATCH]))
    assert [e["path"] for e in monitor.diagnosis["layers"]] == ["hidden", "poison", "logits"]
    saved = json.loads((tmp_path / "diagnosis.json").read_text())
    assert saved["overflow_step"] == 2
    notes = read_scalars(tmp_path / "train")[callbacks.NOTES]
    assert notes[0][0] == 2 and "First overflow at step 2" in notes[0][1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_server_serves_the_scalars(tmp_path):
    _fit(_model(poison_step=3, initial_scale=1024.0), tmp_path)
    port = _free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [tensorboard, "--logdir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    query = urllib.parse.urlencode({"run": "train", "tag": callbacks.LOSS_SCALE})
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}"
    try:
        deadline, points = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    points = json.loads(r.read())
                if len(points) == STEPS:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert points is not None, "TensorBoard did not answer within 60 s"
        assert [(p[1], p[2]) for p in points] == [(i, 512.0 if i >= 3 else 1024.0)
                                                  for i in range(1, STEPS + 1)]
    finally:
        server.terminate()
        server.wait(timeout=20)
