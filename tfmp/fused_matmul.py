"""Dense and EinsumDense as 2-D matmuls, so oneDNN fuses the bias and GELU into them.

    use_fused_matmuls(classifier)             # every Dense and matmul-shaped EinsumDense
    use_fused_matmuls(classifier, on=False)   # back to Keras' own calls

Keras' Dense multiplies a (batch, width, features) input as a 3-D by 2-D product, which
TensorFlow runs as Reshape -> MatMul -> Reshape, then adds the bias and applies the
activation as separate ops; EinsumDense runs an einsum, then its bias. Grappler's oneDNN
remapper fuses MatMul -> BiasAdd [-> GELU] into one `_MklFusedMatMul` (bias and
activation applied to the accumulator before it is written) only where they follow a
2-D MatMul directly. Here each product is reshaped to 2-D first, the bias added and the
activation applied there, then reshaped back: the same arithmetic (up to the order of
float32 sums), in ops the remapper fuses. keras-hub's tanh GELU (and tfmp's XLA-fused
one, `tfmp.layers.fused_gelu_approximate`, the same formula) is written as
`tf.nn.gelu(approximate=True)`, the form the remapper recognises.

Only calls with `training` false take this path: evaluation, prediction, SavedModels.
A training step keeps Keras' call and the XLA-fused GELU, whose backward pass needs the
pre-activation a fused matmul does not keep; there the 2-D form measured no faster
(MiniLM, batch 32, width 32, 6 alternating rounds: 235 vs 229 ms float32, 179 vs
183 ms mixed_bfloat16). The TFLite and ONNX exports trace Keras' form too
(`keras_products`). What it buys the SavedModels is measured by
`benchmarks/fused_matmul.py` (benchmarks/README.md).

The classes change in place (`tfmp.subclassing`, as `tfmp.float16_cpu` does): no new
state, same config and class name, so saved files do not change. Products the
2-D form does not cover (an EinsumDense whose bias spans part of its output, sparse
inputs, other backends) take Keras' own call.
"""

import contextlib
import math

import keras

from tfmp import layers, subclassing


def _is_tanh_gelu(activation):
    from keras_hub.src.utils.keras_utils import gelu_approximate

    return activation is gelu_approximate or activation is layers.fused_gelu_approximate


def _finish(layer, y, bias):
    """Bias and activation on the 2-D product `y` (what the remapper fuses)."""
    import tensorflow as tf

    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    if _is_tanh_gelu(layer.activation):
        return tf.nn.gelu(y, approximate=True)
    return y if layer.activation is None else layer.activation(y)


def _inference_2d(inputs, training):
    import tensorflow as tf

    # `training` may be a tensor in a symbolic call: only None and False are inference.
    return ((training is None or training is False)
            and keras.backend.backend() == "tensorflow"
            and isinstance(inputs, tf.Tensor) and inputs.shape.rank is not None
            and inputs.shape.rank >= 2)


class _DenseMixin:
    """Dense.call as Reshape -> MatMul -> BiasAdd -> activation -> Reshape."""

    def call(self, inputs, training=None):
        if not _inference_2d(inputs, training):
            return super().call(inputs, training=training)
        import tensorflow as tf

        kernel = keras.ops.convert_to_tensor(self.kernel)
        units = kernel.shape[-1]
        y = tf.matmul(tf.reshape(inputs, [-1, kernel.shape[0]]), kernel)
        bias = None if self.bias is None else keras.ops.convert_to_tensor(self.bias)
        y = _finish(self, y, bias)
        return tf.reshape(y, tf.concat([tf.shape(inputs)[:-1], [units]], 0))


def matmul_shape(equation, bias_axes):
    """(free, contracted, output) axis letters of an EinsumDense that is a 2-D matmul.

    "abc,cde->abde" (keras-hub's query, key and value) is (ab, c, de): the input's
    trailing axes are contracted against the kernel's leading ones, and the output is
    the input's free axes followed by the kernel's others. None where the einsum is not
    of that shape, or its bias does not span all of the kernel's output axes.
    """
    if "..." in equation or "->" not in equation:
        return None
    operands, output = equation.split("->")
    if operands.count(",") != 1:
        return None
    source, kernel = operands.split(",")
    contracted = "".join(c for c in source if c in kernel and c not in output)
    free = source[:len(source) - len(contracted)]
    out = kernel[len(contracted):]
    if (not contracted or source != free + contracted or kernel != contracted + out
            or output != free + out or any(c in out for c in free)
            or bias_axes not in (None, out)):
        return None
    return free, contracted, out


class _EinsumDenseMixin:
    """EinsumDense.call as a 2-D MatMul -> BiasAdd -> activation, where it is one."""

    def call(self, inputs, training=None):
        axes = matmul_shape(self.equation, self.bias_axes)
        if axes is None or not _inference_2d(inputs, training):
            return super().call(inputs, training=training)
        import tensorflow as tf

        free, contracted, _ = axes
        kernel = keras.ops.convert_to_tensor(self.kernel)
        depth = math.prod(kernel.shape[:len(contracted)])
        out_shape = kernel.shape[len(contracted):]
        y = tf.matmul(tf.reshape(inputs, [-1, depth]),
                      tf.reshape(kernel, [depth, math.prod(out_shape)]))
        bias = (None if self.bias is None
                else tf.reshape(keras.ops.convert_to_tensor(self.bias), [-1]))
        y = _finish(self, y, bias)
        return tf.reshape(y, tf.concat([tf.shape(inputs)[:len(free)], out_shape], 0))


_MIXINS = (
    (keras.layers.EinsumDense, _EinsumDenseMixin),
    (keras.layers.Dense, _DenseMixin),
)
# Fused subclass of each Keras class met, and the way back. Only classes whose call is
# Keras' own: a subclass with its own call keeps it.
_SWAPS = subclassing.SubclassSwaps(
    lambda cls: next((m for base, m in _MIXINS if cls.call is base.call), None))
_FUSED, _ORIGINAL = _SWAPS.subclass, _SWAPS.original


def use_fused_matmuls(model, on=True):
    """Makes the Dense and EinsumDense layers of `model` fusable 2-D matmuls (or back).

    The transform row in `tfmp.models.TRANSFORMS` (every use; the fused path is taken
    only by calls with `training` false). `on=False` swaps back (the benchmarks'
    before/after). Returns how many layers changed.
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        cls = type(layer)
        target = _SWAPS.subclass_of(cls) if on else _ORIGINAL.get(cls)
        if target is not None and target is not cls:
            layer.__class__ = target
            if on:
                object.__setattr__(layer, "quantize", _quantize_as_keras(layer, layer.quantize))
            changed += 1
    return changed


def _quantize_as_keras(layer, keras_quantize):
    """`layer.quantize` (Keras' own, per instance) run as the original class.

    Keras quantizes only its own classes (`type(self) is Dense`), so `model.quantize`
    would skip a swapped layer; a quantized layer then takes `quantized_call`.
    """
    def quantize(*args, **kwargs):
        current = type(layer)
        layer.__class__ = _ORIGINAL.get(current, current)
        try:
            return keras_quantize(*args, **kwargs)
        finally:
            layer.__class__ = current

    return quantize


@contextlib.contextmanager
def keras_products(model):
    """Keras' own Dense and EinsumDense calls inside the block (for tracing), then back.

    For the TFLite and ONNX exports, whose runtimes fuse on their own and ran the 2-D
    form slower than Keras' (MiniLM, batch 32, 256 tweets, 6 alternating rounds: TFLite
    fp32 234 vs 247, int8 470 vs 497; ONNX Runtime fp32 206 vs 229 examples/s).
    """
    swapped = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
               if type(layer) in _ORIGINAL]
    for layer in swapped:
        layer.__class__ = _ORIGINAL[type(layer)]
    try:
        yield
    finally:
        for layer in swapped:
            layer.__class__ = _FUSED[type(layer)]
