"""AdamW with warmup and linear decay, wrapped in a loss-scale optimizer under float16.

    optimizer = build_optimizer(policy, total_steps=1000, config=TrainConfig(lr=5e-5))
    global_step(optimizer)         # batches trained so far, skipped steps included

Under `mixed_float16` this returns a `LossScaleOptimizer` (Keras' dynamic loss scale,
plus a skipped-step counter and a minimum scale); under every other policy it returns
the AdamW itself. The decision is `policy.loss_scaling`, made in `tfmp.precision`.
"""

import keras
from keras import ops
from keras.src.utils import tracking

from tfmp import lossscale, precision, xla_kernels
from tfmp.schedule import WarmupLinearDecay
from tfmp.config import TrainConfig
from tfmp.errors import TrainingStopped

# The weight-decay rule (as in BERT and nanoGPT): only matrices decay. Biases, and the
# gamma/beta of every LayerNorm (the embeddings' norm included), are 1-D and do not:
# decaying them pulls the normalisation scale towards zero instead of regularising.
# Matched by name, not by rank: keras-hub's attention biases are 2-D (heads, head_dim).
# Keras matches these patterns against `variable.name` ("kernel", "bias", "gamma", ...).
NO_DECAY_PATTERNS = ("^bias$", "^gamma$", "^beta$")


@keras.saving.register_keras_serializable(package="tfmp")
class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW, plus `grad_norm`, in fused TensorFlow kernels.

    `grad_norm` is the global norm of the last gradients it applied, recorded before
    clipping and, under a loss scale, after the scale was divided out, so
    `tfmp.callbacks.TrainingMonitor` can log it without a second backward pass.

    Args:
        fused: bool. Update each variable with TensorFlow's one-pass `ResourceApplyAdam`
            (and weight decay as one XLA-fused pass) instead of Keras'
            elementwise ops. Same formula; 1.6x faster on the MiniLM step's update.
        **kwargs: `keras.optimizers.AdamW` arguments.
    """

    # Set by `LossScaleOptimizer`, which sums the gradients across replicas itself.
    _summed_by_outer = False

    def __init__(self, *args, fused=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = bool(fused)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        # "only_first_replica": every replica holds the same (summed) gradients.
        self.grad_norm = self.add_variable(
            shape=(), dtype="float32", initializer="zeros",
            aggregation="only_first_replica", name="grad_norm")
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        if not self._summed_by_outer:
            grads = sum_across_replicas(grads)
        super().apply(grads, trainable_variables)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Already summed in `apply`, before clipping: Keras would sum after it, so each
        # replica would clip its own share by the global norm meant for the whole.
        return list(grads_and_vars)

    def _clip_gradients(self, grads):
        norm = _global_norm(grads)
        self.grad_norm.assign(norm)
        if not (self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)
        # Keras' `clip_by_global_norm` with the norm just computed, not a second pass
        # over all 22.7M gradients; a non-finite norm makes every gradient NaN, as there.
        clip = self.global_clipnorm
        scale = clip * ops.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
        return [None if g is None else g * ops.cast(scale, g.dtype) for g in grads]

    # === Fused kernels (TensorFlow backend) ===
    # Keras' Adam step is ~10 elementwise ops per variable, each a pass over memory; on a
    # CPU that is ~50 ms of a 0.53 s MiniLM step. TensorFlow's `ResourceApplyAdam` does
    # the same update in one pass: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    # var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), Keras' formula term
    # for term (tests/test_optimizer.py compares the two).

    # The scalars every variable's update shares (the scheduled rate, beta_1^t, beta_2^t)
    # are computed once a step, in float32, and handed to each update as Keras hands it
    # the rate (`distribution.extended.update(..., args=...)`, so per replica under a
    # strategy), which casts them to its variable's dtype (float32 master weights under
    # every mixed policy, so the same values as before).
    # Per variable, as Keras does, MiniLM's traced step held 106 copies of the schedule
    # and 210 `Pow`s: ~1,700 of its 8,807 ops, each a kernel launch at every step.

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self.fused and not self.amsgrad:
            step = ops.cast(self.iterations + 1, "float32")
            learning_rate = {"lr": ops.cast(learning_rate, "float32"),
                             "beta1_power": ops.power(ops.cast(self.beta_1, "float32"), step),
                             "beta2_power": ops.power(ops.cast(self.beta_2, "float32"), step)}
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        shared = learning_rate if isinstance(learning_rate, dict) else None
        if not (self.fused and _fusable(variable)) or self.amsgrad:
            return super().update_step(gradient, variable,
                                       shared["lr"] if shared else learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        if shared is None:
            step = tf.cast(self.iterations + 1, "float32")
            shared = {"lr": learning_rate, "beta1_power": tf.pow(self.beta_1, step),
                      "beta2_power": tf.pow(self.beta_2, step)}
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.cast(shared["beta1_power"], dtype),
            beta2_power=tf.cast(shared["beta2_power"], dtype),
            lr=tf.cast(shared["lr"], dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )

    def _apply_weight_decay(self, variables):
        # var -= lr * wd * var as one XLA-fused pass (read once, write once) per variable.
        # Keras' assign_sub(var * lr * wd) and TensorFlow's ResourceApplyGradientDescent
        # (which copies the variable it reads as its own delta) each pass over it about
        # three times: 11.8 ms a MiniLM step either way, 7.3 ms fused
        # (benchmarks/optimizer_update.py).
        if not self.fused or self.weight_decay is None or not all(
            _fusable(v) for v in variables):
            return super()._apply_weight_decay(variables)
        import tensorflow as tf

        def decay(variable, alpha):
            if self._use_weight_decay(variable):
                value = variable.value()  # a tensor: traced by shape (tfmp.xla_kernels)
                variable.assign(xla_kernels.decay_kernel()(value, tf.cast(alpha, value.dtype)))

        def apply_all(distribution, variables, alpha):
            for variable in variables:
                if isinstance(variable, keras.Variable):
                    variable = variable.value  # the tf.Variable underneath
                distribution.extended.update(variable, decay, args=(alpha,), group=False)

        # The scheduled rate once a step, not once a variable (see `_backend_update_step`).
        alpha = ops.cast(self.learning_rate * self.weight_decay, "float32")
        tf.__internal__.distribute.interim.maybe_merge_call(
            apply_all, self._distribution_strategy, variables, alpha)


def decay_signatures(opt, variables):
    """(shape, dtype) of each of `variables` that `opt` decays through
    `tfmp.xla_kernels.decay_kernel`, each once; [] where it decays them another way."""
    inner = getattr(opt, "inner_optimizer", opt)
    if not isinstance(inner, AdamW) or not inner.fused or inner.weight_decay is None or not all(
            _fusable(v) for v in variables):
        return []
    values = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    return sorted({(tuple(v.shape), v.dtype.name) for v in values if inner._use_weight_decay(v)})


def _global_norm(grads):
    """sqrt of the sum of all squared gradients, in float32.

    Under TensorFlow each gradient's sum of squares is one `L2Loss` kernel (a single
    pass, no squared copy): 1.9x faster than square-then-sum over MiniLM's 22.7M
    gradients (4.9 vs 9.5 ms a step, benchmarks/optimizer_update.py).
    """
    grads = [ops.cast(g, "float32") for g in grads if g is not None]
    if not grads:
        return ops.zeros(())
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return ops.sqrt(2.0 * tf.add_n([tf.nn.l2_loss(g) for g in grads]))
    return ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(g)) for g in grads])))


def _fusable(variable):
    """True where TensorFlow's fused optimizer kernels can update `variable`."""
    if keras.backend.backend() != "tensorflow":
        return False
    try:
        return hasattr(variable, "handle")
    except ValueError:  # a tf.distribute variable outside the update, where it has one
        return True


def sum_across_replicas(grads):
    """`grads` summed over the replicas of the current `tf.distribute` strategy.

    Each replica's loss is already divided by the number of replicas (Keras'
    `scale_loss_for_distribution`), so the sum is the gradient of the global batch:
    what one device would compute. Outside a multi-replica strategy: unchanged.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return grads
    present = [g for g in grads if g is not None]
    summed = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present) if present else [])
    return [None if g is None else next(summed) for g in grads]


# Skipped steps remembered by the optimizer for `TrainingMonitor`, which reads them
# at most once per `steps_per_execution` batches: a ring of the last this many.
OVERFLOW_LOG_SIZE = 64


@keras.saving.register_keras_serializable(package="tfmp")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' `LossScaleOptimizer`, plus a skipped-step count, a floor and scale rules.

    A step whose gradients are not all finite is skipped (weights and slots
    untouched) and `skipped_steps` grows by one; what the scale does then, and after
    clean steps, is `scaling`'s rule (`tfmp.lossscale`: dynamic, static, hysteresis
    or delayed; dynamic is Keras' own: halve, double after `dynamic_growth_steps`). Both live in
    `variables`, so checkpoints carry them. When the scale falls below `min_scale`,
    `check_scale()` (called by `tfmp.callbacks.LossScaleGuard` after every batch)
    raises `TrainingStopped` rather than letting training skip every step forever.

    Args:
        inner_optimizer: the optimizer that applies the unscaled gradients.
        initial_scale: float. Starting loss scale.
        dynamic_growth_steps: int. Clean steps after which the scale doubles.
        min_scale: float. Floor below which training stops.
        scaling: `tfmp.lossscale.LossScaling`, its JSON dict, or None (dynamic with
            `initial_scale` and `dynamic_growth_steps`).
    """

    def __init__(
        self,
        inner_optimizer,
        initial_scale=2.0**15,
        dynamic_growth_steps=2000,
        min_scale=1.0,
        name=None,
        scaling=None,
        **kwargs,
    ):
        if isinstance(scaling, dict):
            scaling = lossscale.LossScaling(**scaling)
        scaling = scaling or lossscale.LossScaling(
            initial_scale=float(initial_scale), growth_steps=int(dynamic_growth_steps))
        initial_scale = scaling.initial_scale
        dynamic_growth_steps = scaling.growth_steps
        super().__init__(
            inner_optimizer,
            initial_scale=initial_scale,
            dynamic_growth_steps=dynamic_growth_steps,
            name=name,
            **kwargs,
        )
        self.min_scale = float(min_scale)
        self.scaling = scaling
        if isinstance(inner_optimizer, AdamW):
            inner_optimizer._summed_by_outer = True

    def apply(self, grads, trainable_variables=None):
        # Summed before the finite check: every replica then sees the same gradients,
        # so a non-finite gradient on any one replica skips the step on all of them
        # (Keras checks each replica's own, unsummed gradients).
        if isinstance(self.inner_optimizer, AdamW):  # which then does not sum again
            grads = sum_across_replicas(grads)
        super().apply(grads, trainable_variables)

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        # Created before `super().build`, which marks the optimizer built.
        self.skipped_steps = self.add_variable(
            shape=(),
            dtype="int64",
            initializer="zeros",
            aggregation="none",
            name="skipped_steps",
        )
        # Global step (1-based, skipped steps included) and the halved scale of each
        # skipped step, at slot `skipped_steps % OVERFLOW_LOG_SIZE`.
        self.overflow_steps = self.add_variable(
            shape=(OVERFLOW_LOG_SIZE,), dtype="int64", initializer="zeros",
            aggregation="none", name="overflow_steps")
        self.overflow_scales = self.add_variable(
            shape=(OVERFLOW_LOG_SIZE,), dtype="float32", initializer="zeros",
            aggregation="none", name="overflow_scales")
        lossscale.build(self, self.scaling)
        super().build(var_list)

    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        tvs = trainable_variables or self._trainable_variables
        unscaled = [g if g is None or self._overwrite_variable_with_gradient(v)
                    else ops.divide(g, self.dynamic_scale) for g, v in zip(grads, tvs)]
        self.inner_optimizer.apply(unscaled, trainable_variables=trainable_variables)
        lossscale.on_finite(self, self.scaling, unscaled)

    def _stateful_handle_non_finite_grads(self):
        slot = ops.mod(self.skipped_steps, OVERFLOW_LOG_SIZE)
        step = ops.cast(self.iterations, "int64") + self.skipped_steps + 1
        lossscale.on_overflow(self, self.scaling)
        self.overflow_steps.assign(ops.scatter_update(
            self.overflow_steps, ops.reshape(slot, (1, 1)), ops.reshape(step, (1,))))
        self.overflow_scales.assign(ops.scatter_update(
            self.overflow_scales, ops.reshape(slot, (1, 1)),
            ops.reshape(ops.cast(self.dynamic_scale, "float32"), (1,))))
        self.skipped_steps.assign_add(1)

    def check_scale(self):
        """Raises `TrainingStopped` if the scale fell below `min_scale`."""
        if not self.built:
            return
        scale = float(ops.convert_to_numpy(self.dynamic_scale))
        if scale < self.min_scale:
            skipped = int(ops.convert_to_numpy(self.skipped_steps))
            raise TrainingStopped(
                f"The float16 loss scale fell to {scale:g}, below the minimum "
                f"{self.min_scale:g}, after {skipped} skipped steps: the gradients "
                f"overflow float16 whatever the scale. {precision.OVERFLOW_ADVICE}"
            )

    def get_config(self):
        config = super().get_config()
        config["min_scale"] = self.min_scale
        config["scaling"] = self.scaling.to_json()
        return config


def build_optimizer(policy, total_steps, config=None):
    """AdamW with warmup/decay, wrapped for loss scaling when `policy` needs it.

    Args:
        policy: `tfmp.precision.Policy`.
        total_steps: int. Optimizer steps in the whole run.
        config: `TrainConfig` or None (its defaults). Read: `lr` (peak rate),
            `warmup_ratio`, `weight_decay` (matrices only, see `NO_DECAY_PATTERNS`),
            `clipnorm` (global norm of the gradients after the loss scale is divided
            out: the inner AdamW clips), and under `mixed_float16` only
            `initial_loss_scale`, `dynamic_growth_steps` and `min_loss_scale`.
    """
    config = config or TrainConfig()
    schedule = WarmupLinearDecay(
        peak=config.lr,
        total_steps=total_steps,
        warmup_steps=round(config.warmup_ratio * total_steps),
    )
    adamw = AdamW(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        global_clipnorm=config.clipnorm or None,
        epsilon=1e-6,
    )
    adamw.exclude_from_weight_decay(var_names=list(NO_DECAY_PATTERNS))
    if not policy.loss_scaling:
        return adamw
    return LossScaleOptimizer(adamw, min_scale=config.min_loss_scale,
                              scaling=loss_scaling(config))


def loss_scaling(config):
    """The `tfmp.lossscale.LossScaling` of `config` (--loss-scale and its settings)."""
    return lossscale.LossScaling.parse(
        config.loss_scale, initial_scale=config.initial_loss_scale,
        growth_steps=config.dynamic_growth_steps, hysteresis=config.loss_scale_hysteresis,
        window=config.loss_scale_window, margin=config.loss_scale_margin)


def global_step(optimizer):
    """Batches trained so far: applied updates plus skipped (overflowed) steps.

    The one definition of a run's step: checkpoints are named by it, TensorBoard
    logs at it, and a resumed run starts from it.
    """
    iterations = int(ops.convert_to_numpy(optimizer.iterations))
    skipped = getattr(optimizer, "skipped_steps", None)
    if skipped is None or not optimizer.built:
        return iterations
    return iterations + int(ops.convert_to_numpy(skipped))


def loss_scale_state(optimizer):
    """{"loss_scale", "skipped_steps", "iterations"} as Python numbers (None if unscaled)."""
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    built = getattr(optimizer, "built", False)
    return {
        "loss_scale": float(ops.convert_to_numpy(optimizer.dynamic_scale))
        if scaled and built
        else None,
        "skipped_steps": int(ops.convert_to_numpy(optimizer.skipped_steps))
        if isinstance(optimizer, LossScaleOptimizer) and built
        else 0,
        "iterations": int(ops.convert_to_numpy(optimizer.iterations)),
    }
