"""Keras callbacks tfmp adds to `model.fit`.

`TrainingMonitor` writes the mixed-precision scalars Keras does not (loss scale,
skipped steps, applied learning rate, gradient norm, throughput) to TensorBoard.

`LossScaleGuard` stops training with a clear error when the float16 loss scale has
collapsed, or when the loss is NaN under a policy without loss scaling (where a NaN
is not skipped and would silently wreck the weights).
"""

import collections
import logging
import math
import os
import time
import warnings

import keras

from tfmp import diagnose, files, precision
from tfmp.errors import TrainingStopped
from tfmp.optimizer import OVERFLOW_LOG_SIZE, LossScaleOptimizer, global_step


class LossScaleGuard(keras.callbacks.Callback):
    """Raises `TrainingStopped` when training can no longer make progress.

    Args:
        check_every: int. Check the loss scale every this many batches (reading it
            costs a device-to-host copy).
        skip_window: int. Steps over which the skip rate is measured.
        max_skip_share: float. Stop when more than this share of the last
            `skip_window` steps were skipped for float16 overflow: the scale is not
            recovering, and each skip delays the learning-rate schedule.
    """

    def __init__(self, check_every=1, skip_window=100, max_skip_share=0.5):
        super().__init__()
        self.check_every = max(int(check_every), 1)
        self.skip_window = max(int(skip_window), 1)
        self.max_skip_share = float(max_skip_share)
        self._skips = collections.deque()  # (global step, skipped steps so far)

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.check_every:
            return
        optimizer = self.model.optimizer
        # tfmp.optimizer.build_optimizer wraps exactly when precision says the policy
        # scales its loss; the wrapper is what holds the scale to check.
        if isinstance(optimizer, LossScaleOptimizer):
            optimizer.check_scale()
            self._check_skip_rate(optimizer)
        else:
            self._check_finite(batch, logs)

    def _check_finite(self, batch, logs):
        # Without a loss scale nothing skips a non-finite step: the weights are already
        # NaN, so going on only wastes time. A finite loss can hide an infinite
        # gradient (the step that applies it is the one that breaks the weights), so
        # the gradient norm is read too.
        what = None
        if logs and "loss" in logs and not math.isfinite(float(logs["loss"])):
            what = f"The training loss became {logs['loss']}"
        else:
            inner = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
            norm = getattr(inner, "grad_norm", None)
            if norm is not None and inner.built and not math.isfinite(_number(norm)):
                what = f"The gradient norm became {_number(norm)}"
        if what:
            raise TrainingStopped(
                f"{what} at batch {batch} under {self.model.dtype_policy.name}. Try a "
                "lower learning rate (--lr), gradient clipping, or check the input data."
            )


    def _check_skip_rate(self, optimizer):
        if not optimizer.built:
            return
        skipped = int(_number(optimizer.skipped_steps))
        step = global_step(optimizer)
        self._skips.append((step, skipped))
        while self._skips and self._skips[0][0] < step - self.skip_window:
            self._skips.popleft()
        first_step, first_skipped = self._skips[0]
        if step - first_step < self.skip_window:
            return  # not a full window yet
        share = (skipped - first_skipped) / (step - first_step)
        if share > self.max_skip_share:
            raise TrainingStopped(
                f"{skipped - first_skipped} of the last {step - first_step} steps (up to "
                f"step {step}) were skipped for float16 overflow, more than "
                f"{self.max_skip_share:.0%}; loss scale now "
                f"{float(_number(optimizer.dynamic_scale)):g}. {precision.OVERFLOW_ADVICE}"
            )


class PhaseTimer(keras.callbacks.Callback):
    """Where a `fit`'s time goes: the first step, steady steps, slow steps, validation.

    The first step traces and compiles the training function. Later steps that take
    over 3x the median are counted apart: with batches trimmed to their longest text,
    a new batch width retraces the step (and recompiles the fused GELU). Times are
    wall-clock between Keras' batch hooks, which wait for the step (tfmp's callbacks
    read its logs). Accumulates over several `fit` calls (tfmp fits once per epoch).
    """

    def __init__(self):
        super().__init__()
        self.first_step = None
        self.steps = []  # seconds of every later step
        self.validation = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._start
        if self.first_step is None:
            self.first_step = seconds
        else:
            self.steps.append(seconds)

    def on_test_begin(self, logs=None):
        self._validation_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation += time.perf_counter() - self._validation_start

    def phases(self):
        """{phase: seconds}: first step, steady steps, slow steps (retraces), validation."""
        median = sorted(self.steps)[len(self.steps) // 2] if self.steps else 0.0
        slow = [s for s in self.steps if s > 3 * median]
        return {"first step (trace and compile)": self.first_step or 0.0,
                "training steps": sum(self.steps) - sum(slow),
                f"slow steps ({len(slow)}, over 3x the median: new batch widths)": sum(slow),
                "validation": self.validation}


# Tags `TrainingMonitor` writes (besides Keras' own epoch_loss/epoch_accuracy).
LOSS_SCALE = "precision/loss_scale"
SKIPPED_STEPS = "precision/skipped_steps"
SKIP_RATE = "precision/skip_rate"
OVERFLOW = "precision/overflow"  # 1.0 at each skipped step, nothing elsewhere
LEARNING_RATE = "optimizer/learning_rate"  # the rate the last applied update used
NOMINAL_LEARNING_RATE = "optimizer/nominal_learning_rate"  # had no step been skipped
SCHEDULE_LAG = "optimizer/schedule_lag_steps"
GRAD_NORM = "optimizer/grad_norm"
EXAMPLES_PER_SECOND = "throughput/examples_per_second"
STEPS_PER_SECOND = "throughput/steps_per_second"
NOTES = "tfmp/notes"


def _number(x):
    return keras.ops.convert_to_numpy(x).item()


class TrainingMonitor(keras.callbacks.Callback):
    """Logs loss scale, skipped steps, learning rate, gradient norm and throughput.

    Writes TensorBoard scalars every `update_freq` optimizer steps and at each epoch
    end, into `<log_dir>/train` beside `keras.callbacks.TensorBoard(log_dir)`'s own
    curves. Steps are global optimizer steps, skipped ones included (1 is the first
    step), read from the optimizer's variables: they stay exact with
    `steps_per_execution > 1` and continue after a checkpoint is restored. Each
    skipped (overflowed) step is logged at the step where it happened, from the
    optimizer's overflow log (`tfmp.optimizer.LossScaleOptimizer.overflow_steps`).

    Without a loss scale (`float32`, `mixed_bfloat16`) the precision/* tags are not
    written; a `tfmp/notes` text entry says so once.

    Args:
        log_dir: str. TensorBoard log directory (the one given to Keras' callback).
        update_freq: int. Log every this many optimizer steps.
        batch_size: int or None. Examples per step, for examples/second; without it
            steps/second is logged instead.
        skip_warning_share: float. Warn once when skipped steps exceed this share of
            the steps planned for the run: each one delays warmup and decay by a step.
        diagnose_data: None, a `tf.data.Dataset` or an `(x, y)` batch. If given, the
            first overflow runs `tfmp.diagnose.diagnose` on one batch of it; the
            result is `self.diagnosis` and `<log_dir>/diagnosis.json`.
        subdir: str. Run name under `log_dir` (Keras' callback uses "train").
        planned_steps: int or None. Steps in the whole run; None: Keras' steps x
            epochs of the current `fit`, which is short when a run calls `fit` once
            per epoch (as `tfmp.train` does, to resume at an exact batch).
    """

    def __init__(self, log_dir, update_freq=50, batch_size=None, skip_warning_share=0.05,
                 diagnose_data=None, subdir="train", planned_steps=None):
        super().__init__()
        self.planned_steps = planned_steps
        self.log_dir = str(log_dir)
        self.update_freq = max(int(update_freq), 1)
        self.batch_size = batch_size
        self.skip_warning_share = float(skip_warning_share)
        self.diagnose_data = diagnose_data
        self.subdir = subdir
        self.diagnosis = None
        self.scalars = {}  # tag -> [(step, value)], everything written, for the report
        self._writer = None
        self._noted = False
        self._warned = False

    # --- Reading the optimizer. ---

    def _optimizers(self):
        opt = self.model.optimizer
        return opt, getattr(opt, "inner_optimizer", opt)

    def _scaled(self):
        return isinstance(self.model.optimizer, keras.optimizers.LossScaleOptimizer)

    def _skipped(self):
        opt = self.model.optimizer
        if not getattr(opt, "built", False) or not hasattr(opt, "skipped_steps"):
            return 0
        return int(_number(opt.skipped_steps))

    def _global_step(self):
        return global_step(self.model.optimizer)

    def _rate_at(self, iteration):
        _, inner = self._optimizers()
        lr = inner._learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            return float(_number(lr(max(iteration, 0))))
        return float(_number(lr))

    # --- Writing. ---

    def _write(self, points):
        """points: {step: {tag: value}}; written in step order."""
        import tensorflow as tf

        if not points:
            return
        if self._writer is None:  # lazily: nothing is created for a run that never steps
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, self.subdir))
        # record_if(True): keras.callbacks.TensorBoard with an integer update_freq
        # leaves a record_if(step % update_freq == 0) in force during fit.
        with self._writer.as_default(), tf.summary.record_if(True):
            for step in sorted(points):
                for tag, value in points[step].items():
                    tf.summary.scalar(tag, value, step=step)
                    self.scalars.setdefault(tag, []).append((int(step), float(value)))
        self._writer.flush()

    def _note(self, text):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, self.subdir))
        with self._writer.as_default(), tf.summary.record_if(True):
            tf.summary.text(NOTES, text, step=self._global_step())
        logging.getLogger("tfmp").info(text)

    # --- Callback hooks. ---

    def on_train_begin(self, logs=None):
        self._seen_step = self._global_step()
        self._seen_skipped = self._skipped()
        self._seen_scale = self._scale()
        self._snapshot_step = None
        self._clock = None
        self._first_batch = True
        if not self._scaled() and not self._noted:
            self._noted = True
            self._note(
                f"Policy {self.model.dtype_policy.name}: no loss scale, so nothing is "
                f"skipped; {LOSS_SCALE}, {SKIPPED_STEPS}, {SKIP_RATE} and {OVERFLOW} "
                "are not logged.")

    def _scale(self):
        opt = self.model.optimizer
        if not self._scaled():
            return None
        # Before the first step the variable does not exist yet.
        return float(_number(opt.dynamic_scale)) if opt.built else float(opt.initial_scale)

    def on_epoch_begin(self, epoch, logs=None):
        self._clock = None  # validation time is not training throughput

    def on_train_batch_begin(self, batch, logs=None):
        if self._clock is None:
            self._clock = (time.perf_counter(), self._global_step())

    def on_train_batch_end(self, batch, logs=None):
        if self._first_batch:
            # The first execution traces and compiles the step: not throughput.
            self._first_batch = False
            self._clock = (time.perf_counter(), self._global_step())
        self._update(force=False)

    def on_epoch_end(self, epoch, logs=None):
        self._update(force=True)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _update(self, force):
        step = self._global_step()
        if step == self._seen_step and not force:
            return
        points = {}
        if self._scaled():
            self._collect_scale_events(step, points)
        crossed = step // self.update_freq > self._seen_step // self.update_freq
        if (crossed or force) and step > 0 and step != self._snapshot_step:
            points.setdefault(step, {}).update(self._snapshot(step))
            self._snapshot_step = step
        self._seen_step = step
        self._write(points)
        self._check_skip_share(step)

    def _collect_scale_events(self, step, points):
        opt = self.model.optimizer
        skipped = self._skipped()
        scale = self._scale()
        if skipped > self._seen_skipped:
            steps = keras.ops.convert_to_numpy(opt.overflow_steps)
            scales = keras.ops.convert_to_numpy(opt.overflow_scales)
            # Older entries than the ring holds are lost; the count stays exact.
            for i in range(max(self._seen_skipped, skipped - OVERFLOW_LOG_SIZE), skipped):
                slot = i % OVERFLOW_LOG_SIZE
                points.setdefault(int(steps[slot]), {}).update(
                    {OVERFLOW: 1.0, SKIPPED_STEPS: i + 1,
                     LOSS_SCALE: float(scales[slot])})
            if self._seen_skipped == 0 and self.diagnose_data is not None:
                self._diagnose(int(steps[self._seen_skipped % OVERFLOW_LOG_SIZE]))
        elif scale is not None and self._seen_scale is not None and scale > self._seen_scale:
            # A growth: it reset step_counter, which has counted clean steps since.
            grew_at = step - int(_number(opt.step_counter))
            points.setdefault(grew_at, {})[LOSS_SCALE] = scale
        self._seen_skipped = skipped
        self._seen_scale = scale

    def _snapshot(self, step):
        _, inner = self._optimizers()
        iterations = int(_number(inner.iterations))
        skipped = step - iterations
        values = {
            # The update just applied used the schedule at iterations - 1.
            LEARNING_RATE: self._rate_at(iterations - 1),
            NOMINAL_LEARNING_RATE: self._rate_at(step - 1),
            SCHEDULE_LAG: skipped,
        }
        if hasattr(inner, "grad_norm") and inner.built:
            values[GRAD_NORM] = float(_number(inner.grad_norm))
        if self._scaled():
            values.update({LOSS_SCALE: self._scale(), SKIPPED_STEPS: skipped,
                           SKIP_RATE: skipped / step})
        now = time.perf_counter()
        if self._clock is not None and step > self._clock[1] and now > self._clock[0]:
            per_second = (step - self._clock[1]) / (now - self._clock[0])
            if self.batch_size:
                # The last batch of an epoch may be smaller: a slight overestimate.
                values[EXAMPLES_PER_SECOND] = per_second * self.batch_size
            else:
                values[STEPS_PER_SECOND] = per_second
        self._clock = (now, step)
        return values

    def _planned_steps(self):
        if self.planned_steps:
            return self.planned_steps
        params = self.params or {}
        if params.get("steps") and params.get("epochs"):
            return params["steps"] * params["epochs"]
        return None

    def _check_skip_share(self, step):
        skipped = self._skipped()
        planned = self._planned_steps() or step
        if self._warned or not planned or skipped <= self.skip_warning_share * planned:
            return
        self._warned = True
        _, inner = self._optimizers()
        message = (
            f"{skipped} of {step} steps were skipped for float16 overflow, more than "
            f"{self.skip_warning_share:.0%} of the {planned} planned: the learning-rate "
            f"schedule now runs {skipped} steps late (rate applied "
            f"{self._rate_at(int(_number(inner.iterations)) - 1):.3g}, nominal "
            f"{self._rate_at(step - 1):.3g}). {precision.OVERFLOW_ADVICE}")
        warnings.warn(message, stacklevel=2)
        self._note(message)

    def _diagnose(self, step):
        self.diagnosis = diagnose.diagnose(self.model, self.diagnose_data)
        os.makedirs(self.log_dir, exist_ok=True)
        files.write_json(os.path.join(self.log_dir, "diagnosis.json"),
                         dict(self.diagnosis, overflow_step=step))
        self._note(f"First overflow at step {step}. " + diagnose.summary(self.diagnosis))
