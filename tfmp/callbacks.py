"""Keras callbacks tfmp adds to `model.fit`.

`LossScaleGuard` stops training with a clear error when the float16 loss scale has
collapsed, or when the loss is NaN under a policy without loss scaling (where a NaN
is not skipped and would silently wreck the weights).
"""

import math

import keras

from tfmp.errors import TrainingStopped


class LossScaleGuard(keras.callbacks.Callback):
    """Raises `TrainingStopped` when training can no longer make progress.

    Args:
        check_every: int. Check the loss scale every this many batches (reading it
            costs a device-to-host copy).
    """

    def __init__(self, check_every=1):
        super().__init__()
        self.check_every = max(int(check_every), 1)

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.check_every:
            return
        optimizer = self.model.optimizer
        if hasattr(optimizer, "check_scale"):
            optimizer.check_scale()
        elif logs and "loss" in logs and not math.isfinite(float(logs["loss"])):
            # Without a loss scale nothing skips a non-finite step: the weights are
            # already NaN, so going on only wastes time.
            raise TrainingStopped(
                f"The training loss became {logs['loss']} at batch {batch} under "
                f"{self.model.dtype_policy.name}. Try a lower learning rate (--lr), "
                "gradient clipping, or check the input data."
            )
