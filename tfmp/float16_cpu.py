"""float16 the way a GPU's tensor cores compute it, on CPUs without float16 arithmetic.

    emulate_float16_products(classifier)   # if precision.emulate_float16 says so
    use_float16_cpu(classifier)            # unconditionally
    use_float16_cpu(classifier, on=False)  # back to TensorFlow's own float16 kernels

On a CPU without AVX512-FP16 or AMX-FP16, TensorFlow runs float16 matmuls and einsums
on Eigen's emulated `half` kernels, several times slower than oneDNN's float32 ones; they
are most of a mixed_float16 training step. A tensor core takes float16 operands,
accumulates in float32 and writes float16. Every float16 value is exactly a float32
one, so here each matmul and einsum casts its float16 operands up, multiplies on the
float32 kernels and rounds the product to float16: the same float16 values in and out
(an overflow past 65504 is inf, as on a GPU), with at most the accumulation order
differing. The kernel multiplied is the float16-rounded weight (Keras' autocast of the
float32 master weight), as on a GPU. Autodiff of cast -> float32 matmul -> cast is again
float16 in, float32 accumulation, float16 out, so gradients and loss-scale dynamics
are those of a GPU run too.

The layers affected (Keras' Dense and EinsumDense, keras-hub's attention) change class
in place, as `tfmp.layers.FastDropout` does: no new state, same config, so saved files
do not change. Layers computing in float32 (the logits, float32 pins) or bfloat16 are
left to their own kernels.
"""

import keras

from tfmp import precision, subclassing

_FLOAT16 = "float16"


def _up(x):
    return keras.ops.cast(x, "float32")


def matmul16(a, b):
    """`a @ b` of float16 tensors: float32 products and sums, rounded once to float16.

    Keras' own matmul on the float32 operands, so the graph is the float32 model's
    (a 3-D by 2-D product is one 2-D matmul, not a broadcast batch matmul).
    """
    return keras.ops.cast(keras.ops.matmul(_up(a), _up(b)), a.dtype)


def einsum16(equation, a, b):
    """`einsum(equation, a, b)` of float16 tensors, accumulated in float32 (see matmul16)."""
    return keras.ops.cast(keras.ops.einsum(equation, _up(a), _up(b)), a.dtype)


def _emulating(layer, x):
    # Checked at call time: a float32 pin may change the layer's dtype after the swap.
    return layer.compute_dtype == _FLOAT16 and x.dtype == _FLOAT16


def _bias_and_activation(layer, x):
    # What Dense.call and EinsumDense.call do after their product, in the compute dtype.
    if layer.bias is not None:
        x = keras.ops.add(x, layer.bias)
    return x if layer.activation is None else layer.activation(x)


class _DenseMixin:
    """Dense.call with the matmul on float32 kernels."""

    def call(self, inputs, training=None):
        if not _emulating(self, inputs):
            return super().call(inputs, training=training)
        return _bias_and_activation(self, matmul16(inputs, self.kernel))


class _EinsumDenseMixin:
    """EinsumDense.call with the einsum on float32 kernels."""

    def call(self, inputs, training=None):
        if not _emulating(self, inputs):
            return super().call(inputs, training=training)
        return _bias_and_activation(self, einsum16(self.equation, inputs, self.kernel))


class _AttentionMixin:
    """MultiHeadAttention's explicit-scores path with both einsums on float32 kernels.

    Same steps as Keras' `_compute_attention` when it builds the scores (dropout on
    the probabilities, as in BERT): scaled query, score einsum, masked softmax,
    dropout, context einsum. Other paths (no dropout: Keras' fused
    `dot_product_attention`; causal masks) are Keras' own.
    """

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, use_causal_mask=False):
        explicit = ((self._dropout > 0.0 or return_attention_scores)
                    and len(query.shape) == 4 and not use_causal_mask
                    and not self._flash_attention)
        if not (explicit and _emulating(self, query)):
            return super()._compute_attention(
                query, key, value, attention_mask=attention_mask, training=training,
                return_attention_scores=return_attention_scores,
                use_causal_mask=use_causal_mask)
        ops = keras.ops
        query = ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype))
        scores = einsum16(self._dot_product_equation, key, query)
        scores = self._masked_softmax(scores, attention_mask)
        dropped = (self._dropout_layer(scores, training=training) if self._dropout > 0.0
                   else scores)
        return einsum16(self._combine_equation, dropped, value), scores


_MIXINS = (
    (keras.layers.MultiHeadAttention, _AttentionMixin),
    (keras.layers.EinsumDense, _EinsumDenseMixin),
    (keras.layers.Dense, _DenseMixin),
)
# Emulating subclass of each Keras or keras-hub class met, and the way back.
_SWAPS = subclassing.SubclassSwaps(
    lambda cls: next((m for base, m in _MIXINS if issubclass(cls, base)), None))
_EMULATED, _ORIGINAL = _SWAPS.subclass, _SWAPS.original
_emulated_class = _SWAPS.subclass_of


def use_float16_cpu(model, on=True):
    """Makes the float16 matmuls and einsums of `model` run on float32 kernels (or back).

    Swaps the class of each Dense, EinsumDense and MultiHeadAttention layer (and
    subclasses such as keras-hub's CachedMultiHeadAttention) computing in float16 for
    a subclass whose products are `matmul16`/`einsum16`. `on=False` swaps back (the
    benchmarks' native-float16 run). Returns how many layers changed.
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        cls = type(layer)
        if on and cls not in _ORIGINAL and layer.compute_dtype == _FLOAT16:
            target = _emulated_class(cls)
        elif not on and cls in _ORIGINAL:
            target = _ORIGINAL[cls]
        else:
            continue
        if target is not None and target is not cls:
            layer.__class__ = target
            changed += 1
    return changed


def emulate_float16_products(model, hardware=None):
    """`use_float16_cpu(model)` where `precision.emulate_float16` says so; else nothing.

    The transform row in `tfmp.models.TRANSFORMS`. Returns how many layers changed.
    """
    policy = getattr(model, "backbone", model).dtype_policy.name
    if not precision.emulate_float16(policy, hardware):
        return 0
    return use_float16_cpu(model)
