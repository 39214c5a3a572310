"""The learning-rate schedule of every tfmp run: linear warmup, then linear decay.

    schedule = WarmupLinearDecay(peak=5e-5, total_steps=188, warmup_steps=19)
    schedule(0)   # 5e-5 / 19: the first update already moves the weights

Registered with Keras (package "tfmp"), so a saved optimizer config names it and
`keras.saving.load_model` rebuilds it; `tfmp.optimizer` re-exports it.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfmp")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then linear decay to `end` at `total_steps`.

    Args:
        peak: float. Learning rate reached at the end of warmup.
        total_steps: int. Steps in the whole run (epochs x steps per epoch).
        warmup_steps: int. Steps of linear warmup.
        end: float. Learning rate at `total_steps` and after.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, end=0.0):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = min(max(int(warmup_steps), 0), self.total_steps)
        self.end = float(end)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.cast(max(self.warmup_steps, 1), "float32")
        decay_steps = ops.cast(max(self.total_steps - self.warmup_steps, 1), "float32")
        # `step + 1`: the first update (iteration 0) already gets a non-zero rate.
        warm = self.peak * (step + 1.0) / warmup
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = self.peak + (self.end - self.peak) * progress
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "end": self.end,
        }
