"""Faster drop-in versions of Keras layers for the training step on CPUs.

    use_fast_dropout(classifier)   # every plain keras Dropout in it becomes FastDropout
    use_fused_gelu(classifier)     # keras-hub's tanh GELU as one XLA kernel each way

keras-hub's BERT runs 20 dropouts per MiniLM step (attention probabilities, attention
output and feed-forward output in each of 6 layers, embeddings, pooled output). Keras'
dropout draws one Philox float per element, compares, multiplies and selects, and its
gradient selects again. What each replacement buys is measured in every benchmark run
(the keras_dropout and keras_gelu ablations; benchmarks/README.md), not written here,
where it would go stale. `tfmp.models.TRANSFORMS` applies both.
"""

import keras

from tfmp import xla_kernels

# Dropout rates are quantised to 1/65536: a 16-bit draw per element.
_RANDOM_BITS = 16


@keras.saving.register_keras_serializable(package="tfmp")
class FastDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` with a cheaper mask; same contract, same config.

    Each element keeps with probability 1 - rate (rate rounded to 1/65536: 0.1 is
    0.100006) and is scaled by 1 / (1 - rate), as in Keras. The mask comes from 16 of
    the 32 bits of one stateless Philox draw, so half the draws of Keras' float mask,
    and the gradient reuses it (one select instead of recomputing). The layer's seed
    generator is Keras', so a seeded run repeats and a checkpoint resumes it.

    Falls back to Keras' dropout outside the TensorFlow backend and for `noise_shape`.
    """

    def call(self, inputs, training=False):
        if not training or self.rate <= 0:
            return inputs
        if self.noise_shape is not None or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training)
        from keras.src.random.seed_generator import draw_seed

        return _dropout(inputs, self.rate, draw_seed(self.seed_generator))


def _dropout(x, rate, seed):
    import tensorflow as tf

    threshold = int(round(rate * 2**_RANDOM_BITS))
    if threshold >= 2**_RANDOM_BITS:
        return tf.zeros_like(x)
    keep_share = 1.0 - threshold / 2**_RANDOM_BITS
    seed = tf.cast(seed, tf.int64)

    @tf.custom_gradient
    def drop(x):
        keep = _random_uint16(tf.shape(x), seed) >= threshold
        scale = tf.cast(1.0 / keep_share, x.dtype)
        zero = tf.zeros((), x.dtype)

        def grad(dy):
            return tf.where(keep, dy * scale, zero)

        return tf.where(keep, x * scale, zero), grad

    return drop(x)


def _random_uint16(shape, seed):
    """Uniform uint16 of `shape`: two per 32-bit stateless Philox draw."""
    import tensorflow as tf

    size = tf.reduce_prod(shape)
    words = tf.random.stateless_uniform(
        [(size + 1) // 2], seed=seed, minval=None, maxval=None, dtype=tf.uint32)
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
    return tf.reshape(halves, shape)


def use_fast_dropout(model, fast=True):
    """Makes every plain Keras `Dropout` inside `model` a `FastDropout` (or back).

    keras-hub creates its dropouts inside the backbone and attention layers, with no
    hook to choose the class; FastDropout adds no state and keeps `get_config`, so the
    class is swapped in place. Weights, seeds and saved files are unchanged.
    `fast=False` swaps back (the benchmarks' before/after). Returns how many swapped.
    """
    source, target = (keras.layers.Dropout, FastDropout) if fast else (
        FastDropout, keras.layers.Dropout)
    swapped = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) is source:
            layer.__class__ = target
            swapped += 1
    return swapped


def fused_gelu_approximate(x):
    """keras-hub's `gelu_approximate` with both passes fused by XLA (TensorFlow only).

    Unfused, TensorFlow runs the tanh GELU and its autodiff gradient as ~15 elementwise
    ops, each a pass over a (batch, width, 1536) tensor; fused, each pass is one kernel.
    Same formula; computed in float32 whatever the input dtype (a float32 island, see
    `tfmp.precision.FLOAT32_ISLANDS`), so under mixed precision it is, if anything, more
    exact than the unfused one.
    """
    import tensorflow as tf

    forward, backward = xla_kernels.gelu_kernels()

    @tf.custom_gradient
    def gelu(x):
        return forward(x), lambda dy: backward(x, dy)

    return gelu(x)


def use_fused_gelu(model, fused=True):
    """Gives every Dense with keras-hub's `gelu_approximate` the fused GELU (or back).

    For training: `tfmp.models.TRANSFORMS` marks it training-only. The activation is not
    part of any saved config (keras-hub rebuilds its Dense layers from the encoder's
    own config), so saved and exported models keep keras-hub's GELU, and the SavedModel
    and TFLite graphs hold no XLA-compiled functions. Returns how many layers changed.
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    from keras_hub.src.utils.keras_utils import gelu_approximate

    source, target = ((gelu_approximate, fused_gelu_approximate) if fused
                      else (fused_gelu_approximate, gelu_approximate))
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dense) and layer.activation is source:
            layer.activation = target
            changed += 1
    return changed
