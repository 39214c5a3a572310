"""Rematerialization: recompute activations in the backward pass instead of keeping them.

    remat.apply(classifier, "blocks")     # --remat: each whole transformer block
    remat.apply(classifier, "attention")  # each attention's core only

Where activations dominate (long sequences), most of a BERT step's memory is the
attention probabilities: (batch, heads, length, length) per layer, kept for the
backward pass two or three times over (softmax output, the dropped-out copy, its
mask). `attention` recomputes only that core (QK^T, softmax, dropout, the weighted
sum of V) from the projected Q, K and V it keeps (Megatron's "selective activation
recomputation"): the memory that grows with length^2 goes, at the cost of two small
matmuls more per layer. `blocks` keeps only each transformer block's input and
recomputes the whole block: less memory again, a whole forward pass more compute.
`benchmarks/memory.py` measures both (README, "Memory").

Why not Keras' `RematScope` (Keras 3.15, TensorFlow backend): it wraps a layer's call in
`tf.recompute_grad`, which inside a `tf.function` refuses keyword arguments ("The
custom_gradient decorator currently supports keywords arguments only when eager
execution is enabled"), and keras-hub calls its attention with `attention_mask=` and
every layer gets `training=`; a model built in the scope fails at its first training
step. Two more things a recomputation must get right, and `keras.remat` alone does not:
dropout draws a new seed on every call, so the recomputed forward would drop other
units than the one whose output was used (wrong gradients); and the recomputation
runs outside the layer's `__call__`, i.e. outside its mixed-precision autocast scope.
Here `keras.remat` gets a function of positional tensors only; the seed generators of
the recomputed layers are put back to their state at the forward pass, and the
autocast scope of the forward pass is entered again. Training only: nothing of this is
saved with the model.
"""

import keras

# What each mode recomputes: (the layers, the method of each).
MODES = {
    # Every MultiHeadAttention's core (keras-hub's CachedMultiHeadAttention included).
    "attention": ("MultiHeadAttention", "_compute_attention"),
    "blocks": ("TransformerEncoder", "call"),  # each keras-hub TransformerEncoder, whole
}


def _is(layer, class_name):
    return any(c.__name__ == class_name for c in type(layer).__mro__)


def apply(model, mode="blocks"):
    """Makes `model`'s training step recompute what `mode` names. Returns how many
    layers changed (0: nothing matched, e.g. a model without keras-hub's encoder)."""
    if mode not in MODES:
        raise ValueError(f"remat mode {mode!r}: expected one of {', '.join(MODES)}.")
    class_name, method = MODES[mode]
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if _is(layer, class_name) and not getattr(layer, "_tfmp_remat", None):
            setattr(layer, method, rematerialized(layer, getattr(layer, method)))
            layer._tfmp_remat = mode
            changed += 1
    return changed


def rematerialized(layer, fn):
    """`fn` (a method of `layer`), its activations recomputed in the backward pass."""
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.common import variables as keras_variables

    generators = [g for sub in layer._flatten_layers(include_self=True, recursive=True)
                  for g in sub._seed_generators]

    def call(*args, **kwargs):
        if kwargs.get("return_attention_scores"):
            return fn(*args, **kwargs)  # the scores are an output: nothing to save
        flat = tree.flatten((args, kwargs))
        # Only float tensors go through `keras.remat` (positionally); integer and
        # boolean tensors (masks) and Python values are captured as they are.
        floats = [i for i, v in enumerate(flat) if tf.is_tensor(v) and v.dtype.is_floating]
        states = [tf.identity(tf.convert_to_tensor(g.state)) for g in generators]
        autocast = keras_variables.get_autocast_scope()

        def forward(*tensors):
            values = list(flat)
            for i, t in zip(floats, tensors):
                values[i] = t
            a, kw = tree.pack_sequence_as((args, kwargs), values)
            # The same dropout masks as the forward pass: each generator from its state
            # then (a no-op in the forward pass itself).
            for g, s in zip(generators, states):
                g.state.assign(s)
            with keras_variables.AutocastScope(autocast.dtype if autocast else None):
                out = fn(*a, **kw)
            return out[0] if pair else out

        out = keras.remat(forward)(*[flat[i] for i in floats])
        return (out, None) if pair else out

    # MultiHeadAttention._compute_attention returns (output, probabilities); the
    # probabilities are not asked for here, and returning them would keep them alive.
    pair = getattr(fn, "__name__", "") == "_compute_attention"
    return call
