"""How the float16 loss scale moves: dynamic, static, hysteresis or delayed.

    scaling = LossScaling.parse("hysteresis", growth_steps=2000)   # --loss-scale
    LossScaleOptimizer(adamw, scaling=scaling)                      # tfmp.optimizer

Every rule skips a step whose gradients are not finite (weights and slots untouched);
they differ in what the scale does then, and after clean steps:

| mode | on an overflow | after clean steps |
| --- | --- | --- |
| `dynamic` | halve | double after `growth_steps` in a row (Keras') |
| static (a number, e.g. `256`) | keep | keep |
| `hysteresis` | halve only at the `hysteresis`-th overflow since the last growth (DeepSpeed's `delayed_shift`) | double after `growth_steps`; the count of tolerated overflows refills |
| `delayed` | halve, and remember it for `window` steps | the largest power of two with `margin` x the rolling max of the unscaled gradients (last `window` steps) below 65504 |

`delayed` is the amax-history scaling of float8 training applied to float16: the
scale follows the gradients measured, instead of probing upwards by overflowing.
The state of each rule is optimizer variables, so checkpoints carry it.
"""

import dataclasses

from keras import ops

from tfmp.config import MAX_LOSS_SCALE as MAX_SCALE  # a float16 gradient of 1e-3 overflows
from tfmp.config import check_loss_scale
from tfmp.precision import FLOAT16_MAX

MODES = ("dynamic", "static", "hysteresis", "delayed")


@dataclasses.dataclass(frozen=True)
class LossScaling:
    """A loss-scaling rule and its settings.

    Args:
        mode: str. One of `MODES`.
        initial_scale: float. Scale at the first step (the scale itself when static).
        growth_steps: int. Clean steps before the scale doubles (dynamic, hysteresis).
        hysteresis: int. Overflows tolerated before halving, counting the halving one.
        window: int. Steps of gradient maxima `delayed` remembers.
        margin: float. `delayed` keeps the largest scaled gradient this factor below 65504.
    """

    mode: str = "dynamic"
    initial_scale: float = 2.0**15
    growth_steps: int = 2000
    hysteresis: int = 2
    window: int = 16
    margin: float = 8.0

    @classmethod
    def parse(cls, text, **settings):
        """`--loss-scale`: "dynamic", "hysteresis", "delayed", or a number (static)."""
        value = check_loss_scale(text)
        if isinstance(value, str):
            return cls(mode=value, **settings)
        return cls(**dict(settings, mode="static", initial_scale=value))

    def describe(self):
        return {
            "dynamic": f"dynamic (halve on overflow, double after {self.growth_steps} clean steps)",
            "static": f"static {self.initial_scale:g}",
            "hysteresis": f"hysteresis (halve at the {self.hysteresis}th overflow, double "
                          f"after {self.growth_steps} clean steps)",
            "delayed": f"delayed (rolling max of {self.window} steps' gradients, "
                       f"{self.margin:g}x below 65504)",
        }[self.mode]

    def to_json(self):
        return dataclasses.asdict(self)


def build(opt, scaling):
    """Creates the rule's own variables on `opt` (before Keras marks it built)."""
    opt.overflows_left = opt.add_variable(
        shape=(), dtype="int64", aggregation="none", name="overflows_left",
        initializer=lambda shape, dtype: ops.full(shape, scaling.hysteresis, dtype))
    opt.amax_history = opt.add_variable(
        shape=(max(scaling.window, 1),), dtype="float32", initializer="zeros",
        aggregation="none", name="amax_history")


def _halve(opt):
    opt.dynamic_scale.assign(opt.dynamic_scale * 0.5)


def on_overflow(opt, scaling):
    """The scale's move after a skipped step."""
    opt.step_counter.assign(0)
    if scaling.mode == "dynamic":
        _halve(opt)
    elif scaling.mode == "hysteresis":
        last = ops.less_equal(opt.overflows_left, 1)
        opt.dynamic_scale.assign(ops.where(last, opt.dynamic_scale * 0.5, opt.dynamic_scale))
        opt.overflows_left.assign(ops.maximum(opt.overflows_left - 1, 1))
    elif scaling.mode == "delayed":
        _halve(opt)
        # Remember the halving as the gradient maximum that would have chosen it, so the
        # rolling max keeps the scale at most there for `window` steps.
        _record_amax(opt, FLOAT16_MAX / (scaling.margin * opt.dynamic_scale), 0)


def _record_amax(opt, amax, applied):
    # Slot: this step's 0-based global index (`applied`: 1 once its update counted).
    step = ops.cast(opt.iterations, "int64") + opt.skipped_steps - applied
    slot = ops.mod(step, opt.amax_history.shape[0])
    opt.amax_history.assign(ops.scatter_update(
        opt.amax_history, ops.reshape(slot, (1, 1)),
        ops.reshape(ops.cast(amax, "float32"), (1,))))


def on_finite(opt, scaling, unscaled_grads):
    """The scale's move after a clean step (its update applied), given its gradients."""
    if scaling.mode == "static":
        return
    if scaling.mode == "delayed":
        amax = ops.max(ops.stack([ops.max(ops.abs(ops.cast(g, "float32")))
                                  for g in unscaled_grads if g is not None]))
        _record_amax(opt, amax, 1)
        peak = ops.max(opt.amax_history)
        target = FLOAT16_MAX / (scaling.margin * ops.maximum(peak, 1e-30))
        pow2 = ops.power(2.0, ops.floor(ops.log2(target)))
        new = ops.clip(pow2, 1.0, MAX_SCALE)
        opt.dynamic_scale.assign(ops.where(peak > 0, new, opt.dynamic_scale))
        return
    grow = ops.greater_equal(opt.step_counter, scaling.growth_steps - 1)
    opt.dynamic_scale.assign(ops.where(
        grow, ops.minimum(opt.dynamic_scale * 2.0, MAX_SCALE), opt.dynamic_scale))
    opt.step_counter.assign(ops.where(grow, 0, opt.step_counter + 1))
    if scaling.mode == "hysteresis":
        opt.overflows_left.assign(ops.where(
            grow, ops.cast(scaling.hysteresis, "int64"), opt.overflows_left))
