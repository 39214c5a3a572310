"""Recovery from a burst of float16 overflows, without a re-run.

Part of `--precision-map adaptive` under a loss scale: when `burst` of the last
`window` steps were skipped for overflow, `OverflowRecovery` stops the epoch; then
`recover` diagnoses the model at that step (`tfmp.diagnose`, the calibration's probes),
pins the offending blocks (`tfmp.adaptive.pins_from`, precision's rule), restores the
last checkpoint (or the weights training started from) with the loss scale from
before the burst, and `run_epochs` continues from there: the skipped batches are
trained on again. Each recovery is a TensorBoard text note and a row of
`recoveries` (step, layers, steps redone, seconds), which the report shows.

    watcher = OverflowRecovery(burst=8, window=50, ...)        # a fit callback
    run_epochs(start_step, steps_per_epoch, epochs, fit_epoch, watcher)
"""

import collections
import dataclasses
import time

import keras

from tfmp import adaptive, checkpoint, diagnose, precision
from tfmp.errors import TrainingStopped
from tfmp.optimizer import global_step


def _number(x):
    return keras.ops.convert_to_numpy(x).item()


class OverflowBurst(Exception):
    """Raised out of `fit` by `OverflowRecovery`: no epoch end (checkpoint, validation)
    runs for an epoch cut short by a burst."""


class OverflowRecovery(keras.callbacks.Callback):
    """Stops training when `burst` of the last `window` steps overflowed.

    Args:
        burst: int. Skipped steps that trigger a recovery (0: never).
        window: int. Steps they must fall within.
        run: the run (`policy` is read and replaced as layers are pinned).
        saver: the run's `tfmp.checkpoint_saver.CheckpointSaver` (its directory, and
            the write in flight, which a restore waits for).
        data: batches to diagnose (a `tf.data.Dataset`).
        history: dict. The run's epoch history, rewound with the checkpoint.
        note: callable(text). Where the event is written (TensorBoard text).
    """

    def __init__(self, burst, window, run, saver, data, history, note):
        super().__init__()
        self.burst, self.window = int(burst), int(window)
        self.run, self.saver, self.data = run, saver, data
        self.history, self.note = history, note
        self.triggered = None  # (step, loss scale before the burst)
        self.recoveries = []
        self._skips = collections.deque()  # (step, scale before the burst's first halving)
        self._start = None

    def on_train_begin(self, logs=None):
        opt = self.model.optimizer
        if self._start is None and checkpoint.find_latest(self.saver.root) is None:
            # Nothing to go back to yet: remember where training starts (built first, so
            # every optimizer variable is in the copy).
            if not opt.built:
                opt.build(self.model.trainable_variables)
            self._start = ([keras.ops.convert_to_numpy(v) for v in self.model.weights],
                           [keras.ops.convert_to_numpy(v) for v in opt.variables])
        self._skips.clear()
        self._seen = int(_number(opt.skipped_steps)) if opt.built else 0
        self._clean_scale = float(_number(opt.dynamic_scale)) if opt.built else None

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        if not self.burst or not getattr(opt, "built", False):
            return
        step, skipped = global_step(opt), int(_number(opt.skipped_steps))
        scale = float(_number(opt.dynamic_scale))
        if skipped > self._seen:
            before = self._clean_scale or scale * 2
            self._skips.extend([(step, before)] * (skipped - self._seen))
        else:
            self._clean_scale = scale
        self._seen = skipped
        while self._skips and self._skips[0][0] <= step - self.window:
            self._skips.popleft()
        if len(self._skips) >= self.burst:
            self.triggered = (step, self._skips[0][1])
            raise OverflowBurst(step)

    def recover(self):
        """Pins, restores and returns the global step training continues from."""
        start = time.perf_counter()
        model, (step, scale) = self.model, self.triggered
        self.triggered = None
        result = diagnose.diagnose(model, self.data, batches=2)
        known = {row[0] for row in self.run.policy.layer_map}
        rows = adaptive.pins_from(result, known)
        if not rows:
            raise TrainingStopped(
                f"{self.burst} of {self.window} steps up to step {step} overflowed float16 "
                f"and no float16 layer measures short of range. {diagnose.summary(result)} "
                f"{precision.OVERFLOW_ADVICE}")
        self.run.policy = dataclasses.replace(
            self.run.policy, layer_map=tuple(self.run.policy.layer_map) + tuple(rows))
        precision.apply_pins(model, self.run.policy)
        model.train_function = model.test_function = model.predict_function = None
        restored = self._restore(scale)
        event = {"step": step, "restored_to": restored, "steps_redone": step - restored,
                 "layers": [list(r) for r in rows], "seconds": time.perf_counter() - start}
        self.recoveries.append(event)
        self.note(f"Recovery at step {step}: {self.burst} overflows within {self.window} "
                  f"steps. Pinned {'; '.join(f'{p} -> {n} ({r})' for p, n, r in rows)}. "
                  f"Restored step {restored} (loss scale {scale:g}); {step - restored} steps "
                  f"are trained again; took {event['seconds']:.1f} s.")
        return restored

    def _restore(self, scale):
        model, opt = self.model, self.model.optimizer
        self.saver.wait()
        latest = checkpoint.find_latest(self.saver.root)
        if latest is not None:
            checkpoint.restore(model, *latest)
            self.history.clear()
            self.history.update(latest[1].get("history") or {})
        else:
            weights, slots = self._start
            for v, value in zip(model.weights, weights):
                v.assign(value)
            for v, value in zip(opt.variables, slots):
                v.assign(value)
        # Skipped steps never moved the weights; only the scale fell during the burst.
        opt.dynamic_scale.assign(max(float(_number(opt.dynamic_scale)), scale))
        return global_step(opt)


def watcher_for(run, saver, history, monitor):
    """The run's `OverflowRecovery`: under `--precision-map adaptive` with a loss scale
    and `--recovery-burst` > 0; else None."""
    config = run.config
    if (config.precision_map != "adaptive" or not run.policy.loss_scaling
            or not config.recovery_burst):
        return None
    return OverflowRecovery(config.recovery_burst, config.recovery_window, run, saver,
                            monitor.diagnose_data, history, monitor._note)


def run_epochs(start_step, steps_per_epoch, epochs, fit_epoch, watcher=None):
    """Calls `fit_epoch(epoch, batches_to_skip)` to the last epoch, recovering (and
    going back) whenever `watcher` (an `OverflowRecovery`) stopped one."""
    step = start_step
    while True:
        position = checkpoint.Position.from_step(step, steps_per_epoch)
        try:
            for epoch in range(position.epoch, epochs):
                fit_epoch(epoch, position.batch if epoch == position.epoch else 0)
            return
        except OverflowBurst:
            step = watcher.recover()
