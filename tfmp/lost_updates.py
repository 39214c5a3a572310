"""Lost updates: the share of AdamW updates too small to change a weight.

A weight stored in bfloat16 (or float16) moves only when its update is at least half
a unit in its last place: at |w| = 1024 that is 4 in bfloat16, so a learning rate of
1e-3 leaves the weight exactly where it was, step after step, with nothing in the loss
to say why ("the loss stays identical"). tfmp keeps float32 variables, where the same
rounding starts to bite only at rates ~1e-7 of the weight; the monitor shows both.

    monitor = LostUpdateMonitor(log_dir, every=50)    # a keras callback
    model.fit(..., callbacks=[monitor])
    monitor.shares                                     # {variable path: share lost}

`lost_shares(optimizer)` is the measurement: after a step, AdamW's intended update of
each variable (from its moments, the rate applied and weight decay) against half the
ulp of the weight in its storage dtype (`half_ulp`), in TensorFlow ops (~0.3 s for
MiniLM's 22.7M weights on 2 cores).
"""

import logging
import os
import warnings

import keras
import numpy as np

from tfmp import precision

TAG = "lost_updates"  # TensorBoard: lost_updates/<variable path>, lost_updates/all


def _number(x):
    return float(keras.ops.convert_to_numpy(x))


# Stored fraction bits of each variable dtype: its unit in the last place at |w| is
# 2**(floor(log2|w|) - bits). An update below half of it rounds back to w.
_FRACTION_BITS = {"float32": 23, "float16": 10, "bfloat16": 7}


def half_ulp(values, dtype):
    """Half a unit in the last place of `values` (floats) stored in `dtype`, as float32.

    Read from the float32 exponent bits: exact for normal numbers; 0 for zero, and for
    weights so small that their half ulp is below float32's normal range.
    """
    import tensorflow as tf

    bits = _FRACTION_BITS[str(dtype)]
    x = tf.abs(tf.cast(values, tf.float32))
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(
        tf.bitcast(x, tf.int32), 23), 0xFF)  # biased: |x| in [2**(e-127), 2**(e-126))
    field = exponent - (bits + 1)
    return tf.where(field > 0, tf.bitcast(tf.bitwise.left_shift(tf.maximum(field, 1), 23),
                                          tf.float32), 0.0)


def _rate(optimizer, iteration):
    lr = optimizer._learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return _number(lr(max(iteration, 0)))
    return _number(lr)


def _rounded(value, dtype):
    """`value` as the variable's dtype holds it (bfloat16 holds 0.999 as 1.0)."""
    import tensorflow as tf

    return float(tf.cast(tf.cast(value, dtype), tf.float64))


def lost_shares(optimizer):
    """{variable path: share of its non-zero intended updates below half an ulp}.

    The intended update is Keras' Adam step recomputed from the slots after the step:
    alpha m / (sqrt(v) + eps) with alpha = lr sqrt(1 - b2^t) / (1 - b1^t) (betas cast to
    the variable's dtype, as its kernels do), plus lr x weight decay x w where it decays.
    """
    import tensorflow as tf

    opt = getattr(optimizer, "inner_optimizer", optimizer)
    t = int(_number(opt.iterations))
    if t == 0:
        return {}
    lr = _rate(opt, t - 1)
    shares = {}
    for variable in opt._trainable_variables:
        index = opt._get_variable_index(variable)
        b1, b2 = (_rounded(b, variable.dtype) for b in (opt.beta_1, opt.beta_2))
        alpha = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        w = tf.cast(variable.value, tf.float32)
        m = tf.cast(opt._momentums[index].value, tf.float32)
        v = tf.cast(opt._velocities[index].value, tf.float32)
        update = alpha * m / (tf.sqrt(v) + opt.epsilon)
        if opt.weight_decay and opt._use_weight_decay(variable):
            update += lr * opt.weight_decay * w
        update = tf.abs(update)
        moving = update > 0
        lost = tf.logical_and(moving, update < half_ulp(w, variable.dtype))
        count = int(tf.math.count_nonzero(moving))
        if count:
            shares[variable.path] = int(tf.math.count_nonzero(lost)) / count
    return shares


class LostUpdateMonitor(keras.callbacks.Callback):
    """Logs, every `every` steps, each variable's share of lost updates; warns on stalls.

    A variable counts as stalled when `precision.STALL_SHARE` of its updates are lost
    while the rate is at least `precision.STALL_MIN_LR_SHARE` of the highest seen; the
    warning (Python `warnings` and a `tfmp/notes` text in TensorBoard) names their layers
    once.

    Args:
        log_dir: str or None. TensorBoard directory (scalars go to `<log_dir>/train`).
        every: int. Measure after every this many batches (and the last of each epoch).
    """

    def __init__(self, log_dir=None, every=50):
        super().__init__()
        self.log_dir = log_dir
        self.every = max(int(every), 1)
        self.shares = {}
        self.history = []  # (step, share of all lost updates, {path: share})
        self.stalled = []
        self._peak_lr = 0.0
        self._writer = None

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            self.measure()

    def on_epoch_end(self, epoch, logs=None):
        self.measure()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def measure(self):
        opt = self.model.optimizer
        inner = getattr(opt, "inner_optimizer", opt)
        if not inner.built:
            return
        from tfmp.optimizer import global_step

        step = global_step(opt)
        if self.history and self.history[-1][0] == step:
            return
        self.shares = lost_shares(opt)
        overall = float(np.mean(list(self.shares.values()))) if self.shares else 0.0
        self.history.append((step, overall, dict(self.shares)))
        self._log(step, overall)
        lr = _rate(inner, int(_number(inner.iterations)) - 1)
        self._peak_lr = max(self._peak_lr, lr)
        if lr >= precision.STALL_MIN_LR_SHARE * self._peak_lr:
            self._check_stalls(step)

    def _check_stalls(self, step):
        stalled = sorted({p.rsplit("/", 1)[0] for p, s in self.shares.items()
                          if s >= precision.STALL_SHARE} - set(self.stalled))
        if not stalled:
            return
        self.stalled += stalled
        message = (f"Step {step}: these layers have stopped learning: at least "
                   f"{precision.STALL_SHARE:.0%} of their AdamW updates are smaller than half "
                   f"a unit in the last place of their weights and are rounded away: "
                   f"{', '.join(stalled)}. Keep their variables in float32, or raise --lr.")
        warnings.warn(message, stacklevel=2)
        logging.getLogger("tfmp").warning(message)
        self._text(message, step)

    def _writer_(self):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        return self._writer

    def _log(self, step, overall):
        if self.log_dir is None:
            return
        import tensorflow as tf

        with self._writer_().as_default(), tf.summary.record_if(True):
            tf.summary.scalar(f"{TAG}/all", overall, step=step)
            for path, share in self.shares.items():
                tf.summary.scalar(f"{TAG}/{path}", share, step=step)
        self._writer.flush()

    def _text(self, message, step):
        if self.log_dir is None:
            return
        import tensorflow as tf

        with self._writer_().as_default(), tf.summary.record_if(True):
            tf.summary.text("tfmp/notes", message, step=step)
        self._writer.flush()
